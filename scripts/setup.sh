#!/usr/bin/env bash
# Installs what this project needs and the machine lacks (Debian 12): the sqlite3 shell and headers,
# Python with pytest, Go modules for the Go example, iptables for fault injection. Idempotent: it
# installs nothing that is already there. Needs root (or sudo) only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

need_apt=()
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
[ -f /usr/include/sqlite3.h ] || need_apt+=(libsqlite3-dev)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v make >/dev/null || need_apt+=(make)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
command -v go >/dev/null || need_apt+=(golang-go)
command -v cargo >/dev/null || need_apt+=(cargo)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

PY=${PYTHON:-python3}
if ! $PY -c 'import pytest' 2>/dev/null; then
  echo "setup: installing pytest for $PY"
  $PY -m pip install -q pytest || $SUDO apt-get install -y -qq python3-pytest
fi

if [ -f examples/go/go.mod ] && command -v go >/dev/null; then
  (cd examples/go && go mod download)
fi
echo "setup: ok"
