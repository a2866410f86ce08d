#!/bin/sh
# Run once by the postgres image on its first start (an empty data directory),
# from /docker-entrypoint-initdb.d: the stack's roles, none a superuser.
#   app              the application: owns its tables and creates vectorizers
#                    over them (`migrate --grant-creator app`).
#   rowembed_worker  the dispatcher, the workers and the exporter: what
#                    `migrate --grant-worker` grants, and a member of app, so that
#                    it works app's vectorizers made later too, acting as their
#                    owner (app's code on them runs as app) and building their
#                    deferred indexes.
# Only the one-shot `migrate` connects as the superuser: it creates the
# extensions, the DDL guard's event triggers and the role rowembed_loopback.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_password="$APP_PASSWORD" -v worker_password="$ROWEMBED_WORKER_PASSWORD" <<'SQL'
CREATE ROLE app LOGIN PASSWORD :'app_password';
CREATE ROLE rowembed_worker LOGIN PASSWORD :'worker_password';
GRANT app TO rowembed_worker;
GRANT CREATE ON SCHEMA public TO app;
SQL
