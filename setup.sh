#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with every dependency, from this
# repository's own files (pyproject.toml + constraints.txt).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch comes first, pinned, so that no dependency can pull a CUDA build or torchvision.
.venv/bin/python -m pip install --quiet -c constraints.txt torch
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[train,test,mrml,distributed]"
.venv/bin/python -c "import radiomics, torch, SimpleITK, RadFusionScreenLib; print('RadFusionScreen engine', RadFusionScreenLib.__version__, '| pyradiomics', radiomics.__version__, '| torch', torch.__version__)"
# The main job, on the shipped model: screen an example case (a BUSI test case when
# ../shared/data/busi is present, else a generated phantom) -> demo_output/.
.venv/bin/radfusion demo -o demo_output
