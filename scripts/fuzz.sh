#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan + UBSan) into build-fuzz/ and runs
# each over its seed corpus in tests/fuzz/corpus/<target>/ for a bounded time. A finding (a
# crash, a sanitizer report, a leak) fails the run and leaves its input in build-fuzz/findings/.
set -euo pipefail

COFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COFI_SCRIPT=fuzz
# shellcheck source=scripts/lib.sh
. "$COFI_ROOT/scripts/lib.sh"

usage() {
    cat <<'EOF2'
Usage: scripts/fuzz.sh [--seconds N] [--target NAME] [--help]

  --seconds N    run each target for N seconds (default 20; longer on demand, e.g. 3600)
  --target NAME  run only this target (fuzz_body, fuzz_query, fuzz_headers, fuzz_router,
                 fuzz_config)

Needs clang with libFuzzer (Debian: clang). New inputs that reach new code are kept in
build-fuzz/corpus/<target>/ (the seeds in tests/fuzz/corpus/ are never written to);
findings go to build-fuzz/findings/<target>/.
EOF2
}

seconds=20
only=""
while [ "$#" -gt 0 ]; do
    case "$1" in
    --seconds)
        seconds="${2:?--seconds needs a number}"
        shift
        ;;
    --target)
        only="${2:?--target needs a name}"
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

command -v clang >/dev/null 2>&1 || cofi_die "clang is missing (scripts/deps.sh installs it)"
bdir="$COFI_ROOT/build-fuzz"
mkdir -p "$bdir"
cofi_say "configure $bdir (clang, libFuzzer, ASan + UBSan)"
CC=clang cmake -S "$COFI_ROOT" -B "$bdir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOFI_FUZZ=ON \
    -DCOFI_TESTS=OFF -DCOFI_WERROR=ON >"$bdir/configure.log" 2>&1 || {
    cat "$bdir/configure.log" >&2
    cofi_die "cmake configure failed"
}
targets=()
for src in "$COFI_ROOT"/tests/fuzz/fuzz_*.c; do
    name="$(basename "$src" .c)"
    if [ -z "$only" ] || [ "$only" = "$name" ]; then
        targets+=("$name")
    fi
done
[ "${#targets[@]}" -gt 0 ] || cofi_die "no fuzz target named $only"
cofi_say "build ${targets[*]}"
cmake --build "$bdir" -j"$(nproc)" --target "${targets[@]}"

failed=0
for t in "${targets[@]}"; do
    seeds="$COFI_ROOT/tests/fuzz/corpus/$t"
    work="$bdir/corpus/$t"
    findings="$bdir/findings/$t"
    mkdir -p "$work" "$findings"
    cofi_say "$t: ${seconds} s over $seeds"
    if ! ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$bdir/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$findings/" -print_final_stats=1 "$work" "$seeds" \
        >"$bdir/$t.log" 2>&1; then
        tail -40 "$bdir/$t.log" >&2
        cofi_say "$t: FINDING (log $bdir/$t.log, input in $findings/)"
        failed=1
    else
        cofi_say "$t: no finding ($(grep -c '' "$bdir/$t.log") log lines)"
    fi
done
exit "$failed"
