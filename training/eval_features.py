"""Features of images on the devices, gathered as streamed statistics plus (optionally) raw rows.

Sampled chunks stay on the devices where the chain left them: the feature network runs sharded
on the same batch axes, and each process reads back only the feature rows it holds (each row
counted by exactly one process). Moments are summed per process and combined with one
collective at the end (`statistics.all_processes`); the raw rows that KID, precision/recall and
the Inception Score need are gathered once, in global row order, so 1 and N devices agree.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

import sharding
from evaluation.feature_network import FeatureNetwork
from evaluation.statistics import FeatureStatistics, all_processes


@dataclasses.dataclass
class FeatureAccumulator:
    """Streamed moments of the features, plus the raw rows (features, logits, labels) kept."""

    stats: FeatureStatistics
    keep_features: bool
    indices: list[np.ndarray] = dataclasses.field(default_factory=list)
    features: list[np.ndarray] = dataclasses.field(default_factory=list)
    logits: list[np.ndarray] = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls, network: FeatureNetwork, keep_features: bool) -> FeatureAccumulator:
        return cls(FeatureStatistics.empty(network.feature_dim), keep_features)

    def add(self, indices: np.ndarray, features: np.ndarray, logits: np.ndarray) -> None:
        """Rows with global positions `indices` (this process's share of a chunk)."""
        self.stats = self.stats.update(np.asarray(features, np.float64))
        self.indices.append(np.asarray(indices, np.int64))
        self.logits.append(np.asarray(logits, np.float32))
        if self.keep_features:
            self.features.append(np.asarray(features, np.float32))

    def finish(self) -> GatheredFeatures:
        """Every process's rows together, on every process (global row order)."""
        stats = all_processes(self.stats)
        indices = _concat(self.indices, (0,), np.int64)
        logits = _gather_rows(indices, _concat(self.logits, (0, 0), np.float32))
        features = None
        if self.keep_features:
            width = self.stats.dim
            features = _gather_rows(indices, _concat(self.features, (0, width), np.float32))
        return GatheredFeatures(stats=stats, features=features, logits=logits)


@dataclasses.dataclass(frozen=True)
class GatheredFeatures:
    stats: FeatureStatistics
    features: np.ndarray | None  # [N, F] float32 in global row order (keep_features)
    logits: np.ndarray  # [N, K] float32 in global row order


def make_featurizer(network: FeatureNetwork, mesh: Mesh):
    """(images [B, H, W, C] in [-1, 1], sharded on the batch) -> (features, logits) sharded alike.

    Images are first rounded to 8 bits, as a PNG on disk would hold them."""
    batch = sharding.batch_sharding(mesh)

    def featurize(params, images):
        levels = jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5)
        return network.apply(params, levels / 255.0)

    params = jax.device_put(network.params, sharding.replicated(mesh))
    jitted = jax.jit(featurize, in_shardings=(sharding.replicated(mesh), batch))
    return lambda images: jitted(params, images)


def local_rows(array: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """(global row indices, rows) of `array` that this process owns, in index order.

    A block of rows replicated over several devices (non-batch mesh axes) is owned by the first
    device holding it, so every row is read by exactly one process."""
    owners: dict[int, jax.Device] = {}
    for device, index in array.sharding.devices_indices_map(array.shape).items():
        start = index[0].start or 0
        if start not in owners or device.id < owners[start].id:
            owners[start] = device
    blocks = {}
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        if owners[start] == shard.device:
            blocks[start] = np.asarray(shard.data)
    starts = sorted(blocks)
    if not starts:
        return np.zeros((0,), np.int64), np.zeros((0, *array.shape[1:]), array.dtype)
    indices = np.concatenate([np.arange(s, s + len(blocks[s])) for s in starts])
    return indices, np.concatenate([blocks[s] for s in starts])


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype)


def _gather_rows(indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Every process's rows, sorted by their global index (one process: just sorted)."""
    if jax.process_count() > 1:
        counts = np.asarray(multihost_utils.process_allgather(np.int64(len(indices))))
        most = int(counts.max())
        pad = most - len(indices)
        padded_idx = np.concatenate([indices, np.full(pad, -1, np.int64)])
        padded_rows = np.concatenate([rows, np.zeros((pad, *rows.shape[1:]), rows.dtype)])
        all_idx = np.asarray(multihost_utils.process_allgather(padded_idx)).reshape(-1)
        all_rows = np.asarray(multihost_utils.process_allgather(padded_rows))
        all_rows = all_rows.reshape(-1, *rows.shape[1:])
        keep = all_idx >= 0
        indices, rows = all_idx[keep], all_rows[keep]
    return rows[np.argsort(indices, kind="stable")]
