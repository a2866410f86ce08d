"""The floor of trigger-based capture: what an empty PL/pgSQL trigger, and one
that appends a row to an unindexed log, cost an INSERT or UPDATE beside a plain
table, next to rowembed's generated triggers. Same server settings and pgbench
runs as bench/write_load.py (durable commits); prints vectorized/plain ratios.

    python bench/trigger_floor.py [--clients 1 16 64] [--seconds 8] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from rowembed.dev.embedded import EmbeddedPostgres
from rowembed.dev.write_load import SCRIPTS, create_table, pgbench_binary, run_pgbench
from rowembed.pgplugin import connect, create_vectorizer, migrate

ROWS = 100_000
# As the generated functions are declared.
HEAD = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS"
WHEN = "WHEN ((OLD.body::text, OLD.id::text) IS DISTINCT FROM (NEW.body::text, NEW.id::text))"
FUNCTIONS = {
    "empty": "BEGIN RETURN NULL; END",
    "log_rows": "BEGIN INSERT INTO public.floor_changes SELECT id, nextval('rowembed.change_seq')"
    " FROM new_rows; RETURN NULL; END",
    "log_row": "BEGIN INSERT INTO public.floor_changes"
    " VALUES (NEW.id, nextval('rowembed.change_seq')); RETURN NULL; END",
}
# variant -> (its INSERT trigger, its UPDATE trigger), {fn} standing for the function.
VARIANTS = {
    "empty": (
        "AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
        f"AFTER UPDATE ON {{t}} FOR EACH ROW {WHEN}",
        "empty",
        "empty",
    ),
    "log": (
        "AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
        f"AFTER UPDATE ON {{t}} FOR EACH ROW {WHEN}",
        "log_rows",
        "log_row",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server = EmbeddedPostgres(durable=True).start()
    try:
        pgbench = pgbench_binary(server)
        tables = ["plain", *VARIANTS, "rowembed"]
        with connect(server.url) as conn:
            migrate(conn)
            conn.execute("CREATE TABLE floor_changes (id bigint, seq bigint)")
            for name, body in FUNCTIONS.items():
                conn.execute(f"CREATE FUNCTION floor_{name}() RETURNS trigger {HEAD} $$ {body} $$")
            for table in tables:
                create_table(conn, f"floor_{table}", ROWS)
            for variant, (on_insert, on_update, fn_insert, fn_update) in VARIANTS.items():
                t = f"floor_{variant}"
                conn.execute(
                    f"CREATE TRIGGER i {on_insert.format(t=t)} EXECUTE FUNCTION floor_{fn_insert}()"
                )
                conn.execute(
                    f"CREATE TRIGGER u {on_update.format(t=t)} EXECUTE FUNCTION floor_{fn_update}()"
                )
            create_vectorizer(
                conn,
                "floor_rowembed",
                ["body"],
                model="sentence-transformers/all-MiniLM-L6-v2",
                backfill=False,
            )
        work = Path(tempfile.mkdtemp())
        for op in ("insert", "update"):
            for clients in args.clients:
                tps: dict[str, list[float]] = {t: [] for t in tables}
                for _ in range(args.runs):
                    for table in tables:
                        script = work / f"{op}_{table}.sql"
                        script.write_text(SCRIPTS[op].format(table=f"floor_{table}", rows=ROWS))
                        tps[table].append(
                            run_pgbench(pgbench, server.url, script, clients, args.seconds)
                        )
                plain = statistics.median(tps["plain"])
                ratios = "  ".join(
                    f"{t} {statistics.median(v) / plain:.2f}"
                    for t, v in tps.items()
                    if t != "plain"
                )
                print(f"{op:6} {clients:3} clients: plain {plain:8.0f} tps; {ratios}", flush=True)
    finally:
        server.remove()


if __name__ == "__main__":
    main()
