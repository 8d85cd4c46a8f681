"""Imports pytorch-fid and torch-fidelity, the reference implementations of the parity tests.

Both import torchvision at module level. The torchvision wheels on PyPI for Linux are CUDA
builds whose compiled ops fail to load next to the CPU-only torch wheel this project pins
("operator torchvision::nms does not exist"), and an installed broken torchvision also breaks
transformers' CLIP imports. So tools/install_test_extras.sh unpacks torchvision outside
site-packages, and this module registers it without running its `__init__` (which loads the
compiled ops): the references need only its pure-Python model code.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Iterator

# Where tools/install_test_extras.sh unpacks torchvision's Python files (outside site-packages).
REFERENCE_TORCHVISION = os.path.join(sys.prefix, "reference-torchvision", "torchvision")


@contextlib.contextmanager
def _torchvision_importable() -> Iterator[None]:
    """`import torchvision.models...` works inside; afterwards the top-level package is taken
    out of sys.modules again, so transformers (which probes for torchvision) never sees it."""
    if importlib.util.find_spec("torchvision") is not None:
        try:  # a torchvision build that matches torch (e.g. a CPU wheel from PyTorch's index)
            importlib.import_module("torchvision")
            yield
            return
        except (RuntimeError, ImportError, OSError):
            for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                del sys.modules[name]
    if not os.path.isdir(REFERENCE_TORCHVISION):
        raise ImportError(
            f"torchvision's Python files are not at {REFERENCE_TORCHVISION}; run "
            "tools/install_test_extras.sh in the test venv."
        )
    package = types.ModuleType("torchvision")
    package.__path__ = [REFERENCE_TORCHVISION]
    package.__version__ = _unpacked_version()  # pytorch-fid reads it to pick init arguments
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    package.__spec__.submodule_search_locations = [REFERENCE_TORCHVISION]
    sys.modules["torchvision"] = package
    try:
        yield
    finally:
        del sys.modules["torchvision"]


def _unpacked_version() -> str:
    """The version in the unpacked wheel's dist-info directory name (e.g. '0.28.0')."""
    parent = os.path.dirname(REFERENCE_TORCHVISION)
    infos = [
        d for d in os.listdir(parent) if d.startswith("torchvision-") and d.endswith(".dist-info")
    ]
    return infos[0][len("torchvision-") : -len(".dist-info")] if infos else "0.0.0"


def _import(name: str) -> types.ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    with _torchvision_importable():
        return importlib.import_module(name)


def pytorch_fid_inception() -> types.ModuleType:
    """pytorch_fid.inception (InceptionV3, fid_inception_v3, FIDInceptionA..E_2)."""
    return _import("pytorch_fid.inception")


def pytorch_fid_score() -> types.ModuleType:
    """pytorch_fid.fid_score (calculate_frechet_distance)."""
    return _import("pytorch_fid.fid_score")


def torch_fidelity_module(name: str) -> types.ModuleType:
    """torch_fidelity.<name>, e.g. 'metric_kid', 'metric_isc', 'metric_prc'."""
    return _import(f"torch_fidelity.{name}")
