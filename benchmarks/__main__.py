"""``python -m benchmarks`` (what ``make bench`` runs)."""

from benchmarks.harness import main

if __name__ == "__main__":
    main()
