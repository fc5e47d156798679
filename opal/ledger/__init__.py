"""The governance ledger (RFC 6962 Merkle log of signed, canonical entries)."""

from opal.ledger.log import Checkpoint, Cosignature, Ledger, LedgerEntry, VerifyReport

__all__ = ["Checkpoint", "Cosignature", "Ledger", "LedgerEntry", "VerifyReport"]
