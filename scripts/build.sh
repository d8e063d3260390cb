#!/usr/bin/env bash
# Configures and builds cofi with cmake: build/ (RelWithDebInfo), build-asan/ (AddressSanitizer
# + UndefinedBehaviorSanitizer) or build-tsan/ (ThreadSanitizer). Prints the binaries' paths.
set -euo pipefail

COFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COFI_SCRIPT=build
# shellcheck source=scripts/lib.sh
. "$COFI_ROOT/scripts/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/build.sh [--sanitize | --tsan] [--werror] [--help]

  (none)       build into build/
  --sanitize   ASan + UBSan build into build-asan/ (-DCOFI_SANITIZE=ON)
  --tsan       TSan build into build-tsan/ (-DCOFI_TSAN=ON)
  --werror     warnings are errors (-DCOFI_WERROR=ON)

The python used by the integration tests is $COFI_PYTHON when set, else the one
scripts/deps.sh reports; it is passed to cmake as -DPython3_EXECUTABLE.
Prints the paths of cofid and cofi-sim on stdout.
EOF
}

variant=plain
werror=OFF
while [ "$#" -gt 0 ]; do
    case "$1" in
    --sanitize) variant=asan ;;
    --tsan) variant=tsan ;;
    --werror) werror=ON ;;
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

sanitize=OFF
tsan=OFF
case "$variant" in
plain) bdir="$COFI_ROOT/build" ;;
asan)
    bdir="$COFI_ROOT/build-asan"
    sanitize=ON
    ;;
tsan)
    bdir="$COFI_ROOT/build-tsan"
    tsan=ON
    ;;
esac

py="$(cofi_pick_python || true)"
pyargs=()
[ -z "$py" ] || pyargs=("-DPython3_EXECUTABLE=$py")

mkdir -p "$bdir"
cofi_say "configure $bdir (werror=$werror sanitize=$sanitize tsan=$tsan)"
cmake -S "$COFI_ROOT" -B "$bdir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCOFI_WERROR="$werror" -DCOFI_SANITIZE="$sanitize" -DCOFI_TSAN="$tsan" \
    "${pyargs[@]}" >"$bdir/configure.log" 2>&1 || {
    cat "$bdir/configure.log" >&2
    cofi_die "cmake configure failed"
}
cofi_say "build with $(nproc) jobs"
cmake --build "$bdir" -j"$(nproc)"

for b in cofid cofi-sim; do
    [ -x "$bdir/$b" ] || cofi_die "$bdir/$b was not built"
    printf '%s\n' "$bdir/$b"
done
