# shellcheck shell=bash
# Helpers shared by the scripts in scripts/: messages, the repo root, short hashes, the
# python that runs the tests, and finding/stopping this repo's own processes by pid.
# Sourced, never run. Every script sets COFI_ROOT before sourcing this file.

: "${COFI_ROOT:?COFI_ROOT must be set before sourcing scripts/lib.sh}"

# Prints a message prefixed with the script's name on stderr.
cofi_say() {
    printf '[%s] %s\n' "${COFI_SCRIPT:-cofi}" "$*" >&2
}

# Prints a message and exits 1.
cofi_die() {
    cofi_say "error: $*"
    exit 1
}

# Prints the first 8 hex digits of the SHA-1 of its argument: a short, stable tag.
cofi_hash() {
    printf '%s' "$1" | sha1sum | cut -c1-8
}

# True when running as root.
cofi_is_root() {
    [ "$(id -u)" -eq 0 ]
}

# True when python $1 can import the modules the integration tests use.
cofi_python_full() {
    "$1" -c 'import jsonschema, openapi_spec_validator' >/dev/null 2>&1
}

# True when python $1 can import at least jsonschema.
cofi_python_basic() {
    "$1" -c 'import jsonschema' >/dev/null 2>&1
}

# Prints the real path of the python that should run the tests: $COFI_PYTHON if set;
# else the first of (python3 on PATH, /usr/bin/python3) that imports jsonschema and
# openapi_spec_validator; else the first that imports jsonschema; else python3 on PATH.
# pyenv shims are resolved to the interpreter itself (sys.executable).
cofi_pick_python() {
    if [ -n "${COFI_PYTHON:-}" ]; then
        printf '%s\n' "$COFI_PYTHON"
        return 0
    fi
    local candidates=() c
    c="$(command -v python3 || true)"
    [ -n "$c" ] && candidates+=("$c")
    [ -x /usr/bin/python3 ] && candidates+=(/usr/bin/python3)
    [ "${#candidates[@]}" -gt 0 ] || return 1
    for c in "${candidates[@]}"; do
        if cofi_python_full "$c"; then
            "$c" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    for c in "${candidates[@]}"; do
        if cofi_python_basic "$c"; then
            "$c" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    "${candidates[0]}" -c 'import sys; print(sys.executable)'
}

# Prints the pids of running processes whose executable is one of the given files
# (matched by /proc/PID/exe, so only this repo's own binaries, never by name).
cofi_pids_of_exe() {
    local want=() f p exe
    for f in "$@"; do
        [ -e "$f" ] && want+=("$(readlink -f "$f")")
    done
    [ "${#want[@]}" -gt 0 ] || return 0
    for p in /proc/[0-9]*; do
        exe="$(readlink "$p/exe" 2>/dev/null || true)"
        [ -n "$exe" ] || continue
        exe="${exe% (deleted)}"
        for f in "${want[@]}"; do
            if [ "$exe" = "$f" ]; then
                printf '%s\n' "${p#/proc/}"
            fi
        done
    done
}

# Sends SIGTERM to each pid, waits up to $1 seconds for all to exit, then SIGKILLs the rest.
cofi_stop_pids() {
    local grace="$1" p deadline alive
    shift
    [ "$#" -gt 0 ] || return 0
    for p in "$@"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    deadline=$((SECONDS + grace))
    while :; do
        alive=()
        for p in "$@"; do
            kill -0 "$p" 2>/dev/null && alive+=("$p")
        done
        [ "${#alive[@]}" -gt 0 ] || return 0
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.2
    done
    for p in "${alive[@]}"; do
        cofi_say "pid $p did not exit within ${grace}s: SIGKILL"
        kill -KILL "$p" 2>/dev/null || true
    done
}
