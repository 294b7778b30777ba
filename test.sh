#!/usr/bin/env bash
# The whole test suite, on a bare machine too: installs what it needs (./setup.sh --no-run), then pytest.
# Integration tests run against the real Docker engine, Chroma, embedding model and llama.cpp build.
# Pass pytest arguments through, e.g. ./test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-run
exec .venv/bin/pytest "$@"
