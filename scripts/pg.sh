#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for cofi's demo and tests: its own data directory, a short
# socket directory under /tmp, a loopback port, trust auth for local connections only and a
# database `cofi`. Nothing system-wide: the Debian `main` cluster and systemd are untouched.
set -euo pipefail

COFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COFI_SCRIPT=pg
# shellcheck source=scripts/lib.sh
. "$COFI_ROOT/scripts/lib.sh"

PGBIN="${COFI_PGBIN:-/usr/lib/postgresql/15/bin}"
PGSS_CONTROL=/usr/share/postgresql/15/extension/pg_stat_statements.control

usage() {
    cat <<'EOF'
Usage: scripts/pg.sh start|stop|status|env [--dir DIR] [--port N] [--fast] [--reset]

  start    initdb if needed, start the cluster, create database `cofi`; prints one line.
           Already running: ok. Waits for pg_isready (60 s deadline).
  stop     fast shutdown; ok when not running.
  status   says whether it runs; exit 0 when running, 3 when not.
  env      prints, for eval, COFI_DATABASE_URL and COFI_TEST_PGHOST/PGPORT/PGUSER.

  --dir DIR   data directory (default <repo>/.cofi/pg). As root the server runs as the
              `postgres` user; if that user cannot reach DIR's parent, the data lives in
              /tmp/cofi-pg-<hash of DIR> instead (said at start).
  --port N    TCP port on 127.0.0.1 (default 25432, below the ephemeral range 32768-60999 so
              no outgoing connection can hold it; also read from a running cluster).
  --fast      start with fsync=off, synchronous_commit=off, full_page_writes=off (tests)
  --reset     start: stop the cluster and delete its data first

The unix socket lives in /tmp/cofi-<hash of the data dir>. Connect as user `postgres`:
  eval "$(scripts/pg.sh env)"; psql "$COFI_DATABASE_URL"
EOF
}

cmd=""
dir="$COFI_ROOT/.cofi/pg"
port=""
fast=0
reset=0
while [ "$#" -gt 0 ]; do
    case "$1" in
    start | stop | status | env)
        [ -z "$cmd" ] || cofi_die "one command at a time"
        cmd="$1"
        ;;
    --dir)
        [ "$#" -ge 2 ] || cofi_die "--dir needs a value"
        dir="$2"
        shift
        ;;
    --port)
        [ "$#" -ge 2 ] || cofi_die "--port needs a value"
        port="$2"
        shift
        ;;
    --fast) fast=1 ;;
    --reset) reset=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
    shift
done
[ -n "$cmd" ] || {
    usage >&2
    exit 2
}
[ -z "$port" ] || [[ "$port" =~ ^[0-9]+$ ]] || cofi_die "--port must be a number"
[ -x "$PGBIN/pg_ctl" ] || cofi_die "no PostgreSQL 15 in $PGBIN: run scripts/deps.sh"

# Absolute path of the requested data dir (it need not exist yet).
case "$dir" in
/*) ;;
*) dir="$PWD/$dir" ;;
esac
dir="${dir%/}"
tag="$(cofi_hash "$dir")"
sockdir="/tmp/cofi-$tag"

# Who runs the server: ourselves, or `postgres` when we are root (initdb refuses root).
as_pg=()
pguser_sys=""
if cofi_is_root; then
    pguser_sys=postgres
    as_pg=(runuser -u postgres --)
fi

ensure_pg_user() {
    [ -n "$pguser_sys" ] || return 0
    if ! id -u postgres >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

# Runs a command as the server's user, from / (its cwd may be unreadable to that user).
run_pg() {
    (cd / && "${as_pg[@]}" "$@")
}

# Sets `data`: the real data dir. Root: DIR if `postgres` can reach its parent, else /tmp.
resolve_data_dir() {
    data="$dir"
    [ -n "$pguser_sys" ] || return 0
    local parent
    parent="$(dirname "$dir")"
    if [ "$cmd" = start ]; then
        ensure_pg_user
        mkdir -p "$parent"
    fi
    if [ -d "$parent" ] && id -u postgres >/dev/null 2>&1 &&
        (cd / && runuser -u postgres -- test -x "$parent") 2>/dev/null; then
        return 0
    fi
    data="/tmp/cofi-pg-$tag"
    fallback=1
}

fallback=0
resolve_data_dir

# Reads port and socket dir from a running cluster's postmaster.pid (lines 4 and 5).
read_pidfile() {
    local f="$data/postmaster.pid"
    [ -r "$f" ] || return 1
    local p s
    p="$(sed -n 4p "$f")"
    s="$(sed -n 5p "$f")"
    [ -n "$p" ] || return 1
    [ -z "$port" ] && port="$p"
    [ -n "$s" ] && sockdir="$s"
    return 0
}

is_running() {
    [ -d "$data" ] || return 1
    run_pg "$PGBIN/pg_ctl" status -D "$data" >/dev/null 2>&1
}

url() {
    printf 'postgresql://postgres@/cofi?host=%s&port=%s' "$sockdir" "$port"
}

do_stop() {
    if ! is_running; then
        cofi_say "not running ($data)"
        return 0
    fi
    run_pg "$PGBIN/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null
    cofi_say "stopped ($data)"
}

write_conf() {
    local conf="$data/cofi.conf"
    {
        echo "# Written by scripts/pg.sh at every start; edits here are lost."
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$sockdir'"
        echo "max_connections = 300"
        echo "shared_buffers = 256MB"
        echo "logging_collector = off"
        echo "log_min_messages = warning"
        if [ -e "$PGSS_CONTROL" ]; then
            echo "shared_preload_libraries = 'pg_stat_statements'"
        fi
        if [ "$fast" -eq 1 ]; then
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
        fi
    } >"$conf"
    [ -z "$pguser_sys" ] || chown "$pguser_sys:" "$conf"
    cat >"$data/pg_hba.conf" <<'EOF'
# Written by scripts/pg.sh: trust on the unix socket and 127.0.0.1 only.
local   all   all                 trust
host    all   all   127.0.0.1/32  trust
EOF
    [ -z "$pguser_sys" ] || chown "$pguser_sys:" "$data/pg_hba.conf"
}

do_start() {
    [ -n "$port" ] || port=25432
    if [ "$reset" -eq 1 ] && is_running; then
        do_stop
    fi
    if is_running; then
        local want_port="$port"
        port=""
        read_pidfile || true
        [ "$port" = "$want_port" ] ||
            cofi_say "warning: already running on port $port, not $want_port"
        echo "postgres already running: $(url) (data $data)"
        return 0
    fi
    if [ "$reset" -eq 1 ] && [ -e "$data/PG_VERSION" ]; then
        rm -rf "$data"
    fi
    if [ "$fallback" -eq 1 ]; then
        cofi_say "user postgres cannot reach $(dirname "$dir"): data dir is $data instead"
    fi

    # Socket dir: short, reachable by everyone, owned by the server's user.
    mkdir -p "$sockdir"
    if [ -n "$pguser_sys" ]; then
        chown "$pguser_sys:" "$sockdir"
        chmod 0755 "$sockdir"
    fi

    if [ ! -s "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        [ -z "$pguser_sys" ] || chown "$pguser_sys:" "$data"
        chmod 0700 "$data"
        local nosync=()
        [ "$fast" -eq 0 ] || nosync=(--no-sync)
        if ! run_pg "$PGBIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 \
            --locale=C "${nosync[@]}" >"$sockdir/initdb.log" 2>&1; then
            cat "$sockdir/initdb.log" >&2
            cofi_die "initdb failed"
        fi
        echo "include_if_exists = 'cofi.conf'" >>"$data/postgresql.conf"
    fi
    write_conf

    # A stale postmaster.pid (after kill -9 or a reboot) is handled by postgres itself.
    # pg_ctl -w returns as soon as the postmaster is up or has died; pg_isready then
    # confirms that it accepts connections on the socket we hand out.
    local log="$data/server.log"
    if ! run_pg "$PGBIN/pg_ctl" start -D "$data" -l "$log" -w -t 60 >/dev/null 2>&1; then
        tail -n 30 "$log" >&2 || true
        cofi_die "postgres did not start (log: $log)"
    fi
    local deadline=$((SECONDS + 30))
    until "$PGBIN/pg_isready" -q -h "$sockdir" -p "$port" -d postgres -U postgres; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$log" >&2 || true
            cofi_die "postgres did not become ready on $sockdir port $port (log: $log)"
        fi
        sleep 0.1
    done

    local psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$sockdir" -p "$port" -U postgres)
    if [ "$("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'cofi'")" != 1 ]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE cofi"
    fi
    if [ -e "$PGSS_CONTROL" ]; then
        "${psql[@]}" -d cofi -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null ||
            cofi_say "warning: could not create extension pg_stat_statements"
    fi
    local mode=""
    [ "$fast" -eq 0 ] || mode=", fast (fsync off)"
    echo "postgres started: $(url) (data $data$mode)"
}

case "$cmd" in
start)
    do_start
    ;;
stop)
    do_stop
    ;;
status)
    if is_running; then
        read_pidfile || true
        echo "running: $(url) (data $data)"
    else
        echo "not running (data $data)"
        exit 3
    fi
    ;;
env)
    read_pidfile || true
    [ -n "$port" ] || port=25432
    printf "export COFI_DATABASE_URL='%s'\n" "$(url)"
    printf 'export COFI_TEST_PGHOST=%s COFI_TEST_PGPORT=%s COFI_TEST_PGUSER=postgres\n' \
        "$sockdir" "$port"
    ;;
esac
