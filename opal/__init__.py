"""OPAL: Open Algorithms sandbox.

The algorithm travels to the data; only aggregated, noise-protected,
disclosure-checked results leave, and every step is written to a
tamper-evident ledger.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
