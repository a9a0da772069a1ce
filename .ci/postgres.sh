#!/usr/bin/env bash
# Start the local PostgreSQL cluster for the store tests and make sure the test role and database
# exist. Idempotent: safe to run again on a machine where everything is already set up.
#
#   WATCHDOG_TEST_PG_URL="$(bash .ci/postgres.sh | tail -n 1)"
#
# Runs as root (Debian/Ubuntu postgresql-common: pg_lsclusters, pg_ctlcluster). Progress goes to
# stderr; the last (and only) line on stdout is the SQLAlchemy URL of the test database.
# WATCHDOG_PG_CLUSTER (default main) and WATCHDOG_PG_PORT (default 5432, used when the cluster is
# created) exist so this script can be exercised on a throw-away cluster next to a busy one.
set -euo pipefail

ROLE=watchdog
PASSWORD=watchdog
DATABASE=watchdog_test
HOST=127.0.0.1
CLUSTER="${WATCHDOG_PG_CLUSTER:-main}"
PORT="${WATCHDOG_PG_PORT:-5432}"

say() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (it starts the cluster and runs psql as the postgres user)"
    exit 2
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "postgresql-common is not installed (apt-get install postgresql)"
    exit 2
fi

# The newest installed major version: other machines may have 14, 16, 17... rather than 15.
VERSION="$(ls /usr/lib/postgresql/ 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -n 1 || true)"
if [ -z "$VERSION" ]; then
    say "no PostgreSQL server found under /usr/lib/postgresql/"
    exit 2
fi

if ! pg_lsclusters -h 2>/dev/null | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {found=1} END {exit !found}'; then
    say "creating cluster $VERSION/$CLUSTER on port $PORT"
    pg_createcluster -p "$PORT" "$VERSION" "$CLUSTER" >&2
fi

status="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $4}')"
if [ "$status" != "online" ]; then
    say "starting cluster $VERSION/$CLUSTER"
    pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

# Ask the cluster which port it really uses rather than trusting our default.
PORT="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')"

as_postgres() { runuser -u postgres -- "$@"; }

say "waiting for $VERSION/$CLUSTER on port $PORT"
for _ in $(seq 1 60); do
    if as_postgres pg_isready -q -h "$HOST" -p "$PORT"; then
        break
    fi
    sleep 0.5
done
if ! as_postgres pg_isready -q -h "$HOST" -p "$PORT"; then
    say "PostgreSQL $VERSION/$CLUSTER did not become ready on $HOST:$PORT"
    exit 1
fi

psql_admin() {
    # Over the Unix socket as the postgres superuser (peer authentication).
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres "$@" >&2
}

if [ "$(as_postgres psql -X -tA -p "$PORT" -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    say "creating role $ROLE"
    psql_admin -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
else
    # Keep an existing role usable: the tests rely on the password and on CREATEDB.
    psql_admin -c "ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
fi

if [ "$(as_postgres psql -X -tA -p "$PORT" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]; then
    say "creating database $DATABASE"
    psql_admin -c "CREATE DATABASE $DATABASE OWNER $ROLE"
fi

# Prove that password login over TCP works, as the tests will use it.
if ! PGPASSWORD="$PASSWORD" psql -X -tA -h "$HOST" -p "$PORT" -U "$ROLE" -d "$DATABASE" -c 'SELECT 1' >/dev/null; then
    say "cannot log in as $ROLE over TCP on $HOST:$PORT (check pg_hba.conf)"
    exit 1
fi

say "ready: PostgreSQL $VERSION on $HOST:$PORT"
echo "postgresql+psycopg://$ROLE:$PASSWORD@$HOST:$PORT/$DATABASE"
