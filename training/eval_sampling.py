"""Evaluation samples: chunks of eval.batch_size EMA samples, sharded, straight into features.

Conditional models are asked for labels drawn from the data's own label distribution (digits:
its class frequencies; other labelled sets: uniform) — text models for the class's prompt, or
uniformly for one of sampler.prompts when given — so FID compares like with like.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import sharding
from diffusion import samplers
from evaluation.eval_config import SweepPoint
from evaluation.feature_network import FeatureNetwork
from input_pipeline import captions, digits
from training import conditioning
from training.eval_features import FeatureAccumulator, local_rows
from training.experiment import Experiment
from training.sampling import make_sample_fn

PROGRESS_EVERY_SECONDS = 30.0


class EvalSampler:
    """One sampler and step grid of the sweep, compiled once for every step count of the sweep
    on that grid (and the config's own, when it is the config's sampler and grid)."""

    def __init__(
        self,
        experiment: Experiment,
        network: FeatureNetwork,
        params_sharding,
        name: str,
        chunk: int = 0,
        spacing: str = "",
    ):
        run = experiment.run
        self.experiment, self.network = experiment, network
        self.chunk = chunk or run.eval.batch_size  # images per compiled chain call
        self.name, self.spacing = name, spacing or run.sampler.spacing
        own = (name, self.spacing) == (run.sampler.name, run.sampler.spacing)
        steps = [
            p.num_steps
            for p in run.eval.sweep_points(name, run.sampler.num_steps)
            if (p.sampler, p.spacing or run.sampler.spacing) == (name, self.spacing)
        ]
        if own or not steps:
            steps.append(run.sampler.num_steps)
        # A 'file:PATH' spacing is read by SamplerConfig.grid_sigmas, as for --mode=sample.
        sampler = dataclasses.replace(
            run.sampler,
            name=name,
            spacing=self.spacing,
            num_steps=max(steps),
            max_steps=max(max(steps), run.sampler.max_steps),
            num_samples=self.chunk,
        )
        self.prompts, self.label_probs = _label_space(experiment)
        # Labels are classes (so "accuracy" means something) unless free-text prompts were given.
        self.labels_are_classes = self.label_probs is not None and not (
            run.conditioning.kind == "text" and conditioning.parse_prompts(run.sampler.prompts)
        )
        first = self._conditions(np.zeros(self.chunk, np.int64))
        self.sample_fn = make_sample_fn(
            experiment.model,
            experiment.schedule,
            sampler,
            precond=experiment.step_config.precond,
            image_shape=experiment.image_shape,
            mesh=experiment.mesh,
            params_sharding=params_sharding,
            process=experiment.step_config.process,
            flow_shift=run.diffusion.flow_shift,
            conditions=first,
            sequence_parallel=run.mesh.sequence_parallel,
            latent=experiment.latent,
        )

    def evaluations(self, num_steps: int) -> int:
        """Network evaluations per image of a `num_steps` chain (heun: 2n - 1; classifier-free
        guidance batches both branches into one evaluation)."""
        return samplers.count_evaluations(self.sample_fn.grid(num_steps), self.name)

    def draw(
        self,
        params,
        point: SweepPoint,
        num_samples: int,
        featurize,
        accumulator: FeatureAccumulator,
        clip: ClipJudge | None = None,
    ) -> np.ndarray | None:
        """Samples `num_samples` images in chunks into `accumulator` (and `clip`); returns the
        labels asked for (None for unconditional models)."""
        eval_cfg = self.experiment.run.eval
        base_key = jax.random.key(eval_cfg.seed)
        num_chunks = -(-num_samples // self.chunk)
        labels = []
        if clip is not None:
            clip.reset()
        start = last_report = time.perf_counter()
        for chunk in range(num_chunks):
            wanted = self._labels(chunk)
            images = self.sample_fn.on_device(
                params,
                jax.random.fold_in(base_key, chunk),
                num_steps=point.num_steps,
                conditions=None if wanted is None else self._conditions(wanted),
            )
            features, logits = featurize(images)
            indices, feature_rows = local_rows(features)
            _, logit_rows = local_rows(logits)
            keep = indices < min(self.chunk, num_samples - chunk * self.chunk)
            accumulator.add(
                indices[keep] + chunk * self.chunk, feature_rows[keep], logit_rows[keep]
            )
            if wanted is not None:
                labels.append(wanted[: min(self.chunk, num_samples - chunk * self.chunk)])
            if clip is not None:
                clip.add(images, wanted, min(self.chunk, num_samples - chunk * self.chunk))
            now = time.perf_counter()
            if now - last_report > PROGRESS_EVERY_SECONDS or chunk == num_chunks - 1:
                done = min(num_samples, (chunk + 1) * self.chunk)
                rate = done / (now - start)
                logging.info(
                    "eval %s@%s %d steps: %d/%d samples, %.1f/s, ETA %.0f s",
                    point.sampler,
                    self.spacing,
                    point.num_steps,
                    done,
                    num_samples,
                    rate,
                    (num_samples - done) / rate,
                )
                last_report = now
        return np.concatenate(labels) if labels else None

    def _labels(self, chunk: int) -> np.ndarray | None:
        if self.label_probs is None:
            return None
        rng = np.random.default_rng([self.experiment.run.eval.seed, chunk])
        return rng.choice(len(self.label_probs), size=self.chunk, p=self.label_probs)

    def _conditions(self, labels: np.ndarray):
        experiment = self.experiment
        kind = experiment.run.conditioning.kind
        if kind == "none":
            return None
        return conditioning.labelled_conditions(
            kind,
            labels,
            prompts=self.prompts,
            negative_prompt=experiment.run.sampler.negative_prompt,
            num_classes=experiment.num_classes,
            encoder=experiment.text_encoder,
        )


def _label_space(experiment: Experiment) -> tuple[tuple[str, ...], np.ndarray | None]:
    """(prompts or class names, the probability of each) for conditional models."""
    run = experiment.run
    kind, data = run.conditioning.kind, run.data
    if kind == "none":
        return (), None
    given = conditioning.parse_prompts(run.sampler.prompts) if kind == "text" else []
    if given:
        return tuple(given), np.full(len(given), 1.0 / len(given))
    num_classes = experiment.num_classes
    if kind == "text":
        prompts = tuple(captions.class_prompts(data.name))
        num_classes = len(prompts)
    else:
        prompts = tuple(str(label) for label in range(num_classes))
    if data.name == "digits":
        counts = np.bincount(digits.load_digits_images()[1], minlength=num_classes)
        return prompts, counts / counts.sum()
    return prompts, np.full(num_classes, 1.0 / num_classes)


class ClipJudge:
    """Running CLIP score of sampled images against the prompts they were asked for."""

    def __init__(self, path: str, prompts: tuple[str, ...], mesh):
        from evaluation import clip_score  # noqa: PLC0415 (tokenizers only when used)

        self.scorer = clip_score.load_clip(path)
        self.prompt_embeds = np.asarray(self.scorer.text_embeddings(list(prompts)), np.float64)
        batch = sharding.batch_sharding(mesh)
        params = jax.device_put(self.scorer.vision.params, sharding.replicated(mesh))

        def embed(params, images):
            levels = jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5)
            return self.scorer.apply_images(params, levels / 255.0)

        jitted = jax.jit(embed, in_shardings=(sharding.replicated(mesh), batch))
        self.embed = lambda images: jitted(params, images)
        self.reset()

    def reset(self) -> None:
        """Forgets the images scored so far."""
        self.total, self.count = 0.0, 0

    def add(self, images: jax.Array, labels: np.ndarray, valid: int) -> None:
        """Scores this process's rows among the first `valid` of a chunk."""
        indices, embeds = local_rows(self.embed(images))
        keep = indices < valid
        image = np.asarray(embeds[keep], np.float64)
        text = self.prompt_embeds[labels[indices[keep]]]
        cosine = np.sum(image * text, axis=1) / (
            np.linalg.norm(image, axis=1) * np.linalg.norm(text, axis=1)
        )
        self.total += float(np.sum(100.0 * np.maximum(cosine, 0.0)))
        self.count += int(keep.sum())

    def result(self) -> float:
        """The mean over every process's images (one small collective)."""
        totals = np.array([self.total, self.count], np.float64)
        if jax.process_count() > 1:
            totals = np.asarray(multihost_utils.process_allgather(totals)).sum(axis=0)
        return float(totals[0] / totals[1])
