import numpy as np

from evaluation import digits_classifier
from input_pipeline import digits


def test_classifier_reads_real_digits_and_enlarged_copies():
    classifier, held_out = digits_classifier.train_classifier()
    assert held_out > 0.93
    images, labels = digits.load_digits_images(image_size=16)  # pixel-repeated x2
    accuracy = digits_classifier.prompt_accuracy(classifier, images, labels)
    assert accuracy > 0.95


def test_noise_is_not_read_as_the_prompted_digit():
    classifier, _ = digits_classifier.train_classifier()
    noise = np.random.default_rng(0).uniform(-1, 1, (500, 8, 8, 1))
    intended = np.repeat(np.arange(10), 50)
    assert digits_classifier.prompt_accuracy(classifier, noise, intended) < 0.25
