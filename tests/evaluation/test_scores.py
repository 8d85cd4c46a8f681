"""evaluation/scores.py: the assembled metrics of one evaluation."""

import numpy as np

from evaluation import metrics, scores
from evaluation.statistics import FeatureStatistics


def test_class_scores_from_logits_with_known_probabilities():
    confident = np.log(np.array([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.3, 0.7]]))
    values = scores.class_scores(confident, labels=np.array([0, 0, 0, 1]))
    assert values["confidence"] == np.mean([0.95, 0.95, 0.6, 0.7])
    assert values["recognised"] == 0.5  # two rows reach p >= 0.9
    assert values["accuracy"] == 0.75  # row 1 was asked for class 0 and looks like class 1
    assert "accuracy" not in scores.class_scores(confident)


def test_all_scores_of_a_set_against_itself_and_against_a_shifted_copy():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 8))
    logits = rng.normal(size=(300, 10))
    stats = FeatureStatistics.empty(8).update(features)
    same = scores.all_scores(
        stats,
        stats,
        sample_logits=logits,
        sample_features=features,
        reference_features=features,
        kid_subset_size=100,
    )
    assert abs(same["fid"]) < 1e-9 and same["precision"] == same["recall"] == 1.0
    shifted = FeatureStatistics.empty(8).update(features + 1.0)
    moved = scores.all_scores(
        shifted,
        stats,
        sample_logits=logits,
        sample_features=features + 1.0,
        reference_features=features,
        kid_subset_size=100,
    )
    # KID is unbiased: subsets of one set scatter around 0, a shifted copy sits far above.
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] < moved["kid_mean"] / 10
    moved = scores.all_scores(shifted, stats, sample_logits=logits)
    np.testing.assert_allclose(moved["fid"], 8.0, rtol=1e-9)  # |mu1 - mu2|^2, same covariance
    assert "kid_mean" not in moved  # no raw features: FID and IS only
    expected_is = metrics.inception_score(logits, 10)
    assert moved["inception_score"] == expected_is.mean
