#!/usr/bin/env bash
# Installs what cofi needs to build, test and demo on Debian 12, with apt, and only what is
# missing: on a ready machine it does no apt work at all. Uses sudo only when not root.
# Also checks the python that will run the integration tests (see cofi_pick_python in
# scripts/lib.sh) and prints it as COFI_PYTHON=... on stdout.
set -euo pipefail

COFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COFI_SCRIPT=deps
# shellcheck source=scripts/lib.sh
. "$COFI_ROOT/scripts/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/deps.sh [--bench] [--help]

Installs the Debian packages cofi needs (checked with dpkg first; apt-get update runs only
when something is missing):
  build-essential cmake pkg-config libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev
  libpq-dev libcmocka-dev postgresql-15 postgresql-contrib curl python3 git cppcheck
  clang-format shellcheck clang (libFuzzer, for scripts/fuzz.sh) openssl (the TLS test)
  prometheus (its server and promtool scrape GET /metrics in an integration test)
and makes sure a python3 can import jsonschema (and, if available, openapi_spec_validator)
for the integration tests: if neither python3 on PATH nor /usr/bin/python3 can, it
installs python3-jsonschema. The last line on stdout is COFI_PYTHON=<that python>, which
scripts/build.sh hands to cmake.

  --bench   also install wrk and python3-matplotlib (for bench/)
  --help    show this help
EOF
}

bench=0
while [ "$#" -gt 0 ]; do
    case "$1" in
    --bench) bench=1 ;;
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

SUDO=()
if ! cofi_is_root; then
    command -v sudo >/dev/null 2>&1 || cofi_die "not root and no sudo: run as root"
    SUDO=(sudo)
fi

# True when Debian package $1 is installed.
installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

updated=0
apt_update_once() {
    if [ "$updated" -eq 0 ]; then
        cofi_say "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        updated=1
    fi
}

apt_install() {
    apt_update_once
    cofi_say "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@"
}

# True when apt knows a real (installable) package by that name.
apt_has() {
    apt-cache show "$1" >/dev/null 2>&1
}

wanted=(build-essential cmake pkg-config libmicrohttpd-dev libcurl4-openssl-dev
    libjansson-dev libpq-dev libcmocka-dev postgresql-15 curl python3 git cppcheck
    clang-format shellcheck clang openssl prometheus)
if [ "$bench" -eq 1 ]; then
    wanted+=(wrk python3-matplotlib)
fi

missing=()
for p in "${wanted[@]}"; do
    installed "$p" || missing+=("$p")
done

# pg_stat_statements: shipped inside postgresql-15 on Debian 12 (postgresql-contrib is a
# metapackage there); other releases had postgresql-contrib-15.
PGSS=/usr/share/postgresql/15/extension/pg_stat_statements.control
if [ ! -e "$PGSS" ] && ! installed postgresql-contrib-15 && ! installed postgresql-contrib; then
    apt_update_once
    if apt_has postgresql-contrib-15; then
        missing+=(postgresql-contrib-15)
    else
        missing+=(postgresql-contrib)
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# The python for the tests.
py="$(cofi_pick_python || true)"
if [ -z "$py" ] || ! cofi_python_basic "$py"; then
    if ! installed python3-jsonschema; then
        apt_install python3-jsonschema
    fi
    if ! installed python3-openapi-spec-validator; then
        apt_update_once
        if apt_has python3-openapi-spec-validator; then
            apt_install python3-openapi-spec-validator
        fi
    fi
    py="$(cofi_pick_python)"
fi
if ! cofi_python_basic "$py"; then
    cofi_die "no python3 here can import jsonschema"
fi
if ! cofi_python_full "$py"; then
    cofi_say "warning: $py cannot import openapi_spec_validator (Debian 12 has no package" \
        "for it); tests that need it will fail or skip"
fi

if [ "${#missing[@]}" -gt 0 ]; then
    cofi_say "installed: ${missing[*]}"
else
    cofi_say "all packages present"
fi
printf 'COFI_PYTHON=%s\n' "$py"
