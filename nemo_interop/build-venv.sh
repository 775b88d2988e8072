#!/usr/bin/env bash
# Builds the isolated NeMo 2 environment (.venv-nemo) used for checkpoint interop.
# nemo-toolkit 2.7.x is the last line with nemo.collections.llm; its [llm] extra pins
# numpy<2, transformers~=4.57, zarr<3, which clash with the main .venv -> separate venv.
# Idempotent: reuses the venv, and pip skips what is already satisfied.
# Pins: ../constraints.txt (torch, megatron-core as in the main venv), constraints-nemo.txt (the
# reasons for the extra pins), requirements.txt (full lock from pip freeze; delete it to re-resolve).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NEMO_VENV:-.venv-nemo}
PY=${PYTHON:-python3.11}
HERE=nemo_interop

test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip wheel 'setuptools>=70'
# torch: the CPU build pinned in ../constraints.txt, from wherever pip finds it for the main
# venv (its configured index or find-links; the CPU index below when it answers): an unpinned
# torch from PyPI pulls a multi-GB CUDA build. megatron-core: 0.16.1, as in the main venv
# (nemo 2.7.3 leaves it unpinned; cpu_patches.py bridges what 0.16 removed).
TORCH_SRC=()
if curl -fsS -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
    TORCH_SRC+=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "${TORCH_SRC[@]}" \
    -c constraints.txt -c "$HERE/constraints-nemo.txt" -c "$HERE/requirements.txt" \
    'nemo-toolkit[llm]==2.7.3' nemo_run
"$VENV/bin/python" -c "import nemo, nemo.collections.llm as llm, megatron.core, torch; print('nemo', nemo.__version__, 'mcore', megatron.core.__version__, 'torch', torch.__version__)"
