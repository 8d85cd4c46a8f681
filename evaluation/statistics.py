"""Streamed feature statistics (mean and covariance for FID) and a bounded bank of raw features.

`FeatureStatistics` keeps the count, the sum [F] and the sum of outer products [F, F] of every
feature vector seen, in float64, so 50k samples never sit in memory at once: each batch is folded
in and dropped. Two statistics add (`merge`), across processes too (`all_processes`, one
collective), and save to / load from a plain .npz (no pickle) that doubles as the reference
statistics file of a data set.

`FeatureBank` keeps the raw float32 features (or logits) that KID, precision/recall and the
Inception Score need, up to a cap.
"""

from __future__ import annotations

import dataclasses
import io
import types
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

import paths

FORMAT_VERSION = 1  # stored in every statistics file as `format_version`
_META_PREFIX = "meta_"  # metadata key k is stored as the 0-d string array `meta_k`
_REQUIRED = ("format_version", "count", "sum", "outer_sum")


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureStatistics:
    """First and second moments of a stream of feature vectors, in float64; immutable.

    `update` and `merge` return new statistics. The arrays are read-only. `metadata` names what
    the statistics describe (e.g. data set, split, feature network, weights id, resolution), as
    strings; `merge` keeps the receiver's.
    """

    count: int  # N, the number of feature vectors seen
    sum: np.ndarray  # [F] float64: sum of x
    outer_sum: np.ndarray  # [F, F] float64: sum of x x^T
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        total = np.array(self.sum, dtype=np.float64)
        outer = np.array(self.outer_sum, dtype=np.float64)
        if total.ndim != 1 or outer.shape != (total.size, total.size):
            raise ValueError(
                f"FeatureStatistics: sum must be [F] and outer_sum [F, F]; "
                f"got {total.shape} and {outer.shape}"
            )
        if int(self.count) != self.count or self.count < 0:
            raise ValueError(f"FeatureStatistics: count must be an integer >= 0, got {self.count}")
        total.flags.writeable = False
        outer.flags.writeable = False
        meta = {str(k): str(v) for k, v in self.metadata.items()}
        object.__setattr__(self, "count", int(self.count))
        object.__setattr__(self, "sum", total)
        object.__setattr__(self, "outer_sum", outer)
        object.__setattr__(self, "metadata", types.MappingProxyType(meta))

    @classmethod
    def empty(cls, dim: int, metadata: Mapping[str, str] | None = None) -> FeatureStatistics:
        """Statistics of no features of dimension `dim`."""
        return cls(0, np.zeros(dim), np.zeros((dim, dim)), dict(metadata or {}))

    @property
    def dim(self) -> int:
        """F, the feature dimension."""
        return self.sum.size

    def update(self, features: np.ndarray) -> FeatureStatistics:
        """These statistics with the rows of `features` [B, F] added (any float dtype)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"update: features must be [B, {self.dim}], got {x.shape}")
        return FeatureStatistics(
            self.count + x.shape[0],
            self.sum + x.sum(axis=0),
            self.outer_sum + x.T @ x,
            self.metadata,
        )

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """The statistics of both streams together (this one's metadata)."""
        if other.dim != self.dim:
            raise ValueError(f"merge: feature dimensions differ ({self.dim} vs {other.dim})")
        return FeatureStatistics(
            self.count + other.count,
            self.sum + other.sum,
            self.outer_sum + other.outer_sum,
            self.metadata,
        )

    @property
    def mean(self) -> np.ndarray:
        """[F] float64 mean of the features seen (needs count >= 1)."""
        if self.count < 1:
            raise ValueError("mean: no features seen")
        return self.sum / self.count

    @property
    def covariance(self) -> np.ndarray:
        """[F, F] unbiased (ddof=1) covariance, as np.cov(features, rowvar=False) (count >= 2).

        (sum x x^T - N mean mean^T) / (N - 1) in float64, symmetrised. The subtraction cancels
        about log10(|mean|^2 / variance) digits: features offset by 100 from a unit variance keep
        ~11 of float64's 16 (tested); Inception pool features (mean ~ std) lose none of note.
        """
        if self.count < 2:
            raise ValueError(f"covariance: needs at least 2 features, got {self.count}")
        centred = self.outer_sum - np.outer(self.sum, self.sum) / self.count
        cov = centred / (self.count - 1)
        return (cov + cov.T) / 2

    def save(self, path: str) -> None:
        """Writes these statistics to the .npz file `path`, local or remote, exactly (atomically:
        see paths.write_bytes)."""
        arrays = {
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            "count": np.array(self.count, dtype=np.int64),
            "sum": self.sum,
            "outer_sum": self.outer_sum,
        }
        arrays.update({_META_PREFIX + k: np.array(v) for k, v in self.metadata.items()})
        encoded = io.BytesIO()
        np.savez(encoded, **arrays)
        paths.write_bytes(path, encoded.getvalue())

    @classmethod
    def load(cls, path: str) -> FeatureStatistics:
        """Reads statistics written by `save`; a ValueError names the path and the bad field."""
        try:
            data = np.load(paths.readable(path), allow_pickle=False)
        except (OSError, EOFError, ValueError) as e:
            raise ValueError(f"{path}: not a readable statistics .npz file ({e})") from e
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not a statistics .npz file")
        with data:
            fields = {name: _read_field(data, name, path) for name in data.files}
        for name in _REQUIRED:
            if name not in fields:
                raise ValueError(f"{path}: missing field '{name}' (has {sorted(fields)})")
        _check_field(path, "format_version", fields["format_version"], "i", 0)
        if int(fields["format_version"]) != FORMAT_VERSION:
            raise ValueError(
                f"{path}: field 'format_version' is {int(fields['format_version'])}, "
                f"this code reads {FORMAT_VERSION}"
            )
        _check_field(path, "count", fields["count"], "i", 0)
        _check_field(path, "sum", fields["sum"], "f", 1)
        _check_field(path, "outer_sum", fields["outer_sum"], "f", 2)
        dim = fields["sum"].size
        if fields["outer_sum"].shape != (dim, dim):
            raise ValueError(
                f"{path}: field 'outer_sum' has shape {fields['outer_sum'].shape}; expected "
                f"{(dim, dim)} to match field 'sum'"
            )
        metadata = {}
        for name, value in fields.items():
            if name.startswith(_META_PREFIX):
                _check_field(path, name, value, "U", 0)
                metadata[name.removeprefix(_META_PREFIX)] = str(value)
            elif name not in _REQUIRED:
                raise ValueError(f"{path}: unexpected field '{name}'")
        try:
            return cls(int(fields["count"]), fields["sum"], fields["outer_sum"], metadata)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def _read_field(data: np.lib.npyio.NpzFile, name: str, path: str) -> np.ndarray:
    """One array of an open .npz; object (pickled) arrays fail naming the field."""
    try:
        return data[name]
    except ValueError as e:
        raise ValueError(f"{path}: field '{name}' cannot be read without pickle ({e})") from e


def _check_field(path: str, name: str, value: np.ndarray, kind: str, ndim: int) -> None:
    """Fails naming `path` and `name` unless `value` has dtype kind `kind` and `ndim` dims."""
    if value.dtype.kind != kind or value.ndim != ndim:
        raise ValueError(
            f"{path}: field '{name}' has dtype {value.dtype} and shape {value.shape}; "
            f"expected dtype kind '{kind}' with {ndim} dimension(s)"
        )


def pack(stats: FeatureStatistics) -> np.ndarray:
    """[count, sum, outer_sum] as one float64 vector [1 + F + F^2], viewed as uint32 [2(...)].

    The uint32 view carries float64 through collectives that run without jax_enable_x64 (which
    would round float64 to float32), bit for bit.
    """
    flat = np.concatenate([[float(stats.count)], stats.sum, stats.outer_sum.ravel()])
    return np.ascontiguousarray(flat, dtype=np.float64).view(np.uint32)


def unpack(packed: np.ndarray, metadata: Mapping[str, str] | None = None) -> FeatureStatistics:
    """The inverse of `pack`."""
    flat = np.ascontiguousarray(packed, dtype=np.uint32).view(np.float64)
    dim = int(round((np.sqrt(4 * flat.size - 3) - 1) / 2))  # solves 1 + F + F^2 = size
    if 1 + dim + dim * dim != flat.size:
        raise ValueError(f"unpack: {flat.size} float64 values is not 1 + F + F^2 for any F")
    return FeatureStatistics(
        int(flat[0]), flat[1 : 1 + dim], flat[1 + dim :].reshape(dim, dim), dict(metadata or {})
    )


def all_processes(stats: FeatureStatistics) -> FeatureStatistics:
    """The statistics of every JAX process's features together, on every process.

    One collective (process_allgather of the packed statistics), then a sum in process order, so
    all processes get bit-identical results. Every process must call it with the same F. A
    single process returns `stats` itself. Keeps this process's metadata.
    """
    if jax.process_count() == 1:
        return stats
    gathered = np.asarray(multihost_utils.process_allgather(pack(stats)))  # [P, 2(1+F+F^2)]
    rows = [unpack(row) for row in gathered]
    total = rows[0]
    for row in rows[1:]:
        total = total.merge(row)
    return dataclasses.replace(total, metadata=dict(stats.metadata))


class FeatureBank:
    """Raw float32 feature (or logit) rows, appended batch by batch, up to `max_kept` rows.

    For the metrics that need the samples themselves (KID, precision/recall, Inception Score).
    Rows past the cap are counted but dropped. Memory: 50k x 2048 float32 is 400 MB of host
    memory, what torch-fidelity keeps too. Mutable, unlike FeatureStatistics.
    """

    def __init__(self, max_kept: int) -> None:
        if max_kept < 1:
            raise ValueError(f"FeatureBank: max_kept must be >= 1, got {max_kept}")
        self.max_kept = max_kept
        self.seen = 0  # rows offered to `add`, kept or not
        self._batches: list[np.ndarray] = []
        self._kept = 0

    def add(self, batch: np.ndarray) -> None:
        """Keeps the rows of `batch` [B, F] (as float32) until `max_kept` rows are kept."""
        x = np.asarray(batch)
        if x.ndim != 2:
            raise ValueError(f"FeatureBank.add: batch must be [B, F], got shape {x.shape}")
        if self._batches and x.shape[1] != self._batches[0].shape[1]:
            raise ValueError(
                f"FeatureBank.add: batch has {x.shape[1]} features, "
                f"earlier ones had {self._batches[0].shape[1]}"
            )
        self.seen += x.shape[0]
        room = self.max_kept - self._kept
        if room > 0 and x.shape[0] > 0:
            kept = np.array(x[:room], dtype=np.float32)  # a copy: the caller may reuse `batch`
            self._batches.append(kept)
            self._kept += kept.shape[0]

    def __len__(self) -> int:
        """Rows kept."""
        return self._kept

    def array(self) -> np.ndarray:
        """[N, F] float32 of the rows kept, in the order added (N = min(seen, max_kept))."""
        if not self._batches:
            raise ValueError("FeatureBank.array: no rows added")
        merged = np.concatenate(self._batches, axis=0)
        merged.flags.writeable = False  # shared with the bank: callers copy to change it
        self._batches = [merged]  # later calls (and adds) do not concatenate again
        return merged
