"""The Redis benchmark (``redis_suite/``): ``python benchmarks/redis_bench.py [--quick]``."""

import sys

from redis_suite import main

if __name__ == "__main__":
    sys.exit(main())
