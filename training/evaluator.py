"""Reference statistics and the metrics of sampled images: shared by --mode=eval and the loop."""

from __future__ import annotations

import dataclasses
import io
import os
import time

import jax
import numpy as np
from absl import logging

import paths
import sharding
from evaluation import digits_network, scores
from evaluation.eval_config import SweepPoint
from evaluation.feature_network import FeatureNetwork
from evaluation.statistics import FeatureStatistics
from input_pipeline import full_split
from training.eval_features import FeatureAccumulator, make_featurizer
from training.eval_sampling import ClipJudge, EvalSampler
from training.experiment import Experiment
from training.run_config import RunConfig

FEATURES_SUFFIX = ".features.npy"


@dataclasses.dataclass(frozen=True)
class Reference:
    """A data split's statistics under one feature network (features: for KID and P/R)."""

    path: str
    stats: FeatureStatistics
    features: np.ndarray | None


def load_feature_network(run: RunConfig) -> FeatureNetwork:
    """The network eval.feature_network names (weights read from disk; nothing downloaded)."""
    if run.eval.network_name(run.data.name) == "digits":
        return digits_network.load()
    from evaluation import inception  # noqa: PLC0415

    return inception.load_inception(run.eval.inception_path())


def reference_path(run: RunConfig, network: FeatureNetwork) -> str:
    """<stats_dir>/<data set>_<split>_<size>px_<network>-<weights hash>.npz."""
    data = run.data
    dataset = data.tfds_name if data.name == "tfds" else data.name
    split = run.eval.reference_split or data.split
    digest = network.weights_id.rsplit(":", 1)[-1]
    name = f"{dataset}_{split}_{data.image_size}px_{network.name}-{digest}.npz"
    return os.path.join(run.eval.resolved_stats_dir(), name.replace("/", "-"))


def compute_reference(run: RunConfig, network: FeatureNetwork) -> Reference:
    """Features of every image of the reference split (each process its share), saved once."""
    data, split = run.data, run.eval.reference_split or run.data.split
    path = reference_path(run, network)
    local_mesh = sharding.make_mesh(sharding.MeshConfig(), jax.local_devices())
    featurize = make_featurizer(network, local_mesh)
    shards = len(jax.local_devices())
    accumulator = FeatureAccumulator.empty(network, run.eval.keep_features)
    start, seen = time.perf_counter(), 0
    batches = full_split.iterate_split(
        data, split, run.eval.batch_size, jax.process_index(), jax.process_count()
    )
    for batch in batches:
        valid = len(batch)
        padded = np.zeros((-(-valid // shards) * shards, *batch.shape[1:]), np.float32)
        padded[:valid] = batch * 2.0 - 1.0
        features, logits = jax.device_get(featurize(jax.numpy.asarray(padded)))
        positions = (seen + np.arange(valid)) * jax.process_count() + jax.process_index()
        accumulator.add(positions, features[:valid], logits[:valid])
        seen += valid
    gathered = accumulator.finish()
    metadata = {
        "dataset": data.tfds_name if data.name == "tfds" else data.name,
        "split": split,
        "image_size": str(data.image_size),
        "feature_network": network.name,
        "weights": network.weights_id,
    }
    stats = dataclasses.replace(gathered.stats, metadata=metadata)
    if jax.process_index() == 0:
        stats.save(path)
        if gathered.features is not None:
            encoded = io.BytesIO()
            np.save(encoded, gathered.features)
            paths.write_bytes(path + FEATURES_SUFFIX, encoded.getvalue())
    logging.info(
        "Reference statistics of %d images (%s %s, %s) in %.1f s -> %s",
        stats.count,
        metadata["dataset"],
        split,
        network.name,
        time.perf_counter() - start,
        path,
    )
    return Reference(path, stats, gathered.features)


def load_reference(run: RunConfig, network: FeatureNetwork, compute_missing: bool) -> Reference:
    """The stored reference statistics (computed first if missing and `compute_missing`)."""
    path = reference_path(run, network)
    if not paths.as_path(path).exists():
        if not compute_missing:
            raise FileNotFoundError(
                f"No reference statistics at {path}; compute them once with "
                "`python main.py --mode=eval_stats --config=<this config> --workdir=<any>`."
            )
        return compute_reference(run, network)
    features = None
    if run.eval.keep_features and paths.as_path(path + FEATURES_SUFFIX).exists():
        features = np.load(paths.readable(path + FEATURES_SUFFIX), allow_pickle=False)
    return Reference(path, FeatureStatistics.load(path), features)


def evaluate_point(
    experiment: Experiment,
    params,
    sampler: EvalSampler,
    featurize,
    reference: Reference,
    point: SweepPoint,
    num_samples: int,
    clip: ClipJudge | None = None,
) -> dict[str, float]:
    """Metrics of `num_samples` samples drawn with `point`'s sampler and step count (and their
    CLIP score against the prompts asked for, given a `clip` judge)."""
    run = experiment.run
    accumulator = FeatureAccumulator.empty(sampler.network, run.eval.keep_features)
    labels = sampler.draw(params, point, num_samples, featurize, accumulator, clip)
    gathered = accumulator.finish()
    if sampler.network.name != "digits" or not sampler.labels_are_classes:
        labels = None  # accuracy needs the classifier's own classes
    values = scores.all_scores(
        gathered.stats,
        reference.stats,
        sample_logits=gathered.logits,
        sample_features=gathered.features,
        reference_features=reference.features,
        labels=labels,
        kid_subsets=run.eval.kid_subsets,
        kid_subset_size=run.eval.kid_subset_size,
        pr_neighbourhood=run.eval.pr_neighbourhood,
        is_splits=run.eval.is_splits,
        seed=run.eval.seed,
    )
    if clip is not None:
        values["clip_score"] = clip.result()
    return values


def make_clip_judge(experiment: Experiment, sampler: EvalSampler) -> ClipJudge | None:
    """The CLIP judge of eval.clip_model for the sampler's prompts (None when not asked for)."""
    path = experiment.run.eval.clip_model
    return ClipJudge(path, sampler.prompts, experiment.mesh) if path else None


class InLoopEvaluator:
    """eval_every_steps: metrics of eval.in_loop_num_samples EMA samples at the config's sampler.

    The reference statistics are read (or computed, once) and the chain compiled at start-up."""

    def __init__(self, experiment: Experiment, params_sharding):
        run = experiment.run
        self.experiment = experiment
        self.network = load_feature_network(run)
        self.reference = load_reference(run, self.network, compute_missing=True)
        self.featurize = make_featurizer(self.network, experiment.mesh)
        self.point = SweepPoint(run.sampler.name, run.sampler.num_steps)
        chunk = min(run.eval.batch_size, run.eval.in_loop_num_samples)
        self.sampler = EvalSampler(
            experiment, self.network, params_sharding, self.point.sampler, chunk=chunk
        )
        self.clip = make_clip_judge(experiment, self.sampler)

    def __call__(self, ema_params) -> dict[str, float]:
        """The metrics, as scalars named eval/<metric>."""
        values = evaluate_point(
            self.experiment,
            ema_params,
            self.sampler,
            self.featurize,
            self.reference,
            self.point,
            self.experiment.run.eval.in_loop_num_samples,
            self.clip,
        )
        return {f"eval/{name}": value for name, value in values.items()}
