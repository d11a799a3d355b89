"""Benchmarks: `make bench` (throughput ratios, `throughput`)."""
