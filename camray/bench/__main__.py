"""`python -m camray.bench` runs the throughput benchmark (`make bench`)."""

from camray.bench.throughput import main

if __name__ == "__main__":
    raise SystemExit(main())
