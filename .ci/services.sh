#!/usr/bin/env bash
# What the tests need beyond Python packages: Debian's redis-server (the state store's
# Redis tests and the Ray guild test start their own on loopback; no service is started
# here). Installs it when missing (as root, or with sudo).
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    echo "[services] redis-server present: $(redis-server --version | cut -d' ' -f1-3)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[services] redis-server is missing and there is no apt-get here: install Redis" \
         "(a redis-server binary on PATH) and run again" >&2
    exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
    sudo="sudo"
fi
started=$(date +%s)
echo "[services] installing redis-server"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# (RUNLEVEL=1: the package's scripts do not start a system-wide server; tests start their own)
$sudo env RUNLEVEL=1 apt-get install -y -qq --no-install-recommends redis-server >/dev/null
echo "[services] redis-server installed in $(( $(date +%s) - started )) s:" \
     "$(redis-server --version | cut -d' ' -f1-3)"
