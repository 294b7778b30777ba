#!/usr/bin/env bash
# The whole test suite, on a bare machine too: installs what it needs (./setup.sh --no-run), then pytest.
# Integration tests run against the real Docker engine, Chroma, embedding model and llama.cpp build.
# Pass pytest arguments through, e.g. ./test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-run
# The run page's browser tests (tests/chromium_page.py) open it in Debian's Chromium: installed when missing
# (without root they skip, and fail under CI).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    printf '\033[1m==>\033[0m %s\n' "installing chromium (the page's browser tests)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: the browser tests skip (as root: apt-get install -y chromium)" >&2
  fi
fi
# SkyPilot's own parser checks deploy/skypilot-ray.yaml; SkyPilot pins older click, bcrypt and uvicorn than the
# project's venv has, so it lives in a venv of its own, kept in the data directory and reused.
if [ -z "${READFIRST_SKY_PYTHON:-}" ]; then
  sky_venv="${READFIRST_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/readfirst}/sky-venv"
  if ! "$sky_venv/bin/python" -c 'import sky' 2>/dev/null; then
    printf '\033[1m==>\033[0m %s\n' "installing SkyPilot into $sky_venv (the deploy file's parser test)" >&2
    python3 -m venv "$sky_venv" && "$sky_venv/bin/pip" install -q 'skypilot==0.14.*' 2>&1 | grep -v "is ignored" || true
  fi
  export READFIRST_SKY_PYTHON="$sky_venv/bin/python"
fi
exec .venv/bin/pytest "$@"
