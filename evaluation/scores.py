"""Every metric of one evaluation, from the samples' and the reference's features (numpy only)."""

from __future__ import annotations

import numpy as np

from evaluation import metrics
from evaluation.statistics import FeatureStatistics

PR_MAX_SAMPLES = 10_000  # k-NN balls are O(N^2 F): 10k x 10k x 2048 is minutes on a CPU


def all_scores(
    sample_stats: FeatureStatistics,
    reference_stats: FeatureStatistics,
    *,
    sample_logits: np.ndarray,
    sample_features: np.ndarray | None = None,
    reference_features: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_neighbourhood: int = 3,
    is_splits: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """FID always; KID and precision/recall with raw features; IS and class scores from logits.

    `labels` (conditional samples): the class each sample was asked for, giving `accuracy`.
    """
    scores = {
        "fid": metrics.frechet_distance(
            sample_stats.mean,
            sample_stats.covariance,
            reference_stats.mean,
            reference_stats.covariance,
        ),
        "num_samples": float(sample_stats.count),
        "num_reference": float(reference_stats.count),
    }
    if sample_features is not None and reference_features is not None:
        size = min(kid_subset_size, len(sample_features), len(reference_features))
        kid = metrics.kernel_inception_distance(
            sample_features, reference_features, kid_subsets, size, seed=seed
        )
        scores.update(kid_mean=kid.mean, kid_std=kid.std, kid_subset_size=float(size))
        pr = metrics.precision_recall(
            sample_features[:PR_MAX_SAMPLES], reference_features[:PR_MAX_SAMPLES], pr_neighbourhood
        )
        scores.update(precision=pr.precision, recall=pr.recall)
    splits = min(is_splits, len(sample_logits))
    inception = metrics.inception_score(sample_logits, splits)
    scores.update(inception_score=inception.mean, inception_score_std=inception.std)
    scores.update(class_scores(sample_logits, labels))
    return scores


def class_scores(logits: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """How recognisable samples are to the feature network's classifier.

    confidence: mean top-class probability; recognised: share with top probability >= 0.9;
    accuracy (given the intended labels): share classified as the class they were asked for.
    """
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    top = probs.max(axis=1)
    scores = {"confidence": float(top.mean()), "recognised": float(np.mean(top >= 0.9))}
    if labels is not None:
        scores["accuracy"] = float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
    return scores
