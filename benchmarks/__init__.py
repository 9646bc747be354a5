"""trajstore benchmarks: ``make bench`` (see BENCHMARKS.md)."""
