"""evaluation/statistics.py: streamed moments equal numpy's one-shot ones, files round-trip,
the cross-process combine is exact (one process here, two real processes in the slow test)."""

import os
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from evaluation import statistics
from evaluation.statistics import FeatureBank, FeatureStatistics
from tests.xla_flags import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
META = {
    "dataset": "digits",
    "split": "train",
    "network": "inception",
    "weights_id": "pt_inception-2015-12-05:abc123",
    "resolution": "299",
}


def _features(seed: int, n: int, dim: int) -> np.ndarray:
    """[n, dim] correlated features offset by +100 from a unit-scale spread (hard for E[xx^T])."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing + 100.0 + rng.normal(size=dim)


def _streamed(x: np.ndarray, seed: int) -> FeatureStatistics:
    """Statistics of x's rows fed in random chunk sizes (empty chunks included)."""
    rng = np.random.default_rng(seed)
    stats, start = FeatureStatistics.empty(x.shape[1]), 0
    while start < x.shape[0]:
        size = int(rng.integers(0, 97))
        stats, start = stats.update(x[start : start + size]), start + size
    return stats


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _assert_identical(a: FeatureStatistics, b: FeatureStatistics) -> None:
    """Bit-identical count, sums and metadata."""
    assert a.count == b.count and dict(a.metadata) == dict(b.metadata)
    assert a.sum.tobytes() == b.sum.tobytes()
    assert a.outer_sum.tobytes() == b.outer_sum.tobytes()


def test_streamed_moments_match_numpy():
    x = _features(0, 1500, 24)
    stats = _streamed(x, seed=1)
    assert stats.count == 1500
    assert _relative(stats.mean, x.mean(axis=0)) < 1e-14
    # measured 1.1e-11 with the +100 offset: sum x x^T - N m m^T cancels ~5 of 16 digits
    assert _relative(stats.covariance, np.cov(x, rowvar=False)) < 1e-10
    reference = np.cov(x, rowvar=False)
    atol = 1e-10 * np.abs(reference).max()  # absolute error ~ eps * 100^2 on every entry
    np.testing.assert_allclose(stats.covariance, reference, rtol=1e-10, atol=atol)
    assert np.array_equal(stats.covariance, stats.covariance.T)


def test_merge_of_two_halves_matches_numpy():
    x = _features(2, 1001, 16)
    first, second = _streamed(x[:400], seed=3), _streamed(x[400:], seed=4)
    both = first.merge(second)
    assert both.count == 1001
    assert _relative(both.mean, x.mean(axis=0)) < 1e-14
    assert _relative(both.covariance, np.cov(x, rowvar=False)) < 1e-10


def test_update_and_merge_are_pure():
    x = np.random.default_rng(5).normal(size=(10, 4))
    empty = FeatureStatistics.empty(4, META)
    stats = empty.update(x)
    stats.merge(stats)
    assert empty.count == 0 and not empty.sum.any() and not empty.outer_sum.any()
    assert stats.count == 10 and dict(stats.metadata) == META
    with pytest.raises(ValueError, match="read-only"):
        stats.sum[0] = 1.0
    with pytest.raises(TypeError):
        stats.metadata["split"] = "test"


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        FeatureStatistics.empty(4).update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="dimensions differ"):
        FeatureStatistics.empty(4).merge(FeatureStatistics.empty(3))
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStatistics.empty(4).update(np.ones((1, 4))).covariance


def test_save_load_round_trip_is_exact(tmp_path):
    stats = _streamed(_features(6, 300, 12), seed=7)
    stats = FeatureStatistics(stats.count, stats.sum, stats.outer_sum, META)
    path = str(tmp_path / "digits_train.npz")
    stats.save(path)
    assert sorted(os.listdir(tmp_path)) == ["digits_train.npz"]  # the name given, no temp left
    _assert_identical(FeatureStatistics.load(path), stats)


def _write(path: str, **fields) -> None:
    with open(path, "wb") as f:
        np.savez(f, **fields)


@pytest.mark.parametrize("missing", ["format_version", "count", "sum", "outer_sum"])
def test_load_names_a_missing_field(tmp_path, missing):
    fields = {"format_version": np.array(1), "count": np.array(3), "sum": np.zeros(2)}
    fields["outer_sum"] = np.zeros((2, 2))
    del fields[missing]
    path = str(tmp_path / "stats.npz")
    _write(path, **fields)
    with pytest.raises(ValueError, match=f"{path}: missing field '{missing}'"):
        FeatureStatistics.load(path)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("sum", np.zeros((2, 1)), "field 'sum' has dtype float64 and shape"),
        ("count", np.array(3.5), "field 'count' has dtype float64"),
        ("count", np.array(-1), "count must be an integer >= 0"),
        ("outer_sum", np.zeros((3, 3)), r"'outer_sum' has shape \(3, 3\); expected \(2, 2\)"),
        ("meta_dataset", np.array([{"a": 1}], dtype=object), "'meta_dataset' cannot be read"),
        ("format_version", np.array(2), "'format_version' is 2"),
        ("extra", np.zeros(1), "unexpected field 'extra'"),
    ],
)
def test_load_names_an_odd_field(tmp_path, field, value, message):
    fields = {"format_version": np.array(1), "count": np.array(3), "sum": np.zeros(2)}
    fields["outer_sum"] = np.zeros((2, 2))
    fields[field] = value
    path = str(tmp_path / "stats.npz")
    _write(path, **fields)
    with pytest.raises(ValueError, match=message) as error:
        FeatureStatistics.load(path)
    assert path in str(error.value)


def test_load_of_a_non_npz_file_names_the_path(tmp_path):
    path = str(tmp_path / "stats.npz")
    with open(path, "w") as f:
        f.write("not a zip")
    with pytest.raises(ValueError, match=path):
        FeatureStatistics.load(path)


def test_pack_unpack_is_bit_exact_through_a_float32_jax():
    """The uint32 view survives jax without x64 (where float64 arrays become float32)."""
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324, 1.7976931348623157e308, 1 / 3])
    rng = np.random.default_rng(8)
    total = np.concatenate([values, rng.normal(size=2) * 1e-300])  # F = 9; ±inf, nan, subnormal
    outer = rng.normal(size=(9, 9)) * 10.0 ** rng.integers(-300, 300, size=(9, 9))
    stats = FeatureStatistics(2**52 + 1, total, outer)
    packed = statistics.pack(stats)
    assert packed.dtype == np.uint32 and packed.shape == (2 * (1 + 9 + 81),)
    through_jax = np.asarray(jnp.asarray(packed))
    assert through_jax.dtype == np.uint32
    _assert_identical(statistics.unpack(through_jax), stats)
    with np.errstate(over="ignore"):  # 1.8e308 overflows float32: the reason for the view
        assert np.asarray(jnp.asarray(total)).dtype == np.float32


def test_all_processes_on_one_process_is_the_identity():
    stats = _streamed(_features(9, 100, 8), seed=10)
    _assert_identical(statistics.all_processes(stats), stats)


_WORKER = """
import sys
import jax
import numpy as np
from evaluation.statistics import FeatureStatistics, all_processes

process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
)
x = np.load(f"{out}/features.npy")
rows = x[:300] if process_id == 0 else x[300:]  # unequal shares
local = FeatureStatistics.empty(x.shape[1], {"process": str(process_id)}).update(rows)
local.save(f"{out}/local{process_id}.npz")
all_processes(local).save(f"{out}/all{process_id}.npz")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two JAX processes start and connect: ~10 s
def test_all_processes_on_two_processes(tmp_path):
    x = _features(11, 700, 16)
    np.save(tmp_path / "features.npy", x)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    env["XLA_FLAGS"] = cpu_devices(2)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(i), port, str(tmp_path)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=120)[0].decode()[-3000:] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs
    local = [FeatureStatistics.load(str(tmp_path / f"local{i}.npz")) for i in range(2)]
    combined = [FeatureStatistics.load(str(tmp_path / f"all{i}.npz")) for i in range(2)]
    merged = local[0].merge(local[1])
    for i in range(2):  # every process: the sum in process order, bit for bit; its own metadata
        metadata = {"process": str(i)}
        expected = FeatureStatistics(merged.count, merged.sum, merged.outer_sum, metadata)
        _assert_identical(combined[i], expected)
    assert combined[0].count == 700
    assert _relative(combined[0].covariance, np.cov(x, rowvar=False)) < 1e-10


def test_feature_bank_keeps_rows_up_to_its_cap():
    bank = FeatureBank(max_kept=10)
    rng = np.random.default_rng(12)
    batches = [rng.normal(size=(n, 3)) for n in (4, 0, 5, 6, 2)]
    for batch in batches:
        bank.add(batch)
    kept = bank.array()
    assert bank.seen == 17 and len(bank) == 10
    assert kept.dtype == np.float32
    np.testing.assert_array_equal(kept, np.concatenate(batches)[:10].astype(np.float32))
    batches[0][:] = 0.0  # the bank copied what it kept
    assert bank.array()[0].any()


def test_feature_bank_errors():
    bank = FeatureBank(max_kept=5)
    with pytest.raises(ValueError, match="no rows"):
        bank.array()
    bank.add(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="4 features, earlier ones had 3"):
        bank.add(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\[B, F\]"):
        bank.add(np.zeros(3))
