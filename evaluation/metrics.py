"""Sample-quality metrics on feature arrays, in numpy float64: FID, KID, Inception Score, P/R.

Each takes numpy features (or logits) and computes in float64 whatever dtype they arrive in.
Defaults, random draws and formulas follow pytorch-fid 0.3 (FID) and torch-fidelity 0.4 (KID,
IS, precision/recall), so the numbers are comparable with papers that used them; the tests hold
each to its reference on the same arrays (torch-fidelity computes KID and P/R in the features'
dtype: fed float32 it rounds its kernel sums and distances to float32, while these stay in
float64).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special


@dataclasses.dataclass(frozen=True)
class MeanStd:
    """A metric's mean and (population, ddof=0) standard deviation over subsets or splits."""

    mean: float
    std: float


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision, recall and their F1 score, as torch-fidelity reports them."""

    precision: float  # fraction of generated samples inside some real sample's k-NN ball
    recall: float  # fraction of real samples inside some generated sample's k-NN ball
    f_score: float  # 2 P R / max(1e-5, P + R)


def _symmetric(a: np.ndarray) -> np.ndarray:
    return (a + a.T) / 2


def _psd_eigvals_floor(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with rounding-level ones (and negatives) set to 0."""
    floor = w.size * np.finfo(np.float64).eps * float(np.abs(w).max(initial=0.0))
    return np.where(w > floor, w, 0.0)


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr sqrt(C1 C2) for symmetric PSD C1, C2, singular ones included (Heusel et al. 2017).

    C1 C2 is similar to the symmetric PSD matrix S C2 S with S = sqrt(C1), so the trace is the
    sum of the square roots of S C2 S's eigenvalues (two `eigh`s, no complex sqrtm). Eigenvalues
    within rounding (F eps max|lambda|) of zero count as zero, so null spaces add no sqrt(eps).
    """
    w, v = np.linalg.eigh(_symmetric(cov1))
    root1 = (v * np.sqrt(_psd_eigvals_floor(w))) @ v.T  # sqrt(C1)
    inner = np.linalg.eigvalsh(_symmetric(root1 @ cov2 @ root1))
    return float(np.sqrt(_psd_eigvals_floor(inner)).sum())


def frechet_distance(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray
) -> float:
    """Fréchet distance of N(mean1, cov1) and N(mean2, cov2): FID (Heusel et al. 2017), float64.

    |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr sqrt(C1 C2); exact for singular covariances too
    (fewer samples than features), where pytorch-fid falls back to adding 1e-6 I to both.
    """
    mu1, mu2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    dim = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu2.shape != (dim,) or c1.shape != (dim, dim) or c2.shape != (dim, dim):
        raise ValueError(
            f"frechet_distance: means must be [F] and covariances [F, F]; got means "
            f"{mu1.shape}, {mu2.shape} and covariances {c1.shape}, {c2.shape}"
        )
    diff = mu1 - mu2
    tr_sqrt = trace_sqrt_product(c1, c2)
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef: float) -> float:
    """Unbiased MMD^2 of two equal-size samples under (gamma x.y + coef)^degree (Binkowski 2018)."""
    m = x.shape[0]
    k_xx = (x @ x.T * gamma + coef) ** degree  # [m, m]
    k_yy = (y @ y.T * gamma + coef) ** degree  # [m, m]
    k_xy = (x @ y.T * gamma + coef) ** degree  # [m, m]
    within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    return float(within / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
) -> MeanStd:
    """KID: unbiased polynomial-kernel MMD^2 averaged over random subsets (Binkowski et al. 2018).

    Subsets are drawn as torch-fidelity draws them (one np.random.RandomState(seed); per subset
    `choice(n1, subset_size, replace=False)` then the same for n2), so the same seed gives the
    same subsets and numbers. gamma defaults to 1 / F. Cost: 3 [s, F] x [F, s] matmuls a subset.
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID: features must be [N1, F] and [N2, F], got {x.shape} and {y.shape}")
    n1, n2 = x.shape[0], y.shape[0]
    if not 2 <= subset_size <= min(n1, n2):
        raise ValueError(
            f"KID: subset_size {subset_size} must be >= 2 and <= both sample counts "
            f"(features1: {n1}, features2: {n2})"
        )
    if num_subsets < 1:
        raise ValueError(f"KID: num_subsets must be >= 1, got {num_subsets}")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        a = x[rng.choice(n1, subset_size, replace=False)]
        b = y[rng.choice(n2, subset_size, replace=False)]
        mmds[i] = _mmd2_unbiased(a, b, degree, gamma, coef)
    return MeanStd(float(mmds.mean()), float(mmds.std()))


def inception_score(
    logits: np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> MeanStd:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) per split (Salimans et al. 2016), from logits.

    As torch-fidelity: rows shuffled by np.random.RandomState(seed).permutation (if `shuffle`),
    softmax in float64, split i is rows [i N // splits, (i + 1) N // splits), p(y) is the split's
    mean; mean and population std over splits. Terms with p(y|x) = 0 count as 0.
    """
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or not 1 <= splits <= z.shape[0]:
        raise ValueError(f"IS: logits must be [N, K] with N >= splits ({splits}), got {z.shape}")
    n = z.shape[0]
    if shuffle:
        z = z[np.random.RandomState(seed).permutation(n)]
    log_p = z - special.logsumexp(z, axis=1, keepdims=True)  # [N, K] log p(y|x)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_c, log_p_c = p[lo:hi], log_p[lo:hi]
        with np.errstate(divide="ignore"):
            log_q = np.log(p_c.mean(axis=0))  # [K] log p(y); -inf only where p_c is all 0
        terms = np.where(p_c > 0, p_c * (log_p_c - log_q), 0.0)
        scores.append(np.exp(terms.sum(axis=1).mean()))
    return MeanStd(float(np.mean(scores)), float(np.std(scores)))


def _squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """[A, B] squared Euclidean distances |a_i|^2 + |b_j|^2 - 2 a_i.b_j, clipped at 0."""
    d = (a * a).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _knn_radii_sq(x: np.ndarray, k: int, block_size: int) -> np.ndarray:
    """[N] squared distance from each row of x to its k-th nearest other row (k+1-th with self)."""
    x_sq = (x * x).sum(axis=1)
    radii = np.empty(x.shape[0])
    for lo in range(0, x.shape[0], block_size):
        d = _squared_distances(x[lo : lo + block_size], x, x_sq)  # [b, N]
        radii[lo : lo + block_size] = np.partition(d, k, axis=1)[:, k]
    return radii


def _fraction_inside(
    queries: np.ndarray, centres: np.ndarray, radii_sq: np.ndarray, block_size: int
) -> float:
    """Fraction of query rows within radius of at least one centre (on the boundary counts)."""
    c_sq = (centres * centres).sum(axis=1)
    inside = 0
    for lo in range(0, queries.shape[0], block_size):
        d = _squared_distances(queries[lo : lo + block_size], centres, c_sq)  # [b, Nc]
        inside += int((d <= radii_sq[None, :]).any(axis=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    generated: np.ndarray, real: np.ndarray, k: int = 3, block_size: int = 1000
) -> PrecisionRecall:
    """Improved precision and recall with k-NN balls (Kynkäänniemi et al. 2019), float64.

    A sample's ball reaches its k-th nearest neighbour in its own set (the k+1-th smallest
    distance counting itself, as torch-fidelity). Distances are computed `block_size` query rows
    at a time: memory is one [block_size, N] float64 block (80 MB for 1000 x 10k).
    """
    gen, ref = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    if gen.ndim != 2 or ref.ndim != 2 or gen.shape[1] != ref.shape[1]:
        raise ValueError(
            f"precision_recall: features must be [N1, F] and [N2, F], got {gen.shape}, {ref.shape}"
        )
    if not 1 <= k < min(gen.shape[0], ref.shape[0]):
        raise ValueError(
            f"precision_recall: k={k} needs more than k samples in each set "
            f"(generated: {gen.shape[0]}, real: {ref.shape[0]})"
        )
    recall = _fraction_inside(ref, gen, _knn_radii_sq(gen, k, block_size), block_size)
    precision = _fraction_inside(gen, ref, _knn_radii_sq(ref, k, block_size), block_size)
    return PrecisionRecall(
        precision, recall, 2 * precision * recall / max(1e-5, precision + recall)
    )
