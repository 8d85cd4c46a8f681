"""What every evaluation feature network offers: images in, (features, class logits) out.

FID, KID and precision/recall read the features; the Inception Score and class accuracy read the
logits. The FID Inception and the digits classifier differ only in the network behind `apply`, so
one evaluation path serves both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

Params = dict[str, Any]

# (params, images [B, H, W, C] float32 in [0, 1]) -> (features [B, F], logits [B, K]), float32.
ApplyFn = Callable[[Params, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNetwork:
    """A frozen feature network with its weights, as a pure function of them.

    Images enter as 8-bit-quantised values in [0, 1] (what a PNG on disk holds), any size and 1 or
    3 channels: each network resizes and rescales them the way its reference implementation does.
    """

    name: str  # "inception" | "digits": part of reference-statistics file names
    feature_dim: int  # F
    num_classes: int  # K
    params: Params
    apply: ApplyFn
    weights_id: str  # names the weights (file and content hash) in every metrics record
