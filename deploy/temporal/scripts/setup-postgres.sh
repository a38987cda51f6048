#!/bin/sh
# Temporal's schema on PostgreSQL, as Temporal's recipe does it (samples-server,
# compose/scripts/setup-postgres.sh). Runs at every start, and must: `update-schema`
# applies the versioned steps a newer server image needs before that server starts.
# Each step is idempotent: `create` of an existing database fails (ignored; a real
# failure shows in the next step), `setup-schema -v 0.0` only makes the version table if
# missing, `update-schema` applies only versions not yet there.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}"
# temporal-sql-tool reads the password from the environment; we keep it in a file.
SQL_PASSWORD="$(cat /run/secrets/temporal-db-password)"
export SQL_PASSWORD
port="${DB_PORT:-5432}"
nc -z -w 10 "$POSTGRES_SEEDS" "$port"

tool() { temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -u "$POSTGRES_USER" -p "$port" "$@"; }
for pair in temporal:temporal temporal_visibility:visibility; do
    db="${pair%%:*}"
    tool --db "$db" create 2>/dev/null || echo "database $db exists"
    tool --db "$db" setup-schema -v 0.0
    tool --db "$db" update-schema -d "/etc/temporal/schema/postgresql/v12/${pair#*:}/versioned"
done
echo "Temporal schema is up to date"
