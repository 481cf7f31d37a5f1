#!/usr/bin/env bash
# Start a real PostgreSQL server on loopback for the worker tests (Debian's package).
# Usage (as root, from .ci/run):   eval "$(.ci/postgres.sh)"
# Prints one line to eval: export HEMATUNE_TEST_POSTGRES_URL=postgresql://...
# Idempotent: installs the package if missing, creates and starts the cluster if
# it is down, creates the user and database if they do not exist.
set -euo pipefail
if ! command -v pg_lsclusters >/dev/null; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
    pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -qx online; then
    pg_ctlcluster "$version" main start >&2
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')
psql_as_postgres() { su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qtA -c \"$1\""; }
if [ "$(psql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname='hematune'")" != 1 ]; then
    psql_as_postgres "CREATE ROLE hematune LOGIN PASSWORD 'hematune'" >&2
fi
if [ "$(psql_as_postgres "SELECT 1 FROM pg_database WHERE datname='hematune_test'")" != 1 ]; then
    psql_as_postgres "CREATE DATABASE hematune_test OWNER hematune" >&2
fi
echo "export HEMATUNE_TEST_POSTGRES_URL=postgresql://hematune:hematune@127.0.0.1:$port/hematune_test"
