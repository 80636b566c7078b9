#!/usr/bin/env bash
# The device check of issue 20 in one command, from the repository root, on a machine with one GPU:
#
#   bash benchmarks/gpu_check.sh            (about 3-4 minutes on an H100)
#
# It runs the project from the checkout (PYTHONPATH=., no venv: device machines reach no registry).
# Their image has torch, h5py, numpy, scipy, typer, rich, matplotlib, safetensors, transformers and
# pytest; wheels of what it lacks (plotly, meshio, pyevtk) are installed from ./wheels when that
# folder exists (`pip download --only-binary=:all: -d wheels plotly narwhals meshio pyevtk` here).
set -uo pipefail
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if [ -d wheels ]; then
    $PY -m pip install -q --no-index --find-links wheels plotly meshio pyevtk 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "== tests/test_gpu.py"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py 2>&1 | tail -15
echo "== benchmarks/scale.py --parts gpu"
$PY benchmarks/scale.py --parts gpu
