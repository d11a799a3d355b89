"""`python -m pipeline.bench` runs the throughput benchmark (`make bench`)."""

from pipeline.bench.throughput import main

if __name__ == "__main__":
    raise SystemExit(main())
