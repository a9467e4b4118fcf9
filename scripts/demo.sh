#!/usr/bin/env bash
# The demo: installs kmem_magic with Keras, CPU TensorFlow and Jupyter into .venv (once), then
# executes notebooks/quickstart.ipynb headless (a small Keras model trained under %%gpumem) and
# writes the executed notebook and its HTML page to demo-output/ (or --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
make_venv .venv -e ".[demo]"
exec .venv/bin/python -m kmem_magic.demo "$@"
