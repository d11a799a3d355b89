"""Benchmarks: `make bench` (throughput ratios, `throughput`), `make bench-scale` (flat memory at 50,000 images and
listing at a million entries, `scale`), and the memory sampler they share (`memory`)."""
