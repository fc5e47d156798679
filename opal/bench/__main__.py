"""``python -m opal.bench`` (what ``make bench`` runs)."""

from opal.bench.harness import main

if __name__ == "__main__":
    main()
