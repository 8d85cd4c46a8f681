"""evaluation/metrics.py against pytorch-fid 0.3 and torch-fidelity 0.4 on the same feature arrays,
and against closed forms (the references are imported through tests/evaluation/torch_references.py,
which works around the CUDA-only torchvision wheels).
"""

import inspect

import numpy as np
import pytest
import scipy.linalg
import torch

from evaluation import metrics
from tests.evaluation import torch_references

# pytorch-fid's sqrtm(disp=False) warns on SciPy >= 1.16; the reference's business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated")

PARITY = 1e-6  # relative agreement with the reference implementations (the brief)


def _references() -> dict:
    """calculate_frechet_distance (pytorch-fid) and the torch-fidelity *_features_to_metric."""
    fid_score = torch_references.pytorch_fid_score()
    return {
        "calculate_frechet_distance": fid_score.calculate_frechet_distance,
        "DEFAULTS": torch_references.torch_fidelity_module("defaults").DEFAULTS,
        "kid_features_to_metric": torch_references.torch_fidelity_module(
            "metric_kid"
        ).kid_features_to_metric,
        "isc_features_to_metric": torch_references.torch_fidelity_module(
            "metric_isc"
        ).isc_features_to_metric,
        "prc_features_to_metric": torch_references.torch_fidelity_module(
            "metric_prc"
        ).prc_features_to_metric,
    }


REF = _references()


def _rel(ours: float, ref: float) -> float:
    return abs(ours - ref) / abs(ref)


def _features(seed: int, n: int, dim: int, offset: float = 0.0) -> np.ndarray:
    """[n, dim] correlated Gaussian features with a non-zero mean."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing + rng.normal(size=dim) * 0.3 + offset


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


# --- Fréchet distance ---------------------------------------------------------------------------


@pytest.mark.parametrize("n1,n2,dim", [(400, 300, 16), (2000, 1500, 64)])
def test_frechet_matches_pytorch_fid(n1, n2, dim):
    m1, c1 = _moments(_features(0, n1, dim))
    m2, c2 = _moments(_features(1, n2, dim) * 1.3)
    ours = metrics.frechet_distance(m1, c1, m2, c2)
    ref = REF["calculate_frechet_distance"](m1, c1, m2, c2)
    assert ours > 1.0
    assert _rel(ours, ref) < PARITY, (ours, ref)  # measured 7e-14 and 3e-14


@pytest.mark.parametrize("n", [500, 20])  # full rank, and rank 19 of 32
def test_frechet_of_a_distribution_with_itself_is_zero(n):
    m, c = _moments(_features(2, n, 32, offset=5.0))
    assert abs(metrics.frechet_distance(m, c, m, c)) < 1e-8


def test_frechet_is_symmetric():
    m1, c1 = _moments(_features(3, 300, 24))
    m2, c2 = _moments(_features(4, 40, 24))  # singular
    assert metrics.frechet_distance(m1, c1, m2, c2) == pytest.approx(
        metrics.frechet_distance(m2, c2, m1, c1), rel=1e-12
    )


def test_frechet_rank_one_closed_form():
    """C1 = v v^T: sqrt(C1) C2 sqrt(C1) = (v^T C2 v / |v|^2) v v^T, so tr sqrt(C1 C2) =
    sqrt(v^T C2 v); both covariances singular (C2 of rank 5 in 12 dimensions)."""
    rng = np.random.default_rng(5)
    v = rng.normal(size=12)
    a = rng.normal(size=(12, 5))
    c1, c2 = np.outer(v, v), a @ a.T
    m1, m2 = rng.normal(size=12), rng.normal(size=12)
    expected = (m1 - m2) @ (m1 - m2) + v @ v + np.trace(c2) - 2 * np.sqrt(v @ c2 @ v)
    assert metrics.trace_sqrt_product(c1, c2) == pytest.approx(np.sqrt(v @ c2 @ v), rel=1e-12)
    assert metrics.frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-12)


def test_frechet_commuting_singular_closed_form():
    """Shared eigenvectors U: tr sqrt(C1 C2) = sum sqrt(a_i b_i), zero where either is zero."""
    rng = np.random.default_rng(6)
    u, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    a = np.array([4.0, 2.0, 1.0, 0.5, 0, 0, 0, 0, 0, 0])
    b = np.array([1.0, 0, 3.0, 2.0, 7.0, 0, 0, 0, 0, 0])
    c1, c2 = (u * a) @ u.T, (u * b) @ u.T
    expected = a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    zero = np.zeros(10)
    assert metrics.frechet_distance(zero, c1, zero, c2) == pytest.approx(expected, rel=1e-12)


def test_frechet_rank_deficient_sample_covariances_match_nuclear_norm():
    """n < F: tr sqrt(C1 C2) = nuclear norm of sqrt(C2) sqrt(C1), an independent (SVD) route."""
    x, y = _features(7, 20, 48), _features(8, 30, 48) * 0.7
    (m1, c1), (m2, c2) = _moments(x), _moments(y)
    root1, root2 = scipy.linalg.sqrtm(c1).real, scipy.linalg.sqrtm(c2).real
    nuclear = np.linalg.svd(root2 @ root1, compute_uv=False).sum()
    assert metrics.trace_sqrt_product(c1, c2) == pytest.approx(nuclear, rel=1e-6)
    # pytorch-fid's eps = 1e-6 offset moves its answer by O(sqrt(eps)): agreement to ~1e-4.
    ours, ref = (
        metrics.frechet_distance(m1, c1, m2, c2),
        REF["calculate_frechet_distance"](m1, c1 + 1e-6 * np.eye(48), m2, c2 + 1e-6 * np.eye(48)),
    )
    assert np.isfinite(ours) and _rel(ours, ref) < 1e-3


def test_frechet_shape_error():
    with pytest.raises(ValueError, match="covariances"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# --- KID ----------------------------------------------------------------------------------------


def test_defaults_are_torch_fidelitys():
    """Defaults of every metric equal torch-fidelity's (so default calls match its numbers)."""
    defaults = REF["DEFAULTS"]
    kid = inspect.signature(metrics.kernel_inception_distance).parameters
    assert kid["num_subsets"].default == defaults["kid_subsets"] == 100
    assert kid["subset_size"].default == defaults["kid_subset_size"] == 1000
    assert kid["degree"].default == defaults["kid_kernel_poly_degree"] == 3
    assert kid["gamma"].default is defaults["kid_kernel_poly_gamma"] is None  # 1 / F
    assert kid["coef"].default == defaults["kid_kernel_poly_coef0"] == 1
    isc = inspect.signature(metrics.inception_score).parameters
    assert isc["splits"].default == defaults["isc_splits"] == 10
    assert isc["shuffle"].default is defaults["samples_shuffle"] is True
    prc = inspect.signature(metrics.precision_recall).parameters
    assert prc["k"].default == defaults["prc_neighborhood"] == 3
    for seed in (kid["seed"], isc["seed"]):
        assert seed.default == defaults["rng_seed"] == 2020


def _kid_parity(n1: int, n2: int, kwargs: dict) -> None:
    """Our KID and torch-fidelity's on the same float64 features (float32 ones would make the
    reference round its kernel sums to float32: measured 3e-5 relative on the std)."""
    x, y = _features(10, n1, 16), _features(11, n2, 16) * 1.1
    ours = metrics.kernel_inception_distance(x, y, **kwargs)
    names = {"num_subsets": "kid_subsets", "subset_size": "kid_subset_size", "seed": "rng_seed"}
    ref_kwargs = {names[k]: v for k, v in kwargs.items()}
    ref = REF["kid_features_to_metric"](
        torch.from_numpy(x), torch.from_numpy(y), verbose=False, **ref_kwargs
    )
    assert ours.mean > 0 and ours.std > 0
    assert _rel(ours.mean, ref["kernel_inception_distance_mean"]) < PARITY  # measured 4e-16
    assert _rel(ours.std, ref["kernel_inception_distance_std"]) < PARITY


def test_kid_matches_torch_fidelity():
    _kid_parity(300, 250, {"num_subsets": 20, "subset_size": 250, "seed": 7})


@pytest.mark.slow  # 100 subsets of 1000: ~16 s here, half of it the reference
def test_kid_matches_torch_fidelity_at_its_defaults():
    _kid_parity(1000, 1200, {})


def test_kid_subset_size_error_names_both_counts():
    x, y = np.zeros((50, 4)), np.zeros((80, 4))
    with pytest.raises(ValueError, match=r"features1: 50, features2: 80"):
        metrics.kernel_inception_distance(x, y, subset_size=60)


# --- Inception Score ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,kwargs",
    [(1000, {}), (1003, {"splits": 7, "shuffle": False}), (500, {"splits": 4, "seed": 3})],
)
def test_inception_score_matches_torch_fidelity(n, kwargs):
    logits = np.random.default_rng(20).normal(size=(n, 10)) * 3.0
    logits[:, 3] += 2.0  # a non-uniform marginal
    ours = metrics.inception_score(logits, **kwargs)
    ref_kwargs = {"rng_seed": kwargs["seed"]} if "seed" in kwargs else {}
    ref_kwargs.update({k: v for k, v in kwargs.items() if k in ("splits", "shuffle")})
    ref = REF["isc_features_to_metric"](torch.from_numpy(logits), **ref_kwargs)
    assert 1.0 < ours.mean < 10.0 and ours.std > 0
    assert _rel(ours.mean, ref["inception_score_mean"]) < PARITY  # measured 0 (std 4e-15)
    assert _rel(ours.std, ref["inception_score_std"]) < PARITY


def test_inception_score_of_confident_balanced_classes_is_the_class_count():
    """One-hot predictions (p(y|x) = 0 elsewhere) spread evenly over K classes score exactly K."""
    logits = 1000.0 * np.eye(8)[np.arange(800) % 8]  # exp(-1000) underflows to 0
    score = metrics.inception_score(logits, splits=10, shuffle=False)
    assert score.mean == pytest.approx(8.0, rel=1e-12) and score.std < 1e-12


# --- precision / recall -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_precision_recall_matches_torch_fidelity(dtype):
    gen = _features(30, 700, 16).astype(dtype)
    real = (_features(31, 500, 16) * 1.2 + 0.2).astype(dtype)
    ours = metrics.precision_recall(gen, real, block_size=96)  # blocks that do not divide N
    ref = REF["prc_features_to_metric"](
        torch.from_numpy(gen), torch.from_numpy(real), verbose=False
    )
    assert 0.05 < ours.precision < 0.95 and 0.05 < ours.recall < 0.95
    assert _rel(ours.precision, ref["precision"]) < PARITY  # same counts: equal
    assert _rel(ours.recall, ref["recall"]) < PARITY
    assert _rel(ours.f_score, ref["f_score"]) < PARITY


def test_precision_recall_same_for_every_block_size():
    gen, real = _features(32, 230, 8), _features(33, 170, 8)
    results = {metrics.precision_recall(gen, real, k=5, block_size=b) for b in (1, 7, 64, 1000)}
    assert len(results) == 1


def test_precision_recall_of_a_set_with_itself_is_one():
    x = _features(34, 200, 8)
    assert metrics.precision_recall(x, x) == metrics.PrecisionRecall(1.0, 1.0, 1.0)


def test_precision_recall_k_error_names_counts():
    with pytest.raises(ValueError, match=r"generated: 3, real: 10"):
        metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
