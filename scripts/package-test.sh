#!/usr/bin/env bash
# Builds the Debian package with CPack from a build folder, installs it, checks what it
# installed and removes it again (docs/PACKAGING.md). scripts/test.sh runs it as its `package`
# step. Exits non-zero on the first check that fails, saying which.
set -euo pipefail

COFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COFI_SCRIPT="package-test"
# shellcheck source=scripts/lib.sh
. "$COFI_ROOT/scripts/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/package-test.sh [--build-dir DIR] [--extract | --install] [--help]

Runs cpack (DEB) in DIR (default build/, configured and built already: scripts/build.sh),
checks the package's control data (Depends, conffiles) and then installs it:
  --install   with `dpkg -i` (the default when running as root and no package named cofi
              is installed already), then `dpkg --purge` at the end
  --extract   with `dpkg -x` into a throwaway folder (the default otherwise)
and checks: the programs, the unit, the example configuration and the docs are where they
belong; `cofid --help`, `cofi --help` and `cofi-sim --help` run from the installed paths and
find their libraries; the example configuration passes `cofid --check-config` (with its
input_root pointed at an existing folder); `systemd-analyze verify` accepts the unit when
systemd-analyze is there.
EOF
}

build_dir="$COFI_ROOT/build"
mode=""
while [ "$#" -gt 0 ]; do
    case "$1" in
    --build-dir)
        [ "$#" -ge 2 ] || cofi_die "--build-dir needs a value"
        build_dir="$2"
        shift
        ;;
    --extract) mode=extract ;;
    --install) mode=install ;;
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

[ -f "$build_dir/CPackConfig.cmake" ] || cofi_die "$build_dir is not a configured build folder"
if [ -z "$mode" ]; then
    mode=extract
    if cofi_is_root && ! dpkg-query -W cofi >/dev/null 2>&1; then
        mode=install
    fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/cofi-package-test.XXXXXX")"
installed=0
cleanup() {
    if [ "$installed" -eq 1 ]; then
        dpkg --purge cofi >/dev/null 2>&1 || cofi_say "dpkg --purge cofi failed"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    cofi_say "FAIL: $*"
    exit 1
}

# 1. The package.
cofi_say "cpack in ${build_dir}"
rm -rf "$build_dir/packages"
(cd "$build_dir" && cpack -G DEB >"$work/cpack.log" 2>&1) || {
    cat "$work/cpack.log" >&2
    fail "cpack failed"
}
debs=("$build_dir"/packages/cofi_*.deb)
[ -f "${debs[0]}" ] || fail "no cofi_*.deb in $build_dir/packages"
deb="${debs[0]}"
cofi_say "built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB)"

# 2. Its control data.
depends="$(dpkg-deb -f "$deb" Depends)"
for lib in libmicrohttpd12 libcurl4 libjansson4 libpq5; do
    grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib: $depends"
done
mkdir -p "$work/control"
dpkg-deb -e "$deb" "$work/control"
for f in /etc/cofi/cofid.json /etc/cofi/cofid.env; do
    grep -qx "$f" "$work/control/conffiles" || fail "$f is not a conffile"
done

# 3. Installed.
root=""
if [ "$mode" = install ]; then
    # Two runs of the suite on one machine install one after the other.
    exec 9>"${TMPDIR:-/tmp}/cofi-package-test.lock"
    flock -w 300 9 || fail "another package test holds ${TMPDIR:-/tmp}/cofi-package-test.lock"
    cofi_say "dpkg -i $(basename "$deb")"
    installed=1
    dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || {
        cat "$work/dpkg.log" >&2
        fail "dpkg -i failed"
    }
    dpkg-query -W -f='${db:Status-Status}' cofi | grep -qx installed || fail "cofi not installed"
fi
if [ "$mode" = extract ]; then
    root="$work/root"
    cofi_say "dpkg -x $(basename "$deb") into a throwaway root"
    dpkg -x "$deb" "$root"
fi

for f in /usr/bin/cofid /usr/bin/cofi /usr/bin/cofi-sim; do
    [ -x "$root$f" ] || fail "$f is missing or not executable"
    if ldd "$root$f" | grep -q 'not found'; then
        fail "$f: a library is missing: $(ldd "$root$f" | grep 'not found')"
    fi
done
for f in /lib/systemd/system/cofid.service /etc/cofi/cofid.json /etc/cofi/cofid.env \
    /usr/share/doc/cofi/README.md /usr/share/doc/cofi/PACKAGING.md \
    /usr/share/doc/cofi/openapi.json; do
    [ -f "$root$f" ] || fail "$f is missing"
done

for prog in cofid cofi cofi-sim; do
    "$root/usr/bin/$prog" --help >"$work/$prog.help" 2>&1 || fail "$prog --help exited non-zero"
    grep -qi usage "$work/$prog.help" || fail "$prog --help printed no usage"
done
mkdir -p "$work/calls"
sed "s#/srv/cofi/calls#$work/calls#" "$root/etc/cofi/cofid.json" >"$work/cofid.json"
"$root/usr/bin/cofid" --config "$work/cofid.json" --check-config >/dev/null ||
    fail "the example configuration does not pass cofid --check-config"

unit="$root/lib/systemd/system/cofid.service"
grep -qx 'Type=notify' "$unit" || fail "the unit is not Type=notify"
if command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$mode" = install ]; then
        systemd-analyze verify "$unit" >"$work/verify.log" 2>&1 || {
            cat "$work/verify.log" >&2
            fail "systemd-analyze verify rejects the unit"
        }
    else
        # Not installed: a copy of the unit whose programs are the extracted ones.
        mkdir -p "$work/unit"
        sed "s#/usr/bin/#$root/usr/bin/#g" "$unit" >"$work/unit/cofid.service"
        systemd-analyze verify "$work/unit/cofid.service" >"$work/verify.log" 2>&1 || {
            cat "$work/verify.log" >&2
            fail "systemd-analyze verify rejects the unit"
        }
    fi
    cofi_say "systemd-analyze verify: ok"
else
    cofi_say "systemd-analyze not found: unit not verified"
fi

# 4. Removed.
if [ "$mode" = install ]; then
    dpkg --purge cofi >"$work/dpkg.log" 2>&1 || {
        cat "$work/dpkg.log" >&2
        fail "dpkg --purge failed"
    }
    installed=0
    for f in /usr/bin/cofid /usr/bin/cofi /lib/systemd/system/cofid.service /etc/cofi/cofid.json; do
        [ ! -e "$f" ] || fail "$f is still there after dpkg --purge"
    done
fi
cofi_say "ok: $(basename "$deb") ($mode) has every file, runs and is removed cleanly"
