#!/usr/bin/env bash
# Vendored copy of the machine's ../shared/scripts/services.sh, so CI never
# depends on a file outside the repository. .ci/run prefers the shared script
# when it exists and falls back to this one; keep the two identical in effect.
# Makes sure PostgreSQL and Redis run on this machine (installing them from Debian's
# packages if absent), creates a fresh, uniquely named database, and prints the
# environment for the test run:
#   eval "$(../shared/scripts/services.sh)"   # exports DATABASE_URL, REDIS_URL, REDIS_PREFIX
# Safe to run repeatedly. Messages go to stderr; only the exports go to stdout.
set -euo pipefail
log() { echo "services: $*" >&2; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  log "installing postgresql and redis-server"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server) >&2
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  log "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >&2 || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
fi

# Run SQL as a superuser: trust auth on loopback (node-svc), else the postgres OS user.
psql_admin() {
  if psql -w -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' </dev/null >/dev/null 2>&1; then
    psql -w -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq
  else
    su postgres -c "psql -d postgres -v ON_ERROR_STOP=1 -Atq"
  fi
}
user=sc_test
db="sc_$(date +%s)_$$"
psql_admin >/dev/null <<SQL
select 'create role $user login password ''$user'' createdb'
  where not exists (select from pg_roles where rolname = '$user') \gexec
create database $db owner $user;
SQL
# Drop this script's databases older than an hour, so repeated runs don't pile up.
cutoff=$(( $(date +%s) - 3600 ))
psql_admin <<SQL | while read -r old; do [ -n "$old" ] && echo "drop database if exists $old;" ; done | psql_admin >/dev/null 2>&1 || true
select datname from pg_database where datname ~ '^sc_[0-9]+_[0-9]+$'
  and split_part(datname, '_', 2)::bigint < $cutoff;
SQL
log "fresh database $db"
echo "export DATABASE_URL=postgres://$user:$user@127.0.0.1:5432/$db"
echo "export REDIS_URL=redis://127.0.0.1:6379/$(( RANDOM % 16 ))"
# Pub/sub channels ignore the db index: the app should prefix its keys and channels.
echo "export REDIS_PREFIX=$db:"
