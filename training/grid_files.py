"""Step-grid files: what `sampler.spacing='file:PATH'` reads and the grid optimiser writes.

A grid file is JSON: {"sigmas": [the n active levels, decreasing], "sampler": ..., "nfe": ...,
plus what made it}. Levels are sigmas (sqrt((1 - alpha_bar) / alpha_bar)), so a grid found for
one model serves any model on the same noise schedule (checked on load against its range).
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import numpy as np

import paths

PREFIX = "file:"


def is_file_spacing(spacing: str) -> bool:
    """Whether `spacing` names a grid file rather than a spacing rule."""
    return spacing.startswith(PREFIX)


def path_of(spacing: str) -> str:
    """The file a 'file:PATH' spacing names."""
    return spacing[len(PREFIX) :]


def short_name(spacing: str) -> str:
    """A spacing as tables and file names show it: the rule, or a grid file's stem."""
    if not is_file_spacing(spacing):
        return spacing
    return PurePosixPath(path_of(spacing)).stem


def read_grid(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(sigmas [n], everything else the file records); ValueError naming the file when it is
    missing or malformed."""
    try:
        record = json.loads(paths.as_path(path).read_text())
    except FileNotFoundError as error:
        raise ValueError(f"grid file {path!r} does not exist") from error
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"grid file {path!r} is not readable JSON: {error}") from error
    sigmas = record.get("sigmas") if isinstance(record, dict) else None
    if not isinstance(sigmas, list) or not sigmas:
        raise ValueError(f"grid file {path!r} has no 'sigmas' list (the grid's active levels)")
    try:
        levels = np.asarray(sigmas, np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"grid file {path!r}: 'sigmas' must be numbers: {error}") from error
    return levels, {key: value for key, value in record.items() if key != "sigmas"}


def write_grid(path: str, sigmas: np.ndarray, **record: Any) -> None:
    """Writes a grid file (never half of one) that read_grid returns as (sigmas, record)."""
    body = {"sigmas": [float(s) for s in np.asarray(sigmas, np.float64)], **record}
    paths.write_text(path, json.dumps(body, indent=2) + "\n")
