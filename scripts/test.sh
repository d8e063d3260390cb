#!/usr/bin/env bash
# Everything CI checks, in one command (.ci/run calls only this): installs what is missing,
# builds with warnings as errors, starts a private PostgreSQL, runs every test with ctest,
# again under AddressSanitizer + UndefinedBehaviorSanitizer, the concurrency tests under
# ThreadSanitizer, the libFuzzer targets for a bounded time, then cppcheck, clang-format, and
# the shell scripts checked. Ends with a summary whose last line is
# "N passed, N failed" (ctest's counts over all passes); exits non-zero if any step failed.
set -euo pipefail

COFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COFI_SCRIPT="test"
# shellcheck source=scripts/lib.sh
. "$COFI_ROOT/scripts/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/test.sh [--quick] [--no-tsan] [-R REGEX] [--help]

Steps: scripts/deps.sh; scripts/build.sh --werror; scripts/pg.sh start --fast (data in
.cofi/test-pg, port 25433 or $COFI_TEST_PG_PORT); ctest on build/; scripts/package-test.sh
(the Debian package built, installed, checked, removed); scripts/build.sh
--sanitize --werror and ctest on build-asan/ (ASAN_OPTIONS=detect_leaks=1:abort_on_error=1,
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1); scripts/build.sh --tsan --werror and the
tests labelled `concurrency` on build-tsan/ (TSAN_OPTIONS=halt_on_error=1: a race ends cofid,
so the test fails); scripts/fuzz.sh (every libFuzzer target of tests/fuzz over its seed
corpus, $COFI_FUZZ_SECONDS seconds each, default 20; scripts/fuzz.sh --seconds N runs them
longer on demand); cppcheck; clang-format --dry-run; shellcheck of the shell scripts.
The cluster is stopped at the end, and any cofid/cofi-sim of this repo's build folders
that the tests left running is killed. Logs: .cofi/test/.

  --quick     skip the sanitizer passes (ASan+UBSan and TSan) and the fuzzers
  --no-tsan   skip the ThreadSanitizer pass
  -R REGEX    passed to ctest: run only the tests whose name matches
  --help      show this help

Run one test: scripts/test.sh --quick -R it.test_pipeline
EOF
}

quick=0
tsan=1
ctest_filter=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --no-tsan) tsan=0 ;;
    --tsan) tsan=1 ;;
    -R)
        [ "$#" -ge 2 ] || cofi_die "-R needs a value"
        ctest_filter=(-R "$2")
        shift
        ;;
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

LOGS="$COFI_ROOT/.cofi/test"
PG_DIR="$COFI_ROOT/.cofi/test-pg"
PG_PORT="${COFI_TEST_PG_PORT:-25433}"
mkdir -p "$LOGS"

step_names=()
step_results=()
passed_total=0
failed_total=0
pg_started=0

record() {
    step_names+=("$1")
    step_results+=("$2")
    printf '\n[test] ---- %s: %s\n\n' "$1" "$2" >&2
}

banner() {
    printf '\n[test] ==== %s\n' "$*" >&2
}

# Runs a step; records pass or FAIL. Returns the step's status.
step() {
    local name="$1" rc=0
    shift
    banner "$name: $*"
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        record "$name" pass
    else
        record "$name" "FAIL (exit $rc)"
    fi
    return "$rc"
}

# Runs ctest in build dir $2 as step $1 (further arguments go to ctest) and adds its counts.
run_ctest() {
    local name="$1" bdir="$2" rc=0 line total=0 failed=0
    shift 2
    local log="$LOGS/$name.log"
    banner "$name: ctest in ${bdir#"$COFI_ROOT"/}"
    set +e
    ctest --test-dir "$bdir" --output-on-failure -j2 --timeout 600 \
        "${ctest_filter[@]}" "$@" </dev/null 2>&1 | tee "$log"
    rc="${PIPESTATUS[0]}"
    set -e
    line="$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)"
    if [ -n "$line" ]; then
        total="${line##* out of }"
        failed="$(printf '%s' "$line" | sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/')"
    fi
    passed_total=$((passed_total + total - failed))
    failed_total=$((failed_total + failed))
    if [ "$total" -eq 0 ] && [ "$rc" -eq 0 ]; then
        if [ "${allow_empty:-0}" -eq 1 ]; then
            record "$name" "skipped (no test selected)"
            return 0
        fi
        rc=1
        echo "[test] no test ran in ${bdir#"$COFI_ROOT"/}" >&2
    fi
    if [ "$rc" -eq 0 ]; then
        record "$name" "pass ($((total - failed)) passed, $failed failed)"
    else
        record "$name" "FAIL ($((total - failed)) passed, $failed failed; log ${log#"$COFI_ROOT"/})"
    fi
    return 0
}

# Stops the cluster and the processes the tests left behind; runs once (before the summary,
# or from the EXIT trap when the script is interrupted).
torn_down=0
teardown() {
    [ "$torn_down" -eq 0 ] || return 0
    torn_down=1
    if [ "$pg_started" -eq 1 ]; then
        bash "$COFI_ROOT/scripts/pg.sh" stop --dir "$PG_DIR" >/dev/null 2>&1 || true
    fi
    # Processes of this repo's binaries that tests left behind; never the demo's.
    local keep=() p strays=()
    for p in "$COFI_ROOT"/.cofi/demo/*.pid; do
        [ -f "$p" ] && keep+=("$(cat "$p")")
    done
    local b
    while read -r p; do
        [ -n "$p" ] || continue
        for b in "${keep[@]}"; do
            [ "$p" = "$b" ] && continue 2
        done
        strays+=("$p")
    done < <(cofi_pids_of_exe "$COFI_ROOT"/build*/cofid "$COFI_ROOT"/build*/cofi-sim)
    if [ "${#strays[@]}" -gt 0 ]; then
        echo "[test] killing processes the tests left running: ${strays[*]}" >&2
        cofi_stop_pids 5 "${strays[@]}"
    fi
}
cleanup() {
    local rc=$?
    teardown
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_time=$SECONDS

# 1. Dependencies.
step deps bash "$COFI_ROOT/scripts/deps.sh" || true
COFI_PYTHON="$(cofi_pick_python || true)"
export COFI_PYTHON

# 2. Build with warnings as errors.
built=0
if step build bash "$COFI_ROOT/scripts/build.sh" --werror; then
    built=1
fi

# 3. PostgreSQL for the integration tests.
pg_ok=0
pg_start() {
    pg_started=1
    bash "$COFI_ROOT/scripts/pg.sh" start --dir "$PG_DIR" --port "$PG_PORT" --fast --reset
}
if step postgres pg_start; then
    pg_ok=1
    eval "$(bash "$COFI_ROOT/scripts/pg.sh" env --dir "$PG_DIR" --port "$PG_PORT")"
    export COFI_DATABASE_URL COFI_TEST_PGHOST COFI_TEST_PGPORT COFI_TEST_PGUSER
fi

# 4. The tests.
if [ "$built" -eq 1 ] && [ "$pg_ok" -eq 1 ]; then
    run_ctest ctest "$COFI_ROOT/build"
else
    record ctest "skipped (build or postgres failed)"
fi

# 4b. The Debian package (scripts/package-test.sh): built by CPack from build/, installed
#     (dpkg -i as root, else dpkg -x into a throwaway root), checked, removed.
if [ "$built" -eq 1 ]; then
    step package bash "$COFI_ROOT/scripts/package-test.sh" --build-dir "$COFI_ROOT/build" || true
else
    record package "skipped (build failed)"
fi

# 5. The sanitizer pass.
sanitized() {
    local libs
    libs="$(ldd "$COFI_ROOT/build-asan/cofid")" || return 1
    grep -q 'libasan' <<<"$libs" && grep -q 'libubsan' <<<"$libs"
}
if [ "$quick" -eq 0 ]; then
    if step build-asan bash "$COFI_ROOT/scripts/build.sh" --sanitize --werror &&
        step asan-linked sanitized && [ "$pg_ok" -eq 1 ]; then
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            run_ctest ctest-asan "$COFI_ROOT/build-asan"
    else
        record ctest-asan "skipped (sanitizer build or postgres failed)"
    fi
    if [ "$tsan" -eq 1 ]; then
        if step build-tsan bash "$COFI_ROOT/scripts/build.sh" --tsan --werror &&
            [ "$pg_ok" -eq 1 ]; then
            TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 allow_empty=1 \
                run_ctest ctest-tsan "$COFI_ROOT/build-tsan" -L concurrency
        else
            record ctest-tsan "skipped (tsan build or postgres failed)"
        fi
    fi
fi

# 5b. The fuzzers, for a bounded time.
if [ "$quick" -eq 0 ]; then
    step fuzz bash "$COFI_ROOT/scripts/fuzz.sh" --seconds "${COFI_FUZZ_SECONDS:-20}" || true
fi

# 6. Static analysis.
run_cppcheck() {
    local d dirs=()
    for d in common server handlers pipeline db sim bench cli; do
        [ -d "$COFI_ROOT/$d" ] && dirs+=("$d")
    done
    (cd "$COFI_ROOT" && cppcheck --enable=warning,performance,portability --error-exitcode=1 \
        -q --inline-suppr --suppress=missingIncludeSystem -j "$(nproc)" -I. "${dirs[@]}")
}
run_clang_format() {
    local files=()
    if git -C "$COFI_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        mapfile -d '' files < <(git -C "$COFI_ROOT" ls-files -z -- '*.c' '*.h')
    else
        mapfile -d '' files < <(cd "$COFI_ROOT" && find common server handlers pipeline db \
            sim bench tests -name '*.[ch]' -print0 2>/dev/null)
    fi
    [ "${#files[@]}" -gt 0 ] || return 0
    (cd "$COFI_ROOT" && clang-format --dry-run --Werror "${files[@]}")
}
run_shellcheck() {
    # -x follows the scripts' "source" of scripts/lib.sh; warnings and errors fail.
    (cd "$COFI_ROOT" && shellcheck -x -S warning scripts/*.sh bench/*.sh .ci/run)
}
step cppcheck run_cppcheck || true
step clang-format run_clang_format || true
step shellcheck run_shellcheck || true

# 7. Summary.
teardown
any_failed=0
printf '\n==== summary (%d s) ====\n' "$((SECONDS - start_time))"
for i in "${!step_names[@]}"; do
    printf '%-14s %s\n' "${step_names[$i]}" "${step_results[$i]}"
    case "${step_results[$i]}" in
    FAIL*) any_failed=1 ;;
    esac
done
printf '%d passed, %d failed\n' "$passed_total" "$failed_total"
[ "$any_failed" -eq 0 ] && [ "$failed_total" -eq 0 ]
