"""The FID Inception network (the 2015-12-05 TensorFlow Inception v3 graph) in Flax NNX.

This is the network pytorch-fid builds with `fid_inception_v3`: torchvision's Inception3 with 1008
classes and no auxiliary head, whose Mixed_5b-5d, 6b-6e, 7b and 7c blocks follow the TensorFlow
graph instead: their pool branches average without counting the zero padding
(count_include_pad=False), and Mixed_7c's pool branch takes a max pool. Images are read as
pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)` reads them: bilinear resize
to 299x299 (F.interpolate, align_corners=False, no antialiasing), then x -> 2x - 1. Images are
NHWC; one channel is repeated to three.

Batch norm runs in inference mode and is kept unfolded: every conv block holds its kernel and the
batch norm's scale, bias, running mean and running variance as parameters (eps 1e-3, torchvision's
BasicConv2d), so the parameter tree maps one-to-one onto pytorch-fid's state dict
(evaluation/inception_weights.py) and `functionalize` applies it as a pure function of one params
dict. Parameters carry no logical axis names: the network only evaluates, replicated.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from flax import nnx

from evaluation import inception_weights
from evaluation.feature_network import FeatureNetwork, Params
from models.functional import FunctionalModel, functionalize

INPUT_SIZE = 299  # pytorch-fid resizes every image to 299x299
FEATURE_DIM = 2048  # the final average pool
NUM_CLASSES = 1008  # the TensorFlow graph's classes (1000 ImageNet ones and 8 unused)
BATCH_NORM_EPS = 1e-3  # torchvision's BasicConv2d
PRECISION = jax.lax.Precision.HIGHEST  # full float32 convs and matmuls (TF32 on GPUs otherwise)


class InceptionOutputs(NamedTuple):
    """What the network returns for a batch of images."""

    pool: jax.Array  # [B, 2048] features after the final average pool (FID, KID, ...)
    logits: jax.Array  # [B, 1008] pool @ fc.weight.T + fc.bias
    unbiased_logits: jax.Array  # [B, 1008] pool @ fc.weight.T: the Inception Score's logits


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


class FrozenBatchNorm(nnx.Module):
    """Inference-mode batch norm whose running statistics are parameters (loaded, never updated)."""

    def __init__(self, channels: int):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.Param(jnp.ones((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        multiplier = self.scale[...] * jax.lax.rsqrt(self.var[...] + BATCH_NORM_EPS)
        return (x - self.mean[...]) * multiplier + self.bias[...]


class BasicConv(nnx.Module):
    """Conv without bias, frozen batch norm, ReLU (torchvision's BasicConv2d)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        rngs: nnx.Rngs,
    ):
        pad_h, pad_w = _pair(padding)
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            kernel_size=_pair(kernel),
            strides=(stride, stride),
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False,
            precision=PRECISION,
            rngs=rngs,
        )
        self.bn = FrozenBatchNorm(out_channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


def max_pool(x: jax.Array, *, stride: int, padding: int = 0) -> jax.Array:
    """3x3 max pool over [B, H, W, C]; padded positions never win (torch pads with -inf)."""
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pads
    )


def avg_pool_without_padding(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool, padded by 1, averaging only real pixels (TensorFlow's 'SAME')."""
    window, strides, pads = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pads)
    return sums / counts


class InceptionA(nnx.Module):
    """Mixed_5b-5d (pytorch-fid's FIDInceptionA): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv(in_channels, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv(in_channels, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_channels, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv(in_channels, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(avg_pool_without_padding(x))
        return jnp.concatenate([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a: strided 3x3, strided double 3x3 and max-pool branches (35x35 -> 17x17)."""

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv(in_channels, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_channels, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), branch3x3dbl, max_pool(x, stride=2)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b-6e (pytorch-fid's FIDInceptionC): factorised 7x7 branches and a pool branch."""

    def __init__(self, in_channels: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        self.branch1x1 = BasicConv(in_channels, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv(in_channels, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv(in_channels, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv(in_channels, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            branch7x7dbl = layer(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
        branch_pool = self.branch_pool(avg_pool_without_padding(x))
        return jnp.concatenate([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a: strided 3x3, 7x7-then-strided-3x3 and max-pool branches (17x17 -> 8x8)."""

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv(in_channels, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv(in_channels, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, max_pool(x, stride=2)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b / 7c (FIDInceptionE_1 / _2): split 3x3 branches; 7c's pool branch is a max pool."""

    def __init__(self, in_channels: int, *, max_pool_branch: bool, rngs: nnx.Rngs):
        self.max_pool_branch = max_pool_branch
        self.branch1x1 = BasicConv(in_channels, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv(in_channels, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_channels, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv(in_channels, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.branch3x3_1(x)
        branch3x3 = [self.branch3x3_2a(h), self.branch3x3_2b(h)]
        h = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = [self.branch3x3dbl_3a(h), self.branch3x3dbl_3b(h)]
        if self.max_pool_branch:
            pooled = max_pool(x, stride=1, padding=1)
        else:
            pooled = avg_pool_without_padding(x)
        branches = [self.branch1x1(x), *branch3x3, *branch3x3dbl, self.branch_pool(pooled)]
        return jnp.concatenate(branches, axis=-1)


class FIDInceptionV3(nnx.Module):
    """Images [B, H, W, 1 or 3] in [0, 1] -> InceptionOutputs (pool [B, 2048], logits [B, 1008])."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, pool_features=32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, pool_features=64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, pool_features=64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True, rngs=rngs)
        self.fc = nnx.Linear(FEATURE_DIM, NUM_CLASSES, precision=PRECISION, rngs=rngs)

    def __call__(self, images: jax.Array) -> InceptionOutputs:
        x = preprocess(images)  # [B, 299, 299, 3] in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 147, 147, 64]
        x = max_pool(x, stride=2)  # [B, 73, 73, 64]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B, 71, 71, 192]
        x = max_pool(x, stride=2)  # [B, 35, 35, 192]
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)  # -> [B, 17, 17, 768]
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a):
            x = block(x)  # -> [B, 8, 8, 1280]
        x = self.Mixed_7c(self.Mixed_7b(x))  # [B, 8, 8, 2048]
        pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]
        unbiased = jnp.dot(pool, self.fc.kernel[...], precision=PRECISION)
        return InceptionOutputs(pool, unbiased + self.fc.bias[...], unbiased)


def preprocess(images: jax.Array) -> jax.Array:
    """[B, H, W, 1 or 3] in [0, 1] -> [B, 299, 299, 3] in [-1, 1], as pytorch-fid prepares them."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Inception reads images [B, H, W, 1 or 3]; got shape {images.shape}.")
    x = resize_bilinear(images.astype(jnp.float32), INPUT_SIZE, INPUT_SIZE)
    x = 2.0 * x - 1.0
    return jnp.broadcast_to(x, (*x.shape[:3], 3))  # grey -> RGB; RGB unchanged


def resize_bilinear(images: jax.Array, height: int, width: int) -> jax.Array:
    """[B, H, W, C] -> [B, height, width, C]: F.interpolate(mode='bilinear', align_corners=False).

    No antialiasing, unlike jax.image.resize when downsampling: each output pixel blends the two
    nearest input pixels per axis, as torch does. Width first, then height (torch's order).
    """
    return _resize_axis(_resize_axis(images, 2, width), 1, height)


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    low, high, low_weight, high_weight = _linear_taps(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    low_part = jnp.take(x, low, axis=axis) * low_weight.reshape(shape)
    return low_part + jnp.take(x, high, axis=axis) * high_weight.reshape(shape)


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, ...]:
    """Per output index: the two input indices and their weights, in float32 like torch's kernel."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    source = np.maximum(source, np.float32(0.0))  # torch clamps negative source positions to 0
    low = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    high_weight = np.clip(source - low.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return low, high, np.float32(1.0) - high_weight, high_weight


@functools.cache
def inception_model() -> FunctionalModel:
    """The FID Inception as a FunctionalModel (graph and parameter shapes, built once)."""
    return functionalize(lambda rngs: FIDInceptionV3(rngs=rngs))


def _apply(params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    outputs = inception_model().apply(params, images)
    return outputs.pool, outputs.unbiased_logits


def load_inception(path: str | os.PathLike) -> FeatureNetwork:
    """The FID Inception FeatureNetwork from converted pytorch-fid weights (a .safetensors file).

    `apply` returns (pool features [B, 2048], unbiased logits [B, 1008]): the logits without the fc
    bias are what the original Inception Score code and torch-fidelity read.
    """
    path = Path(path)
    params = inception_weights.read_params(path, inception_model().abstract_params)
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return as_feature_network(params, f"{path.name}:{digest.hexdigest()[:12]}")


def as_feature_network(params: Params, weights_id: str) -> FeatureNetwork:
    """The FeatureNetwork over given Inception params (e.g. random ones, for timing)."""
    return FeatureNetwork(
        name="inception",
        feature_dim=FEATURE_DIM,
        num_classes=NUM_CLASSES,
        params=params,
        apply=_apply,
        weights_id=weights_id,
    )
