# Sourced by scripts/run and scripts/test: make .venv (once) and install the project
# into it (again only when pyproject.toml changed). Usage: ensure_venv [EXTRAS]
# (EXTRAS like "test" installs '.[test]').

pick_python() {
    local c
    for c in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 14)))' 2>/dev/null; then
            echo "$c"
            return 0
        fi
    done
    echo "steward: need Python 3.11, 3.12 or 3.13 (set PYTHON=/path/to/python)" >&2
    return 1
}

ensure_venv() {
    local extras="${1:-}" target="." stamp py hash
    if [ ! -x .venv/bin/python ]; then
        py="$(pick_python)" || return 1
        echo "steward: creating .venv with $("$py" --version 2>&1)" >&2
        "$py" -m venv .venv || return 1
    fi
    [ -n "$extras" ] && target=".[$extras]"
    hash="$(sha256sum pyproject.toml | cut -c1-16)"
    stamp=".venv/.steward-installed-${extras:-base}-$hash"
    # Any install of this pyproject.toml covers the base one; extras need their own.
    if [ -z "$extras" ] && compgen -G ".venv/.steward-installed-*-$hash" >/dev/null; then
        return 0
    fi
    if [ ! -e "$stamp" ]; then
        echo "steward: pip install -e '$target'" >&2
        .venv/bin/python -m pip install --quiet -e "$target" || return 1
        rm -f .venv/.steward-installed-"${extras:-base}"-*
        touch "$stamp"
    fi
}

# The Python client (clients/python) in the same venv, for its tests (again only when its
# pyproject.toml changed).
ensure_client() {
    local hash stamp
    hash="$(sha256sum clients/python/pyproject.toml | cut -c1-16)"
    stamp=".venv/.steward-client-installed-$hash"
    if [ ! -e "$stamp" ]; then
        echo "steward: pip install -e 'clients/python[cli]'" >&2
        .venv/bin/python -m pip install --quiet -e 'clients/python[cli]' || return 1
        rm -f .venv/.steward-client-installed-*
        touch "$stamp"
    fi
}

# A Chromium for the dashboard's browser tests (Playwright drives it; Playwright's own
# browser download needs the internet, so the system's package is used): Debian's
# `chromium`, installed with apt-get when it is missing and this runs as root. Set
# STEWARD_CHROMIUM to use another binary.
ensure_chromium() {
    local bin="${STEWARD_CHROMIUM:-/usr/bin/chromium}"
    [ -x "$bin" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "steward: apt-get install chromium (for the dashboard's browser tests)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null || {
            echo "steward: could not install chromium; the browser tests will fail" >&2
            return 0
        }
    else
        echo "steward: no Chromium at $bin and not root: install Debian's 'chromium' for the browser tests" >&2
    fi
}
