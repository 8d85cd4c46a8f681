"""Label -> caption templates: the fixed caption sets that turn class datasets into text-to-image.

A dataset's captions form one table, row `label * num_templates + template`, so a batch carries
int `caption_id`s and the text encoder runs once over the table, not once per step.
"""

from __future__ import annotations

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# dataset -> (templates with {name} / {a_name}, class names)
CAPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "digits": (
        (
            "a handwritten digit {name}",
            "the number {name}, written by hand",
            "a scan of a handwritten {name}",
            "digit {name}",
        ),
        DIGIT_NAMES,
    ),
    "cifar10": (("a photo of {a_name}",), CIFAR10_NAMES),
}


def with_article(noun: str) -> str:
    """'a cat', 'an airplane'."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def caption_table(dataset: str) -> list[str]:
    """Every caption of `dataset`, row label * num_templates + template."""
    if dataset not in CAPTIONS:
        raise ValueError(
            f"data.name={dataset!r} has no captions; datasets with captions: {', '.join(CAPTIONS)}"
        )
    templates, names = CAPTIONS[dataset]
    return [
        template.format(name=name, a_name=with_article(name))
        for name in names
        for template in templates
    ]


def class_prompts(dataset: str) -> list[str]:
    """The first template of each class, in label order ('a handwritten digit zero', ...)."""
    templates, names = CAPTIONS[dataset]
    return [templates[0].format(name=name, a_name=with_article(name)) for name in names]


def caption_ids(
    labels: np.ndarray,
    dataset: str,
    *,
    seed: int,
    step: int,
    process_index: int,
    process_count: int = 1,
) -> np.ndarray:
    """One caption per example: its label's template picked by a pure function of the position.

    The templates are drawn for the whole global batch and sliced, so the processes' slices
    concatenate to the same captions whatever the process count.
    """
    num_templates = len(CAPTIONS[dataset][0])
    count = labels.shape[0]
    rng = np.random.default_rng([seed, step, 2])
    templates = rng.integers(num_templates, size=count * process_count)
    template = templates[process_index * count : (process_index + 1) * count]
    return (labels.astype(np.int32) * num_templates + template).astype(np.int32)
