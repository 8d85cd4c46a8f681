"""training/eval_sampling.py: the labels evaluation asks for, and the CLIP judge."""

import dataclasses

import jax
import numpy as np

import sharding
from evaluation import clip_score, digits_network
from training import eval_sampling
from training.experiment import build_experiment


def test_conditional_labels_follow_the_digits_class_frequencies(tiny_config):
    tiny_config.conditioning.kind = "class"
    experiment = build_experiment(tiny_config)
    prompts, probs = eval_sampling._label_space(experiment)
    counts = np.bincount(digits_network.digits.load_digits_images()[1])
    assert prompts == tuple(str(i) for i in range(10))
    np.testing.assert_allclose(probs, counts / 1797)
    text = dataclasses.replace(
        experiment,
        run=dataclasses.replace(
            experiment.run,
            conditioning=dataclasses.replace(experiment.run.conditioning, kind="text"),
        ),
    )
    prompts, _ = eval_sampling._label_space(text)
    assert prompts[3] == "a handwritten digit three"


def test_clip_judge_scores_sharded_images_against_the_prompt_each_was_asked_for(tiny_clip_model):
    directory, _ = tiny_clip_model
    prompts = ("a red square", "a blue circle", "a digit")
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, tensor=2))
    judge = eval_sampling.ClipJudge(str(directory), prompts, mesh)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(16, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=16)
    judge.add(jax.device_put(images, sharding.batch_sharding(mesh)), labels, valid=12)
    scorer = clip_score.load_clip(directory)
    levels = np.round((images[:12] + 1.0) * 127.5) / 255.0
    want = scorer.clip_score(levels, [prompts[i] for i in labels[:12]])
    assert judge.count == 12
    np.testing.assert_allclose(judge.result(), float(np.mean(want)), rtol=1e-5)
    judge.reset()
    assert judge.count == 0
