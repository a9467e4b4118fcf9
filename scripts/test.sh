#!/usr/bin/env bash
# Runs every test: installs what they need (once) into .venv (newest IPython, TensorFlow on the
# CPU, JAX, PyTorch CPU) and .venv-ipython7 (Colab's IPython 7.34 and ipykernel 6.17.1), then
# runs the whole suite in the first and the core tests in the second. GPU tests skip here; run
# them on a GPU machine with: KERAS_BACKEND=jax python -m pytest -m gpu tests
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
export PIP_DISABLE_PIP_VERSION_CHECK=1 TF_CPP_MIN_LOG_LEVEL=2

# The browser test drives JupyterLab in Debian's chromium (Playwright cannot download one here).
if ! command -v chromium >/dev/null; then
  echo "== installing Debian's chromium for the browser test"
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi

echo "== newest IPython, with TensorFlow, JAX and PyTorch on the CPU"
make_venv .venv -e ".[test,cpu]" jax "torch==2.13.0" jupyterlab playwright
.venv/bin/python -m pytest "$@"

echo "== Colab's IPython 7.34 and ipykernel 6.17.1: the core tests"
make_venv .venv-ipython7 -e ".[test]" "ipython==7.34.0" "ipykernel==6.17.1" jax
.venv-ipython7/bin/python -m pytest -m "not tensorflow" \
  tests/test_magic.py tests/test_policy.py tests/test_nvml.py tests/test_sizes.py tests/test_layout.py \
  tests/test_notebook.py tests/test_hardening.py tests/test_files.py tests/test_interrupts.py \
  tests/test_panel.py "$@"
