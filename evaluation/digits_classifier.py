"""A classifier of the real 8x8 digits, the judge of whether a prompt picked the digit it named."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from input_pipeline import digits


def to_features(images: np.ndarray) -> np.ndarray:
    """[N, S, S, 1] images in [-1, 1] (S a multiple of 8) -> [N, 64] pixels on the 0..16 scale."""
    images = np.asarray(images, np.float32)
    scale = images.shape[1] // digits.IMAGE_SIZE
    pooled = images.reshape(len(images), 8, scale, 8, scale).mean(axis=(2, 4))
    return ((np.clip(pooled, -1.0, 1.0) + 1.0) * 8.0).reshape(len(images), 64)


def train_classifier(seed: int = 0) -> tuple[LogisticRegression, float]:
    """Logistic regression on 80% of the real digits; returns it and its held-out accuracy."""
    images, labels = digits.load_digits_images()
    train_x, test_x, train_y, test_y = train_test_split(
        to_features(images), labels, test_size=0.2, random_state=seed, stratify=labels
    )
    classifier = LogisticRegression(max_iter=5000, C=0.1).fit(train_x, train_y)
    return classifier, float(classifier.score(test_x, test_y))


def prompt_accuracy(
    classifier: LogisticRegression, images: np.ndarray, intended: np.ndarray
) -> float:
    """Share of images the classifier assigns to the digit they were asked for."""
    return float(np.mean(classifier.predict(to_features(images)) == np.asarray(intended)))
