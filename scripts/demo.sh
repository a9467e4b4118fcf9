#!/usr/bin/env bash
# The demo: installs kmem_magic with Keras and CPU TensorFlow into .venv (once), then trains a
# small Keras model under %%gpumem and writes its report, plot, record and timeline to
# demo-output/ (or the folder given with --out). Uses the GPU where there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
make_venv .venv -e ".[cpu]"
exec .venv/bin/python -m kmem_magic.demo "$@"
