"""`make mutants`: remove each safeguard in turn and check that its tests go red.

Each mutation edits one file of a scratch copy of the package (the repository's
folders laid out as the `rowembed` namespace, first on PYTHONPATH, so the worker
processes the tests start import it too), runs the tests that guard it, and
counts it caught when they fail. The working tree is never touched. Ends with
the line `N of M mutations caught`; exits non-zero unless every one was.

    python tests/mutants.py [NAME-SUBSTRING ...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Repository folder -> its place in the scratch copy (pyproject.toml's package-dir).
LAYOUT = {
    "rowembed": "rowembed",
    "pgplugin": "rowembed/pgplugin",
    "migrations": "rowembed/migrations",
    "workers": "rowembed/workers",
    "tests": "tests",
    "compose": "compose",  # tests/test_stack.py runs its roles script
}


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # in the repository
    safeguard: str  # text that the mutation replaces
    replacement: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "trigger functions executable by PUBLIC",
        "pgplugin/sql/040-capture.sql",
        "EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC',\n",
        "PERFORM format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC',\n",
        ("tests/pgplugin/test_capture.py",),
    ),
    Mutation(
        "trigger functions fire for any table",
        "pgplugin/sql/040-capture.sql",
        "            IF TG_RELID <> %s THEN",
        "            IF TG_RELID <> %s AND false THEN",
        ("tests/pgplugin/test_capture.py",),
    ),
    Mutation(
        "catalog without row-level security",
        "migrations/0003_model_families.sql",
        "ALTER TABLE rowembed.vectorizer ENABLE ROW LEVEL SECURITY;\n",
        "",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "generated functions owned by whoever migrates",
        "pgplugin/sql/040-capture.sql",
        "        EXECUTE format('ALTER FUNCTION %s() OWNER TO %I',",
        "        PERFORM format('ALTER FUNCTION %s() OWNER TO %I',",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "anyone vectorizes any table",
        "pgplugin/sql/050-vectorizers.sql",
        "    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c\n",
        "    IF false AND NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c\n",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "partitioned sources accepted",
        "pgplugin/sql/050-vectorizers.sql",
        "    IF src_kind = 'p' OR (SELECT c.relispartition FROM pg_class c\n",
        "    IF false AND (SELECT c.relispartition FROM pg_class c\n",
        ("tests/pgplugin/test_vectorizers.py",),
    ),
    Mutation(
        "rows hidden by row-level security look deleted",
        "pgplugin/sql/030-queue.sql",
        "    PERFORM rowembed._check_sees_every_row(v.source);\n",
        "",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a backfill skips rows hidden by row-level security",
        "pgplugin/sql/070-backfill.sql",
        "    PERFORM rowembed._check_sees_every_row(v.source);\n",
        "",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a failed read leaves nothing recorded",
        "workers/pipeline.py",
        "    except psycopg.Error as exc:\n        if conn.broken:\n            raise\n",
        "    except ZeroDivisionError as exc:\n",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a row that kills its worker is claimed with a batch",
        "pgplugin/sql/030-queue.sql",
        "    suspect := cardinality(suspects) > cardinality(dead);\n",
        "    suspect := false;\n",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a row that kills its worker is retried forever",
        "pgplugin/sql/030-queue.sql",
        "        '                                        AND w.attempts >= $3), ''{}'')'\n",
        "        '                                        AND false), ''{}'')'\n",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a drain stops after a suspect",
        "workers/pipeline.py",
        " or self.trimmed or self.claim.suspect\n",
        " or self.trimmed\n",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a time limit is bisected as if a row were bad",
        "workers/runtime/isolate.py",
        "        except abort_on:\n            raise\n",
        "",
        ("tests/workers/runtime/test_isolate.py",),
    ),
    Mutation(
        "claims never shrink on a slow machine",
        "workers/policy.py",
        "            self.rows = max(self.FLOOR, min(self.ceiling, fitting))\n",
        "            pass\n",
        ("tests/workers/test_policy.py",),
    ),
    Mutation(
        "unreachable server binaries fail bare",
        "rowembed/dev/embedded.py",
        "            for path in (self.bin_dir, self.base_dir):\n"
        "                _check_reachable(path, self._user.pw_name)\n",
        "",
        ("tests/rowembed/test_embedded.py",),
    ),
    Mutation(
        "grant_searcher grants no embeddings",
        "pgplugin/sql/050-vectorizers.sql",
        "        EXECUTE format('GRANT SELECT ON %s TO %I', rowembed._qualified(v.destination),"
        " role);\n",
        "",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "schema names quoted twice in grants",
        "pgplugin/sql/050-vectorizers.sql",
        "    FOR schema IN SELECT DISTINCT n.nspname FROM pg_class c",
        "    FOR schema IN SELECT DISTINCT c.relnamespace::regnamespace::name FROM pg_class c",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "a role sees every vectorizer",
        "pgplugin/sql/050-vectorizers.sql",
        "     WHERE coalesce(has_table_privilege(z.queue_table, 'SELECT'), true)\n",
        "",
        (
            "tests/pgplugin/test_isolation.py",
            "tests/pgplugin/test_privileges.py::test_a_role_sees_only_the_vectorizers_it_may_use",
        ),
    ),
    Mutation(
        "the sweep hints broken vectorizers",
        "pgplugin/sql/030-queue.sql",
        "        CONTINUE WHEN rowembed._problem(v) IS NOT NULL;  -- status() shows why\n"
        "        BEGIN\n            EXECUTE format('SELECT CASE WHEN EXISTS",
        "        BEGIN\n            EXECUTE format('SELECT CASE WHEN EXISTS",
        ("tests/pgplugin/test_isolation.py",),
    ),
    Mutation(
        "backfills of broken vectorizers are stepped",
        "pgplugin/sql/070-backfill.sql",
        "     WHERE b.state = 'running' AND rowembed._problem(v) IS NULL\n",
        "     WHERE b.state = 'running'\n",
        ("tests/pgplugin/test_isolation.py",),
    ),
    Mutation(
        "one failing backfill stops the others",
        "pgplugin/backfill.py",
        "        except psycopg.Error as exc:\n"
        "            if conn.broken:\n"
        "                raise\n",
        "        except ZeroDivisionError as exc:\n",
        ("tests/pgplugin/test_isolation.py",),
    ),
    Mutation(
        "migrate stops at one vectorizer's triggers",
        "pgplugin/sql/999-finish.sql",
        "        EXCEPTION WHEN OTHERS THEN\n"
        "            RAISE WARNING"
        " 'rowembed: the triggers of vectorizer % were not regenerated: %',\n"
        "                vectorizer_id, SQLERRM;\n",
        "",
        ("tests/pgplugin/test_isolation.py",),
    ),
    Mutation(
        "texts tokenized whole",
        "workers/runtime/encoder.py",
        "        bounded = [t[: self.max_chars] for t in texts]\n",
        "        bounded = list(texts)\n",
        ("tests/workers/runtime/test_encoder.py",),
    ),
    Mutation(
        "rerank passages tokenized whole",
        "workers/runtime/reranker.py",
        "            [p[: self.max_chars] for _, p in pairs],\n",
        "            [p for _, p in pairs],\n",
        ("tests/workers/runtime/test_reranker.py",),
    ),
    Mutation(
        "no pooling from the model family",
        "workers/runtime/forward.py",
        "PoolingConfig.from_model_dir(path, default_mode=family.pooling)",
        "PoolingConfig.from_model_dir(path)",
        ("tests/rowembed/test_families.py",),
    ),
    Mutation(
        "no text_hash skip: unchanged rows re-embedded",
        "pgplugin/queue.py",
        "        if self.stored_hash == self.text_hash:\n            return Action.KEEP\n",
        "",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "no stale-write guard: a claim completes whatever the row's version",
        "pgplugin/queue.py",
        "SELECT q.seq FROM {queue} AS q JOIN {stage} AS st ON st.seq = q.seq",
        "SELECT q.seq FROM {queue} AS q",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "claims of a dead worker wait for their lease",
        "pgplugin/sql/030-queue.sql",
        "           ' OR (claimed_by IS NOT NULL AND claimed_by <> ALL ($1)))'",
        "           ')'",
        (
            "tests/workers/test_faults.py::test_sigkill_mid_batch_loses_nothing_and_waits_for_no_lease",
        ),
    ),
    Mutation(
        "claims held until the session ends",
        "workers/pipeline.py",
        "            _end_claims(reader, queue, held, held[:])\n",
        "",
        (
            "tests/workers/test_pipeline.py::test_an_entry_the_application_held_during_the_write_waits_for_no_lease",
        ),
    ),
    Mutation(
        "backfill blind to orphans",
        "pgplugin/sql/070-backfill.sql",
        "(SELECT * FROM stale UNION ALL SELECT * FROM orphans)",
        "(SELECT * FROM stale)",
        ("tests/pgplugin/test_backfill.py",),
    ),
    Mutation(
        "the owner's loopback session left open for the caller",
        "pgplugin/sql/095-query-embeddings.sql",
        "        END LOOP;\n"
        "        EXECUTE format('SELECT %I.dblink_disconnect(%L)', dblink, link);\n",
        "        END LOOP;\n",
        ("tests/pgplugin/test_search_text.py",),
    ),
    Mutation(
        "query embeddings (SECURITY DEFINER) executable by PUBLIC",
        "pgplugin/sql/095-query-embeddings.sql",
        "REVOKE ALL ON FUNCTION rowembed._query_embedding(int, text, float8) FROM PUBLIC;",
        "",
        (
            "tests/pgplugin/test_privileges.py"
            "::test_security_definer_functions_are_few_pinned_and_not_public",
        ),
    ),
    Mutation(
        "rerank scores (SECURITY DEFINER) executable by PUBLIC",
        "pgplugin/sql/095-query-embeddings.sql",
        "REVOKE ALL ON FUNCTION rowembed._rerank_scores(int, text, text[], float8) FROM PUBLIC;",
        "",
        (
            "tests/pgplugin/test_privileges.py"
            "::test_security_definer_functions_are_few_pinned_and_not_public",
        ),
    ),
    Mutation(
        "hybrid search without its full text leg",
        "pgplugin/sql/096-hybrid.sql",
        "coalesce($8 / ($10 + bv.r), 0) + coalesce($9 / ($10 + bt.r), 0)",
        "coalesce($8 / ($10 + bv.r), 0)",
        ("tests/pgplugin/test_search_text.py",),
    ),
    Mutation(
        "no sweep for query requests",
        "workers/dispatcher.py",
        "                    if query_requests_waiting(conn):  # a lost task or a dead worker\n"
        "                        self.send_queries()\n",
        "",
        ("tests/pgplugin/test_search_text.py",),
    ),
    Mutation(
        "no sweep: a lost hint is lost work",
        "workers/dispatcher.py",
        "                    for vectorizer_id, changes in vectorizers_with_work(conn):\n"
        "                        self.send_hint(vectorizer_id, changes)\n",
        "",
        ("tests/workers/test_dispatcher.py",),
    ),
    Mutation(
        "an invalid index quoted twice",
        "pgplugin/indexes.py",
        '"""SELECT n.nspname::text, c.relname::text',
        '"""SELECT c.relnamespace::regnamespace::text, c.relname::text',
        ("tests/pgplugin/test_indexes.py",),
    ),
    Mutation(
        "no passage instruction",
        "pgplugin/sql/020-helpers.sql",
        "THEN format('%L ||', v.passage_instruction) ELSE '' END",
        "THEN '' ELSE '' END",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "chunked write leaves old chunks behind",
        "pgplugin/queue.py",
        "AND e.chunk >= st.chunks",
        "AND e.chunk >= st.chunks + 1000000",
        ("tests/workers/test_chunked_pipeline.py",),
    ),
    Mutation(
        "chunked search returns chunks, not rows",
        "pgplugin/sql/090-search.sql",
        "ELSE format('SELECT DISTINCT ON (c.key) * FROM (%s) AS c'",
        "ELSE format('SELECT * FROM (%s) AS c'",
        ("tests/pgplugin/test_chunked_search.py",),
    ),
    Mutation(
        "chunked search candidates never grow",
        "pgplugin/sql/090-search.sql",
        "        candidates := candidates * 4;",
        "        candidates := candidates;",
        ("tests/pgplugin/test_chunked_search.py",),
    ),
    Mutation(
        "replacement switched in before it is complete",
        "pgplugin/sql/075-model-change.sql",
        "    IF waits.backfill > 0 THEN",
        "    IF false THEN",
        ("tests/pgplugin/test_model_change.py",),
    ),
    Mutation(
        "a table's replacement used implicitly",
        "pgplugin/sql/090-search.sql",
        "         WHERE z.source = rel AND z.replaces IS NULL) > 1 THEN",
        "         WHERE z.source = rel) > 1 THEN",
        ("tests/pgplugin/test_model_change.py",),
    ),
    Mutation(
        "metrics: one vectorizer's failing query fails the scrape",
        "rowembed/metrics.py",
        '    except psycopg.Error as exc:\n        log.warning("metrics: %s left out',
        '    except KeyError as exc:\n        log.warning("metrics: %s left out',
        ("tests/rowembed/test_metrics.py",),
    ),
    Mutation(
        "metrics: an unreachable database fails the scrape",
        "rowembed/metrics.py",
        '        except psycopg.Error as exc:\n            log.warning("metrics: the database',
        '        except KeyError as exc:\n            log.warning("metrics: the database',
        ("tests/rowembed/test_metrics.py",),
    ),
    Mutation(
        "no sent events for Flower",
        "workers/celery_app.py",
        "task_send_sent_event=True,",
        "task_send_sent_event=False,",
        ("tests/test_stack.py",),
    ),
    Mutation(
        "Celery's banner among JSON logs",
        "rowembed/cli.py",
        '*(["--quiet"] if args.log_format == "json" else []),',
        "*([]),",
        ("tests/test_stack.py",),
    ),
    Mutation(
        "entries skipped at the write never tried again",
        "pgplugin/queue.py",
        "        if not waiting:  # changed meanwhile",
        "        if True:  # changed meanwhile",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "live changes wait for the sweep (no wake-up)",
        "workers/dispatcher.py",
        "                    self.send_hint(vectorizer_id, True)\n",
        "                    pass\n",
        ("tests/workers/test_dispatcher.py",),
    ),
    Mutation(
        "a change committed late is not looked for",
        "workers/dispatcher.py",
        "        if clock.xmin >= self.open_below:",
        "        if True:",
        ("tests/workers/test_dispatcher.py",),
    ),
    Mutation(
        "the capture sends NOTIFY in the application's transaction",
        "pgplugin/sql/040-capture.sql",
        "nextval('rowembed.change_seq') FROM new_rows;\n",
        "nextval('rowembed.change_seq') FROM new_rows; PERFORM pg_notify('rowembed', '');\n",
        ("tests/pgplugin/test_vectorizers.py",),
    ),
    Mutation(
        "a change that folds late replaces a newer queued one",
        "pgplugin/sql/030-queue.sql",
        "        ' enqueued_at = excluded.enqueued_at WHERE q.seq < excluded.seq',",
        "        ' enqueued_at = excluded.enqueued_at',",
        ("tests/pgplugin/test_vectorizers.py",),
    ),
    Mutation(
        "a worker claims without folding the change log",
        "pgplugin/queue.py",
        "        self.fold(conn)\n",
        "",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "triggers not regenerated at the switch",
        "pgplugin/sql/075-model-change.sql",
        "    PERFORM rowembed._install_triggers(next.id);\n",
        "",
        ("tests/pgplugin/test_application_writes.py",),
    ),
    Mutation(
        "the chunked key move takes one destination row",
        "pgplugin/sql/040-capture.sql",
        "                UPDATE %2$s SET (%6$s) = ROW(%4$s) WHERE (%6$s) = (%3$s);",
        "                UPDATE %2$s SET (%6$s) = ROW(%4$s) WHERE ctid = (SELECT ctid FROM %2$s"
        " WHERE (%6$s) = (%3$s) LIMIT 1);",
        ("tests/pgplugin/test_application_writes.py",),
    ),
    Mutation(
        "index names reused across model changes",
        "pgplugin/sql/060-index.sql",
        "        'rowembed_' || v.id || '_vector_idx',",
        "        (SELECT c.relname || '_idx' FROM pg_class c WHERE c.oid = v.destination),",
        ("tests/pgplugin/test_application_writes.py",),
    ),
    Mutation(
        "a row's failed write fails its batch",
        "pgplugin/queue.py",
        "            if len(outcomes) == 1:",
        "            if True:\n                raise",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a creator keeps CREATE on schema rowembed",
        "pgplugin/sql/999-finish.sql",
        "        EXECUTE format('REVOKE CREATE ON SCHEMA rowembed FROM %s',",
        "        PERFORM format('REVOKE CREATE ON SCHEMA rowembed FROM %s',",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "a creator keeps the write privileges an older release granted on the catalog",
        "pgplugin/sql/999-finish.sql",
        "        EXECUTE format('REVOKE %s ON %s FROM %s', g.privilege, g.tab, g.grantee);",
        "        PERFORM format('REVOKE %s ON %s FROM %s', g.privilege, g.tab, g.grantee);",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "the catalog records a vectorizer over another role's tables",
        "pgplugin/sql/048-catalog.sql",
        "OR c.relkind <> 'r' OR NOT rowembed._session_is(c.relowner::regrole)",
        "OR c.relkind <> 'r'",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "the catalog's writers act on another role's vectorizer",
        "pgplugin/sql/048-catalog.sql",
        "    IF NOT FOUND OR NOT rowembed._session_is(v.owner) THEN",
        "    IF NOT FOUND THEN",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "the catalog changes any column in place",
        "pgplugin/sql/048-catalog.sql",
        "    IF FOUND THEN\n        RAISE EXCEPTION 'rowembed: a vectorizer''s % is not changed",
        "    IF false THEN\n        RAISE EXCEPTION 'rowembed: a vectorizer''s % is not changed",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "a vectorizer replaces another role's",
        "pgplugin/sql/048-catalog.sql",
        "             WHERE z.id = n.replaces AND z.id <> v.id AND z.source = v.source\n"
        "               AND z.owner = v.owner) THEN",
        "             WHERE z.id = n.replaces) THEN",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "anyone takes the name a model change needs",
        "pgplugin/sql/048-catalog.sql",
        "    IF v.name LIKE '%.replaced.%' OR (v.name LIKE '%.next' AND NOT EXISTS (",
        "    IF v.name LIKE '%.replaced.%' OR (false AND NOT EXISTS (",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "anyone steps any backfill",
        "pgplugin/sql/048-catalog.sql",
        "    IF NOT rowembed._session_queues((SELECT z FROM rowembed.vectorizer AS z",
        "    IF false AND NOT rowembed._session_queues((SELECT z FROM rowembed.vectorizer AS z",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "the sweep waits on one tenant's locked queue",
        "pgplugin/sql/030-queue.sql",
        "RETURNS TABLE (id int, changes boolean)\n"
        "LANGUAGE plpgsql STABLE SET lock_timeout = '500ms' AS",
        "RETURNS TABLE (id int, changes boolean)\nLANGUAGE plpgsql STABLE AS",
        ("tests/pgplugin/test_isolation.py",),
    ),
    Mutation(
        "status() and the metrics scrape wait on one tenant's locked queue",
        "pgplugin/sql/080-status.sql",
        "               rebuild text, training text)\n"
        "LANGUAGE plpgsql STABLE SET lock_timeout = '500ms' AS",
        "               rebuild text, training text)\n"
        "LANGUAGE plpgsql STABLE SET lock_timeout = 0 AS",
        ("tests/pgplugin/test_isolation.py", "tests/rowembed/test_metrics.py"),
    ),
    Mutation(
        "rowembed's functions see the vector extension's schema",
        "pgplugin/sql/999-finish.sql",
        "SET search_path = pg_catalog, pg_temp', fn);",
        "SET search_path = pg_catalog, public, pg_temp', fn);",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "query traffic shared by every worker role",
        "migrations/0010_query_traffic_per_vectorizer.sql",
        "        EXECUTE format('ALTER TABLE rowembed.%I ENABLE ROW LEVEL SECURITY', t);",
        "        PERFORM format('ALTER TABLE rowembed.%I ENABLE ROW LEVEL SECURITY', t);",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "a searcher asks for any vectorizer",
        "pgplugin/sql/095-query-embeddings.sql",
        "    IF NOT FOUND OR NOT rowembed._session_searches(v) THEN",
        "    IF NOT FOUND THEN",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "loopback sessions run as the functions' owner",
        "pgplugin/sql/095-query-embeddings.sql",
        "(SELECT r.rolname FROM pg_roles AS r WHERE r.rolname = 'rowembed_loopback'),",
        "NULL,",
        (
            "tests/pgplugin/test_search_text.py::test_loopback_sessions_run_as_a_capped_role_with_the_protocols_rights_only",
        ),
    ),
    Mutation(
        "a query waits as long as its caller asks",
        "pgplugin/sql/095-query-embeddings.sql",
        "    IF wait > rowembed.max_query_timeout() THEN",
        "    IF false THEN",
        (
            "tests/pgplugin/test_search_text.py::test_loopback_sessions_run_as_a_capped_role_with_the_protocols_rights_only",
        ),
    ),
    Mutation(
        "a queue altered by hand is no problem",
        "pgplugin/sql/050-vectorizers.sql",
        "        RETURN format('%s was renamed or dropped: rename it back",
        "        RETURN NULL; RETURN format('%s was renamed or dropped: rename it back",
        ("tests/pgplugin/test_isolation.py",),
    ),
    Mutation(
        "a superuser's worker lends a creator's code its rights",
        "pgplugin/queue.py",
        '            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(run_as)))',
        "            pass",
        ("tests/pgplugin/test_privileges.py",),
    ),
    Mutation(
        "a slow backfill step holds up the others",
        "pgplugin/queue.py",
        "        if seconds is not None:",
        "        if False:",
        ("tests/pgplugin/test_isolation.py",),
    ),
    Mutation(
        "a row that meets the time limit alone is retried forever",
        "workers/pipeline.py",
        "                        timed_out = batch",
        "                        pass",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "after a time limit, rows are claimed in batches again",
        "workers/policy.py",
        "        self.rows = 1",
        "        self.rows = max(self.FLOOR, self.rows // 4)",
        ("tests/workers/test_policy.py",),
    ),
    Mutation(
        "a lease shorter than the hard time limit passes",
        "rowembed/settings.py",
        "        if self.lease_seconds is not None and self.lease_seconds <= self.hard_time_limit:",
        "        if False:",
        ("tests/rowembed/test_settings.py",),
    ),
    Mutation(
        "a rerank request of any size",
        "pgplugin/sql/095-query-embeddings.sql",
        "    ELSIF pg_catalog.cardinality(passages) > rowembed.max_rerank_passages() THEN",
        "    ELSIF false THEN",
        ("tests/pgplugin/test_search_text.py::test_a_rerank_holds_a_bounded_number_of_passages",),
    ),
    Mutation(
        "searches wait behind embedding",
        "rowembed/cli.py",
        '    if "embed" in served and interactive:',
        "    if False:",
        ("tests/workers/test_worker.py::test_searches_are_answered_while_a_backlog_drains",),
    ),
    Mutation(
        "a timeout without a dispatcher blames the workers",
        "pgplugin/sql/095-query-embeddings.sql",
        "    IF dispatchers IS NULL THEN",
        "    IF false THEN",
        ("tests/pgplugin/test_search_text.py::test_a_timeout_says_which_of_three_things_is_wrong",),
    ),
    Mutation(
        "a dispatcher without its broker keeps it to itself",
        "workers/dispatcher.py",
        "                if problem != shown:  # a caller whose request waits is told why",
        "                if False:",
        (
            "tests/pgplugin/test_search_text.py"
            "::test_a_dispatcher_without_its_broker_says_so_to_callers",
        ),
    ),
    Mutation(
        "a batch holds every row claimed, whatever its text",
        "workers/pipeline.py",
        '            or characters + len(row.text or "") <= max_characters\n',
        "            or True\n",
        (
            "tests/workers/test_pipeline.py"
            "::test_a_batch_holds_the_work_that_fits_and_gives_the_rest_back",
        ),
    ),
    Mutation(
        "a trimmed batch ends the drain",
        "workers/pipeline.py",
        "        return len(self.seqs) >= limit or self.trimmed or self.claim.suspect",
        "        return len(self.seqs) >= limit or self.claim.suspect",
        (
            "tests/workers/test_pipeline.py"
            "::test_a_batch_holds_the_work_that_fits_and_gives_the_rest_back",
        ),
    ),
    Mutation(
        "a batch is prefetched beside a suspect",
        "workers/pipeline.py",
        "                if go_on and not alone:",
        "                if go_on:",
        (
            "tests/workers/test_pipeline.py"
            "::test_no_row_is_claimed_beside_a_suspect_while_it_is_embedded",
        ),
    ),
    Mutation(
        "a search asks for any number of candidates",
        "pgplugin/sql/095-query-embeddings.sql",
        "    IF candidates IS NULL OR candidates < 1 OR candidates > most THEN",
        "    IF false THEN",
        (
            "tests/pgplugin/test_search_text.py"
            "::test_a_search_asks_for_a_bounded_number_of_candidates",
        ),
    ),
    Mutation(
        "arguments sent with the types psycopg picks",
        "pgplugin/_call.py",
        "        if type_name is not None:",
        "        if False:",
        ("tests/pgplugin/test_call.py",),
    ),
    Mutation(
        "an overload rowembed did not make may be called",
        "pgplugin/_call.py",
        "    if len(signatures) > 1:",
        "    if False:",
        ("tests/pgplugin/test_call.py",),
    ),
    Mutation(
        "chunking tokenizes a huge row whole",
        "workers/runtime/encoder.py",
        "            bounded = [self._token_prefix(t, size * plan.max_chunks) for t in texts]",
        "            bounded = [t[: size * plan.max_chunks * CHARS_PER_TOKEN] for t in texts]",
        ("tests/workers/runtime/test_chunking.py",),
    ),
    Mutation(
        "the exporter ignores its token",
        "rowembed/metrics.py",
        "        app = bearer_token_required(app, token)",
        "        pass",
        ("tests/rowembed/test_metrics.py",),
    ),
    Mutation(
        "loaded models are never let go",
        "workers/state.py",
        "    while len(loaded) > MAX_LOADED_MODELS:",
        "    while False:",
        ("tests/workers/test_state.py",),
    ),
    Mutation(
        "a dropped queue leaves the triggers armed",
        "pgplugin/sql/045-ddl-guard.sql",
        "        CONTINUE WHEN rowembed._qualified(v.source) IS NULL;",
        "        CONTINUE;",
        ("tests/pgplugin/test_application_writes.py",),
    ),
    Mutation(
        "the query cache does not replicate",
        "migrations/0011_standby_searches.sql",
        "ALTER TABLE rowembed.query_cache SET LOGGED;\n",
        "\n",
        ("tests/pgplugin/test_standby.py",),
    ),
    Mutation(
        "a standby asks its own workers",
        "pgplugin/sql/095-query-embeddings.sql",
        "    SELECT CASE WHEN pg_is_in_recovery() THEN\n",
        "    SELECT CASE WHEN false THEN\n",
        ("tests/pgplugin/test_standby.py",),
    ),
    Mutation(
        "status on a standby sees no claim in flight",
        "pgplugin/sql/080-status.sql",
        "    held text := CASE WHEN pg_is_in_recovery()",
        "    held text := CASE WHEN false",
        ("tests/pgplugin/test_standby.py",),
    ),
    Mutation(
        "a worker starts behind a transaction pooler",
        "pgplugin/sessions.py",
        "    if first_pid == second_pid:",
        "    if False:",
        ("tests/pgplugin/test_poolers.py",),
    ),
    Mutation(
        "RabbitMQ queues without priorities",
        "workers/celery_app.py",
        'queue_arguments={"x-max-priority": max(HINT_PRIORITIES["amqp"])})',
        "queue_arguments={})",
        ("tests/workers/test_brokers.py",),
    ),
    Mutation(
        "RabbitMQ with the broker as result backend",
        "workers/celery_app.py",
        'backend="rpc://" if settings.broker_is_amqp else settings.redis_url,',
        "backend=settings.redis_url,",
        ("tests/workers/test_brokers.py",),
    ),
    Mutation(
        "a chunked batch is sliced by chunks, not whole rows",
        "workers/pipeline.py",
        "        rows = [r for r in claimed.chunked.inputs_of() if len(r)]",
        "        rows = [range(i, i + 1) for i in range(len(tokenized.ids))]",
        ("tests/workers/test_chunked_pipeline.py",),
    ),
    Mutation(
        "a batch is never stopped between its slices",
        "workers/pipeline.py",
        "        if n and stop is not None and stop():",
        "        if False:",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a batch stopped between slices counts the rows it gave back",
        "workers/pipeline.py",
        "                    claiming.submit(queue.release, reader, release).result()",
        "                    pass",
        ("tests/workers/test_pipeline.py",),
    ),
    Mutation(
        "a long row's slices are thrown away between tasks",
        "workers/pipeline.py",
        "            progress.vectors[todo[n]] = vector\n",
        "            pass\n",
        ("tests/workers/test_chunked_pipeline.py",),
    ),
    Mutation(
        "a long row that got a slice done is counted for a time limit",
        "workers/pipeline.py",
        "row_progress is not None and len(row_progress.vectors) > chunks_before",
        "False",
        ("tests/workers/test_chunked_pipeline.py",),
    ),
    Mutation(
        "a long row holds its worker past the task's time",
        "workers/pipeline.py",
        "        if done and time.monotonic() >= deadline:",
        "        if False:",
        ("tests/workers/test_chunked_pipeline.py",),
    ),
    Mutation(
        "a missing model is an error on every row",
        "workers/pipeline.py",
        "    if result.systemic is not None:\n        unfinished = set(range(len(to_embed)))",
        "    if False:\n        unfinished = set(range(len(to_embed)))",
        (
            "tests/workers/test_pipeline.py::test_a_missing_model_is_one_problem_and_its_rows_wait_for_it",
        ),
    ),
    Mutation(
        "a chunked vectorizer's missing model fails each row's chunking",
        "workers/pipeline.py",
        "    except SYSTEMIC:\n        raise\n",
        "",
        (
            "tests/workers/test_pipeline.py::test_a_missing_model_is_one_problem_and_its_rows_wait_for_it",
        ),
    ),
    Mutation(
        "status blind to a model that cannot be used",
        "pgplugin/sql/080-status.sql",
        "(SELECT 'its model cannot be used: ' || st.problem",
        "(SELECT NULL::text",
        (
            "tests/workers/test_pipeline.py::test_a_missing_model_is_one_problem_and_its_rows_wait_for_it",
        ),
    ),
    Mutation(
        "search_text tries a loopback that cannot authenticate",
        "pgplugin/sql/095-query-embeddings.sql",
        "    IF why IS NOT NULL THEN\n        RAISE EXCEPTION 'rowembed: %', why USING HINT = fix;",
        "    IF false THEN\n        RAISE EXCEPTION 'rowembed: %', why USING HINT = fix;",
        (
            "tests/pgplugin/test_search_text.py::"
            "test_a_non_superuser_owner_is_told_what_search_text_needs_and_it_then_works",
        ),
    ),
    Mutation(
        "the loopback reads a setting a non-superuser may not",
        "pgplugin/sql/095-query-embeddings.sql",
        "(SELECT s.setting FROM pg_settings AS s WHERE s.name = 'unix_socket_directories')",
        "current_setting('unix_socket_directories')",
        (
            "tests/pgplugin/test_search_text.py::"
            "test_a_non_superuser_owner_is_told_what_search_text_needs_and_it_then_works",
        ),
    ),
    Mutation(
        "migrate silent about search_text's needs",
        "rowembed/cli.py",
        "    if problem is not None:  # everything else works; say it once, with the fix",
        "    if False:",
        (
            "tests/pgplugin/test_search_text.py::"
            "test_a_non_superuser_owner_is_told_what_search_text_needs_and_it_then_works",
        ),
    ),
    Mutation(
        "calibrate applies a threshold from the rows alone",
        "rowembed/cli.py",
        "    if args.apply and not args.query:",
        "    if False:",
        ("tests/rowembed/test_cli.py::test_search_with_rerank_and_calibrate_from_the_shell",),
    ),
    Mutation(
        "interactive commands log model loads into their answer",
        "rowembed/cli.py",
        'args.loglevel or ("INFO" if args.command in SERVICES else "WARNING")',
        'args.loglevel or "INFO"',
        ("tests/rowembed/test_cli.py::test_search_with_rerank_and_calibrate_from_the_shell",),
    ),
    Mutation(
        "alter --wait cannot attach to a running rebuild",
        "rowembed/cli.py",
        "        if args.wait and not any(options.values()):",
        "        if False:",
        ("tests/rowembed/test_cli.py::test_alter_status_and_cancel_from_the_shell",),
    ),
    Mutation(
        "an embedded server makes its directory before it starts",
        "rowembed/dev/embedded.py",
        "        self._base_dir = base_dir\n        self.durable = durable\n",
        "        self._base_dir = base_dir or tempfile.mkdtemp(prefix='rowembed-pg-')\n"
        "        self.durable = durable\n",
        ("tests/rowembed/test_embedded.py",),
    ),
    Mutation(
        "hard negatives include the query's positives",
        "pgplugin/finetune.py",
        "if key not in relevant]",
        "]",
        (
            "tests/rowembed/test_finetune.py::"
            "test_hard_negatives_come_from_the_index_window_without_the_positives",
        ),
    ),
    Mutation(
        "the pairs query may write",
        "pgplugin/finetune.py",
        '            conn.execute("SET TRANSACTION READ ONLY")\n',
        "",
        (
            "tests/rowembed/test_finetune.py::test_pairs_that_cannot_be_used_are_refused_in_one_line",
        ),
    ),
    Mutation(
        "a training job claimed by two workers",
        "pgplugin/sql/110-finetune.sql",
        "        CONTINUE WHEN NOT pg_try_advisory_lock(",
        "        CONTINUE WHEN false AND NOT pg_try_advisory_lock(",
        ("tests/pgplugin/test_training_jobs.py",),
    ),
    Mutation(
        "a job that kills its workers is claimed forever",
        "pgplugin/sql/110-finetune.sql",
        "        IF j.attempts >= rowembed._training_max_attempts() THEN",
        "        IF false THEN",
        ("tests/pgplugin/test_training_jobs.py",),
    ),
    Mutation(
        "any creator may start a job on another's vectorizer",
        "pgplugin/sql/110-finetune.sql",
        "    IF NOT FOUND OR NOT rowembed._session_is(v.owner) THEN",
        "    IF NOT FOUND THEN",
        ("tests/pgplugin/test_training_jobs.py",),
    ),
    Mutation(
        "the pairs query resolved in rowembed's pinned search_path",
        "pgplugin/sql/110-finetune.sql",
        "    PERFORM pg_catalog.set_config('search_path', finetune.search_path, true);\n",
        "",
        ("tests/pgplugin/test_training_jobs.py",),
    ),
    Mutation(
        "the pairs query's column count unchecked",
        "pgplugin/sql/110-finetune.sql",
        "    IF wide OR query_type NOT IN",
        "    IF query_type NOT IN",
        ("tests/pgplugin/test_training_jobs.py",),
    ),
    Mutation(
        "a second attempt saves into the first one's directory",
        "workers/training_jobs.py",
        '(f".{job.attempts}" if job.attempts > 1 else "")',
        '""',
        ("tests/workers/test_training_jobs.py",),
    ),
    Mutation(
        "a training job's progress is never shown",
        "workers/training_jobs.py",
        "        if step in (1, steps) or now - self.written >= PROGRESS_SECONDS:",
        "        if False:",
        ("tests/workers/test_training_jobs.py",),
    ),
    Mutation(
        "no training hint from the sweep",
        "workers/dispatcher.py",
        "                    if training_jobs_waiting(conn):  # or their worker died\n",
        "                    if False:\n",
        ("tests/workers/test_training_jobs.py",),
    ),
)


def scratch_copy(target: Path) -> None:
    for folder, place in LAYOUT.items():
        shutil.copytree(
            ROOT / folder,
            target / place,
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    for file in ("pyproject.toml", "docker-compose.yml", "Dockerfile"):  # tests/test_stack.py
        shutil.copy(ROOT / file, target / file)


def run_tests(scratch: Path, tests: tuple[str, ...]) -> bool:
    """Whether the tests pass."""
    env = {**os.environ, "PYTHONPATH": str(scratch)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=scratch, env=env, capture_output=True).returncode == 0


def main(selected: list[str]) -> int:
    mutations = [m for m in MUTATIONS if not selected or any(s in m.name for s in selected)]
    caught = 0
    with tempfile.TemporaryDirectory(prefix="rowembed-mutants-") as tmp:
        scratch = Path(tmp)
        scratch.chmod(0o755)  # the embedded PostgreSQL's user reads nothing here, but may pass
        scratch_copy(scratch)
        guarding = tuple(sorted({t for m in mutations for t in m.tests}))
        if not run_tests(scratch, guarding):
            print("the guarding tests fail without any mutation: fix them first")
            return 1
        for m in mutations:
            file = scratch / LAYOUT[m.path.split("/")[0]] / m.path.split("/", 1)[1]
            original = file.read_text()
            if original.count(m.safeguard) != 1:
                print(f"STALE    {m.name}: its safeguard text is not in {m.path} once")
                continue
            file.write_text(original.replace(m.safeguard, m.replacement))
            try:
                red = not run_tests(scratch, m.tests)
            finally:
                file.write_text(original)
            caught += red
            print(f"{'caught' if red else 'MISSED':<8} {m.name}")
    print(f"{caught} of {len(mutations)} mutations caught")
    return 0 if caught == len(mutations) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
