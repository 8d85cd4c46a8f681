"""PyTorch's tensor layouts and names against ours, shared by the diffusers-format weight readers.

Conv kernels are [O, I, kH, kW] in torch and [kH, kW, I, O] here, linear weights [O, I] and
[I, O]; norms' `scale` and layers' `kernel` are torch's `weight`.
"""

from __future__ import annotations

import numpy as np

LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
MAX_LISTED = 12  # names shown in an error before "... and N more"


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Our shape in torch's layout (see `to_torch`)."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))


def to_torch(array: np.ndarray) -> np.ndarray:
    """Conv kernel [kH, kW, I, O] -> [O, I, kH, kW]; linear [I, O] -> [O, I]; 1-D unchanged."""
    if array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    return array.T if array.ndim == 2 else array


def from_torch(array: np.ndarray, torch_ndim: int) -> np.ndarray:
    """Inverse of `to_torch`; a linear weight stored as a 1x1 conv [O, I, 1, 1] is reshaped."""
    if torch_ndim == 2 and array.ndim == 4:
        array = array.reshape(array.shape[:2])
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array.T if array.ndim == 2 else array


def fits(shape: tuple[int, ...], expected_torch_shape: tuple[int, ...]) -> bool:
    """The expected shape, or a linear weight [O, I] stored as [O, I, 1, 1]."""
    shape = tuple(shape)
    return shape == expected_torch_shape or (
        len(expected_torch_shape) == 2 and shape == (*expected_torch_shape, 1, 1)
    )


def show_path(path: tuple) -> str:
    """A parameter path as 'a/b/0/kernel'."""
    return "/".join(str(key) for key in path)


def listed(names: list[str]) -> str:
    """Names for an error message, the first MAX_LISTED of them."""
    if not names:
        return "none"
    more = f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more
