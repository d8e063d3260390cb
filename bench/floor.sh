#!/usr/bin/env bash
# The ceiling the simulator itself sets on seed-scaled efficiency, with no cofid and no
# database: cofi-sim with the seed-scaled topology (4 nodes of capacity 8, 10 ms per mediator
# stage) driven by wrk at exactly capacity (8 connections per node, a closed loop), for
# DURATION seconds. Prints requests/s per node, the mean latency, and the efficiency such a
# perfect client reaches: requests/s / (capacity / latency).
#
# With --nlp, the same for the NLP API: its 100 slots driven by wrk at 100 connections on
# /llm1 (default 5 ms, seed-scaled's llm1): the NLP requests/s the simulator and a client
# with almost no cost of its own reach on these cores, against 100 / latency possible.
#
# Usage: bench/floor.sh [--nlp] [DURATION_S] [LATENCY_MS]
#        (defaults: 10 s; 10 ms for the nodes, 5 ms with --nlp)
# Needs build/cofi-sim (scripts/build.sh) and wrk (scripts/deps.sh --bench).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NLP_ONLY=0
if [ "${1:-}" = "--nlp" ]; then
    NLP_ONLY=1
    shift
fi
case "${1:-}" in -h | --help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac
DURATION="${1:-10}"
if [ "$NLP_ONLY" = 1 ]; then
    LATENCY="${2:-5}"
else
    LATENCY="${2:-10}"
fi
NLP_CAPACITY=100
NODES=4
CAPACITY=8
SIM="$ROOT/build/cofi-sim"
WORK="$(mktemp -d)"
SIM_PID=""

cleanup() {
    [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$SIM" ] || { echo "floor: $SIM missing: run scripts/build.sh" >&2; exit 2; }
command -v wrk >/dev/null || { echo "floor: wrk missing: run scripts/deps.sh --bench" >&2; exit 2; }

# A free range of loopback ports: NODES consecutive node ports, then the NLP API's.
BASE="$(python3 - "$((NODES + 1))" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    base = random.randint(20000, 30000)
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    break
EOF
)"
NLP=$((BASE + NODES))
"$SIM" --nodes "$NODES" --base-port "$BASE" --nlp-port "$NLP" --node-capacity "$CAPACITY" \
    --nlp-capacity "$NLP_CAPACITY" --latency-ms "default=$LATENCY" --log-level warn >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$((BASE + NODES - 1))/health" >/dev/null 2>&1 && break
    sleep 0.05
done

echo "$(date -u +%FT%TZ) $(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg) before"
if [ "$NLP_ONLY" = 1 ]; then
    # The NLP API checks the transcript and language against the call: take them from a
    # node, through the mediator stages in order, as cofid would.
    printf 'RIFF' >"$WORK/a.wav"
    curl -sf -F call_id=7 -F "file=@$WORK/a.wav" -H 'Expect:' -H 'Idempotency-Key: 7:distribute' \
        -H 'X-Request-Id: floor' "http://127.0.0.1:$BASE/upload" >"$WORK/upload.json"
    python3 - "$BASE" "$WORK/upload.json" >"$WORK/nlp.lua" <<'PY'
import json, sys, urllib.request
base, name = sys.argv[1], json.load(open(sys.argv[2]))["file_name"]
prev = {}
for stage in ("denoise", "ivr", "lid", "stt"):
    body = json.dumps({"call_id": "7", "batch_id": 1, "file_name": name, "stage": stage,
                       "previous": prev}).encode()
    req = urllib.request.Request("http://127.0.0.1:%s/%s" % (base, stage), data=body, headers={
        "Content-Type": "application/json", "Idempotency-Key": "7:" + stage,
        "X-Request-Id": "floor"})
    prev[stage] = json.load(urllib.request.urlopen(req))
body = json.dumps({"call_id": "7", "batch_id": 1, "language": prev["lid"]["language"],
                   "transcript": prev["stt"]["transcript"]}, separators=(",", ":"))
print('wrk.method = "POST"')
print("wrk.body = %s" % json.dumps(body))
print('wrk.headers["Content-Type"] = "application/json"')
print('wrk.headers["Idempotency-Key"] = "7:llm1"')
print('wrk.headers["X-Request-Id"] = "floor"')
PY
    # Two wrk threads of 50 connections: never more than the API's 100 slots in flight.
    wrk -t2 -c"$NLP_CAPACITY" -d"${DURATION}s" -s "$WORK/nlp.lua" \
        "http://127.0.0.1:$NLP/llm1" >"$WORK/wrk-nlp.txt" 2>&1
    python3 - "$WORK/wrk-nlp.txt" "$NLP_CAPACITY" "$LATENCY" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
cap, lat = int(sys.argv[2]), float(sys.argv[3])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"Latency\s+([\d.]+)(us|ms|s)", text)
ms = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
ideal = cap * 1000.0 / lat
print("nlp: %.1f requests/s of %.1f possible (%d slots / %.3g ms), mean latency %.2f ms, "
      "%s non-2xx: efficiency ceiling %.3f"
      % (rps, ideal, cap, lat, ms, bad.group(1) if bad else "0", rps / ideal))
PY
    exit 0
fi
printf 'RIFF' >"$WORK/a.wav"
for i in $(seq 0 $((NODES - 1))); do
    port=$((BASE + i))
    name="$(curl -sf -F call_id=7 -F "file=@$WORK/a.wav" -H 'Expect:' \
        -H 'Idempotency-Key: 7:distribute' -H 'X-Request-Id: floor' \
        "http://127.0.0.1:$port/upload" | python3 -c 'import json,sys; print(json.load(sys.stdin)["file_name"])')"
    cat >"$WORK/w$i.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"call_id":"7","batch_id":1,"file_name":"$name","stage":"denoise","previous":{}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = "7:denoise"
wrk.headers["X-Request-Id"] = "floor"
EOF
done
for i in $(seq 0 $((NODES - 1))); do
    wrk -t1 -c"$CAPACITY" -d"${DURATION}s" -s "$WORK/w$i.lua" \
        "http://127.0.0.1:$((BASE + i))/denoise" >"$WORK/wrk$i.txt" 2>&1 &
done
# shellcheck disable=SC2046 # one pid a word, on purpose
wait $(jobs -p | grep -v "^$SIM_PID\$")

python3 - "$WORK" "$NODES" "$CAPACITY" "$LATENCY" <<'EOF'
import re, sys
work, nodes, cap, lat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
total = 0.0
lats = []
for i in range(nodes):
    text = open("%s/wrk%d.txt" % (work, i)).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    m = re.search(r"Latency\s+([\d.]+)(us|ms|s)", text)
    ms = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    total += rps
    lats.append(ms)
    print("node-%d: %.1f requests/s, mean latency %.2f ms" % (i, rps, ms))
ideal = nodes * cap * 1000.0 / lat
print("all nodes: %.1f requests/s of %.1f possible (%d slots / %.3g ms): efficiency ceiling %.3f"
      % (total, ideal, nodes * cap, lat, total / ideal))
EOF
