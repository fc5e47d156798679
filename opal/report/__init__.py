"""What the board reads: figures derived from signed ledger entries, and the governance page."""
