#!/usr/bin/env bash
# The scale benchmarks on a GPU, in float32 (JAX's default), recorded with the card's name.
#
# Usage (from the repository root, on a machine with a CUDA JAX):
#   bash benchmarks/gpu_suite.sh [OUTDIR]
# Wheels for packages the machine lacks may sit in .whl/ (installed to /tmp/site first).
set -euo pipefail
OUTDIR=${1:-benchmarks/results}
mkdir -p "$OUTDIR"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! (cd /tmp && python3 -c "import semimech.models") 2>/dev/null; then  # not installed: lay it out as setuptools would
  rm -rf /tmp/semimech-site && mkdir -p /tmp/semimech-site
  cp -r semimech /tmp/semimech-site/ && cp -r models /tmp/semimech-site/semimech/models
  export PYTHONPATH=/tmp/semimech-site:$PYTHONPATH
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/gpu.txt" || true
(cd /tmp && python3 -c "import jax, numpyro, semimech.models; print('jax', jax.__version__, 'numpyro', numpyro.__version__, jax.devices())") | tee -a "$OUTDIR/gpu.txt"
python3 benchmarks/scale.py --cells ${CELLS:-1e4 1e5 1e6} --epochs ${EPOCHS:-1} --batch-size ${BATCH:-4096} \
  --out "$OUTDIR/scale_gpu.json"
if [ -n "${BIG_BATCH:-}" ]; then
  python3 benchmarks/scale.py --cells 1e6 --epochs 1 --batch-size "$BIG_BATCH" --out "$OUTDIR/scale_gpu_bigbatch.json"
fi
if [ -z "${SKIP_OVERHEAD:-}" ]; then
  python3 benchmarks/overhead.py --repeats ${REPEATS:-2} --out "$OUTDIR/overhead_gpu.json"
fi
