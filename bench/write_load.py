"""What capture costs the application's writes (also `rowembed bench --write-load`).

    python bench/write_load.py [--clients 1,4,16,64] [--seconds 10] [--runs 3]
                               [--rows 100000] [--lag-seconds 20] [--json]

pgbench, single-row INSERT and UPDATE, against a plain table and its vectorized
twin in the same run, on an embedded PostgreSQL with durable commits (fsync and
synchronous_commit on), unless ROWEMBED_DATABASE_URL names a server; a
dispatcher polls all along. Prints TPS per table and the ratios, the
dispatcher's query costs and, with a worker running, the lag under load.
"""

from __future__ import annotations

import argparse
import sys

from rowembed.cli import add_write_load_arguments
from rowembed.dev.write_load import DEFAULT_ROWS, main
from rowembed.settings import Settings

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows in each table")
    parser.add_argument("--json", action="store_true")
    add_write_load_arguments(parser)
    sys.exit(main(Settings.from_env(), parser.parse_args()))
