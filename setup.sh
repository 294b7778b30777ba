#!/usr/bin/env bash
# One command on a bare machine: install readfirst and everything it needs, then run the main job.
#   ./setup.sh            install, then `readfirst run` (offline when no ANTHROPIC_API_KEY)
#   ./setup.sh --no-run   install only (the test command uses this)
# Idempotent: a second run reuses the venv, the Docker engine, the base image and the cached builds.
set -euo pipefail
cd "$(dirname "$0")"

run_main=1
[ "${1:-}" = "--no-run" ] && run_main=0

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

if ! command -v python3 >/dev/null; then
  echo "python3 (3.11+) is required" >&2; exit 1
fi
# git: sources, experiments and forks are all git repositories.
if ! command -v git >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "git is missing; install it (as root: apt-get install -y git)" >&2; exit 1; }
  say "installing git"; apt-get update -qq && apt-get install -y -qq git >/dev/null
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "python3-venv is missing; install it (as root: apt-get install -y python3-venv)" >&2; exit 1; }
  say "installing python3-venv"; apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment (.venv)"
  python3 -m venv .venv
fi
# torch first and pinned: an unpinned one pulled by sentence-transformers brings GBs of CUDA packages.
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  say "installing torch 2.13.0 (CPU)"
  .venv/bin/pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
fi
say "installing readfirst and its dependencies"
.venv/bin/pip install -q -e '.[test,ray]' 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c 'import readfirst' || { echo "the install failed" >&2; exit 1; }

# Docker engine (installed and started when none answers), base image, llama.cpp source.
.venv/bin/readfirst setup

if [ "$run_main" = 1 ]; then
  # A short run of the loop: read ik_llama.cpp's CPU code (ggml.c and ggml-quants.c, where it keeps upstream's
  # ggml-cpu functions, its iqk kernels and its llamafile sgemm) against llama.cpp, then six experiments: half of them ports of the
  # fork's functions, half the build and runtime settings the profile suggests. Without an API key the offline
  # policy runs real experiments with no LLM.
  mode=()
  [ -n "${ANTHROPIC_API_KEY:-}" ] || mode=(--offline)
  args=("${mode[@]}" --fork ik_llama.cpp --fork-subdir ggml/src/ggml.c --fork-subdir ggml/src/ggml-quants.c
        --fork-subdir ggml/src/iqk --fork-subdir ggml/src/llamafile --budget-experiments 6)
  say "running the main job: readfirst run ${args[*]}"
  exec .venv/bin/readfirst run "${args[@]}"
fi
