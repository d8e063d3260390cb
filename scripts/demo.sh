#!/usr/bin/env bash
# The whole pipeline on this machine: installs what is missing, builds, starts a private
# PostgreSQL, the simulator (4 GPU nodes + the NLP API) and cofid, submits a batch of 400
# generated calls and shows its progress live. `scripts/demo.sh stop` ends everything.
# State, logs and pid files live in <repo>/.cofi/demo/.
set -euo pipefail

COFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COFI_SCRIPT=demo
# shellcheck source=scripts/lib.sh
. "$COFI_ROOT/scripts/lib.sh"

DEMO="$COFI_ROOT/.cofi/demo"
PORT="${COFI_DEMO_PORT:-8080}"
SIM_BASE_PORT="${COFI_DEMO_SIM_PORT:-18100}"
NLP_PORT="${COFI_DEMO_NLP_PORT:-18200}"
PG_PORT="${COFI_DEMO_PG_PORT:-25432}"
FILES="${COFI_DEMO_FILES:-400}"
NODES=4
BUILD="$COFI_ROOT/build"

usage() {
    cat <<EOF
Usage: scripts/demo.sh [start]   run the demo (the default)
       scripts/demo.sh stop      stop cofid, cofi-sim and the demo's PostgreSQL
       scripts/demo.sh --help

start: scripts/deps.sh, scripts/build.sh, scripts/pg.sh start, writes $FILES WAV files
under .cofi/demo/calls, starts cofi-sim ($NODES nodes from port $SIM_BASE_PORT, NLP API on
$NLP_PORT) and cofid (http://127.0.0.1:$PORT), submits one batch with every file, runs it
and draws its progress until it ends. A demo still running from before is stopped first.
Logs: .cofi/demo/cofid.log, .cofi/demo/sim.log.

Environment: COFI_DEMO_PORT (8080), COFI_DEMO_SIM_PORT (18100: nodes use it and the next
$((NODES - 1))), COFI_DEMO_NLP_PORT (18200), COFI_DEMO_PG_PORT (25432), COFI_DEMO_FILES (400).
EOF
}

# Stops the process whose pid is in file $1 if its executable is $2.
stop_pidfile() {
    local file="$1" exe="$2" pid real
    [ -f "$file" ] || return 0
    pid="$(cat "$file")"
    rm -f "$file"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    real="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    real="${real% (deleted)}"
    if [ -n "$real" ] && [ "$real" = "$(readlink -f "$exe")" ]; then
        cofi_say "stopping $(basename "$exe") (pid $pid)"
        cofi_stop_pids 40 "$pid"
    fi
}

stop_processes() {
    stop_pidfile "$DEMO/cofid.pid" "$BUILD/cofid"
    stop_pidfile "$DEMO/sim.pid" "$BUILD/cofi-sim"
}

do_stop() {
    stop_processes
    "$COFI_ROOT/scripts/pg.sh" stop
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts a binary in its own session (so a Ctrl-C in this terminal does not reach it),
# logging to $2 and recording its pid in $3. Usage: spawn NAME LOG PIDFILE CMD...
spawn() {
    local name="$1" log="$2" pidfile="$3"
    shift 3
    setsid "$@" </dev/null >"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$pidfile"
    cofi_say "$name started (pid $pid, log ${log#"$COFI_ROOT"/})"
}

# Waits until URL $1 answers 200, while pid $2 lives, for at most $3 seconds.
wait_http_ok() {
    local url="$1" pid="$2" limit="$3" code
    local deadline=$((SECONDS + limit))
    while :; do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
        [ "$code" = 200 ] && return 0
        kill -0 "$pid" 2>/dev/null || return 2
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

fail_with_log() {
    local log="$1"
    shift
    cofi_say "$*; last lines of ${log#"$COFI_ROOT"/}:"
    tail -n 40 "$log" >&2 || true
    cofi_say "stop what is left with: scripts/demo.sh stop"
    exit 1
}

do_start() {
    local t0=$SECONDS
    [[ "$FILES" =~ ^[1-9][0-9]*$ ]] || cofi_die "COFI_DEMO_FILES must be a positive number"
    mkdir -p "$DEMO"
    stop_processes

    local p
    for p in "$PORT" "$NLP_PORT" $(seq "$SIM_BASE_PORT" $((SIM_BASE_PORT + NODES - 1))); do
        if port_busy "$p"; then
            cofi_die "port $p on 127.0.0.1 is in use; free it or set COFI_DEMO_PORT," \
                "COFI_DEMO_SIM_PORT, COFI_DEMO_NLP_PORT"
        fi
    done

    "$COFI_ROOT/scripts/deps.sh" >/dev/null
    COFI_PYTHON="$(cofi_pick_python)"
    export COFI_PYTHON

    cofi_say "building (log .cofi/demo/build.log)"
    if ! "$COFI_ROOT/scripts/build.sh" >"$DEMO/build.log" 2>&1; then
        tail -n 40 "$DEMO/build.log" >&2
        cofi_die "build failed; see .cofi/demo/build.log"
    fi

    "$COFI_ROOT/scripts/pg.sh" start --port "$PG_PORT"
    local database_url
    database_url="$(
        eval "$("$COFI_ROOT/scripts/pg.sh" env --port "$PG_PORT")"
        printf '%s' "$COFI_DATABASE_URL"
    )"

    cofi_say "writing $FILES WAV files under .cofi/demo/calls"
    rm -rf "$DEMO/calls"
    python3 "$COFI_ROOT/scripts/make_audio.py" "$DEMO/calls" "$FILES" --json >"$DEMO/files.json"

    spawn cofi-sim "$DEMO/sim.log" "$DEMO/sim.pid" "$BUILD/cofi-sim" \
        --nodes "$NODES" --base-port "$SIM_BASE_PORT" --node-capacity 4 \
        --nlp-port "$NLP_PORT" --nlp-capacity 100 \
        --latency-ms upload=20,denoise=60,ivr=30,lid=30,stt=150,llm1=300,llm2=400 \
        --jitter-pct 20 --seed 7
    local sim_pid rc=0
    sim_pid="$(cat "$DEMO/sim.pid")"
    wait_http_ok "http://127.0.0.1:$SIM_BASE_PORT/health" "$sim_pid" 15 || rc=$?
    [ "$rc" -eq 0 ] || fail_with_log "$DEMO/sim.log" "cofi-sim did not come up"

    python3 - "$DEMO/cofid.json" "$PORT" "$database_url" "$DEMO/calls" "$NODES" \
        "$SIM_BASE_PORT" "$NLP_PORT" <<'EOF'
import json, sys
path, port, db, root, nodes, base, nlp = sys.argv[1:]
cfg = {
    "listen": "127.0.0.1:%s" % port,
    "database_url": db,
    "input_root": root,
    "nodes": [{"id": "gpu-%d" % (i + 1), "url": "http://127.0.0.1:%d" % (int(base) + i),
               "capacity": 4} for i in range(int(nodes))],
    "mediator": {"timeout_ms": 60000, "max_attempts": 5},
    "llm": {"url": "http://127.0.0.1:%s" % nlp, "concurrency": 100,
            "timeout_ms": 60000, "max_attempts": 5},
}
with open(path, "w") as f:
    json.dump(cfg, f, indent=2)
    f.write("\n")
EOF

    # The file carries the database URL: COFI_DATABASE_URL must not override it.
    spawn cofid "$DEMO/cofid.log" "$DEMO/cofid.pid" \
        env -u COFI_DATABASE_URL -u COFI_LISTEN "$BUILD/cofid" --config "$DEMO/cofid.json"
    local cofid_pid base="http://127.0.0.1:$PORT"
    cofid_pid="$(cat "$DEMO/cofid.pid")"
    rc=0
    wait_http_ok "$base/readyz" "$cofid_pid" 30 || rc=$?
    case "$rc" in
    0) ;;
    2) fail_with_log "$DEMO/cofid.log" "cofid exited" ;;
    *) fail_with_log "$DEMO/cofid.log" "cofid not ready after 30 s" ;;
    esac

    # Submit: retried with the same Idempotency-Key, so a retry never makes a second batch.
    local key body reply="" id="" try
    key="demo-$(date -u +%Y%m%dT%H%M%SZ)-$$"
    body="$DEMO/batch.json"
    python3 -c 'import json, sys
files = json.load(open(sys.argv[1]))
json.dump({"name": "demo", "files": files, "metadata": {"source": "scripts/demo.sh"}},
          open(sys.argv[2], "w"))' "$DEMO/files.json" "$body"
    for try in 1 2 3 4 5; do
        if reply="$(curl -sS --fail-with-body --max-time 30 -X POST \
            -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
            --data-binary "@$body" "$base/batches")"; then
            break
        fi
        cofi_say "POST /batches failed (try $try): $reply"
        reply=""
        sleep 1
    done
    [ -n "$reply" ] || fail_with_log "$DEMO/cofid.log" "could not create the batch"
    id="$(printf '%s' "$reply" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
    cofi_say "batch $id created with $FILES files (Idempotency-Key $key)"

    if ! reply="$(curl -sS --fail-with-body --max-time 30 -X POST \
        -H 'Content-Type: application/json' -d '{"mode": "pipelined"}' \
        "$base/batches/$id/run")"; then
        cofi_say "POST /batches/$id/run: $reply"
        fail_with_log "$DEMO/cofid.log" "could not start the batch"
    fi
    echo

    rc=0
    python3 "$COFI_ROOT/scripts/progress.py" "$base" "$id" || rc=$?
    case "$rc" in
    0 | 3) ;;
    130)
        cofi_say "cofid and cofi-sim keep running: $base/batches/$id;" \
            "scripts/demo.sh stop ends them"
        exit 130
        ;;
    *) fail_with_log "$DEMO/cofid.log" "lost track of the batch" ;;
    esac

    cat <<EOF

The demo took $((SECONDS - t0)) s in all (build included). cofid and cofi-sim keep running.

  batch:        $base/batches/$id
  calls:        $base/batches/$id/calls?limit=5
  API:          $base/openapi.json
  LLM stage:    $base/stages/llm1/status

Try:
  curl -s $base/batches/$id | python3 -m json.tool
  curl -s '$base/batches/$id/calls?limit=2&state=done' | python3 -m json.tool
  curl -s $base/stages/stt/status | python3 -m json.tool
  curl -s -X POST -H 'Content-Type: application/json' \\
       -d '{"name": "again", "files": ["call-00010.wav", "call-00020.wav"]}' $base/batches

Logs: .cofi/demo/cofid.log and .cofi/demo/sim.log
Stop everything: scripts/demo.sh stop
EOF
}

case "${1:-start}" in
start) do_start ;;
stop) do_stop ;;
-h | --help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
