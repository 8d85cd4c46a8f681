"""Loss weighting on the embedded default: uniform MSE against min-SNR-gamma, same steps and seed.

    python benchmarks/loss_weighting.py
    python benchmarks/loss_weighting.py --steps=2000 --num_samples=512
    python benchmarks/loss_weighting.py --sample_seed=1  # re-measure the same runs, other noise
    python benchmarks/loss_weighting.py --weightings=uniform,min_snr,soft_min_snr --snr_gamma=5

Each weighting trains `configs/digits_ddpm.py` (DDPM on scikit-learn's 8x8 digits) into
`<workdir_root>/<weighting>` with `training.loop.train_and_evaluate`; a workdir that already holds
the final checkpoint is not trained again, so a second run only re-measures. Then N images are
drawn from the EMA parameters with the config's sampler (DDIM, 100 trailing steps) and compared
with the real digits:

- Frechet distance in a 16-d PCA space fitted on all real digits: samples against N real digits
  (FD@N), and samples against n real digits with n = min(N, half the data) beside the real-vs-real
  floor at the same n (FD@n). Frechet distances shrink as n grows, so only equal-n figures compare.
  Each is the mean (and std) over --fd_repeats random draws of the real digits; every run sees the
  same draws, so the paired column (a run's FD@n minus the first run's, draw by draw) is less
  noisy than the two means. The floor compares disjoint halves, while the models trained on all
  1797 digits: a model that reproduces its training set can score below it.
- The digits classifier (`evaluation/digits_classifier.py`, logistic regression): mean max class
  probability, share of images with max probability >= 0.9, and the entropy of the predicted class
  histogram (10 equal classes: ln 10 = 2.303) with the largest class's share. The real row gives
  the same on the classifier's held-out 20%.
- The eps-prediction MSE over the last logged interval (min_snr logs it as `unweighted_loss`),
  comparable across weightings, unlike the weighted training loss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import scipy.linalg  # noqa: E402
from absl import logging  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from configs import digits_ddpm  # noqa: E402
from evaluation import digits_classifier  # noqa: E402
from input_pipeline import digits  # noqa: E402
from training import checkpointing, loop, sample_run  # noqa: E402

PCA_DIM = 16
CONFIDENT = 0.9  # max class probability counted as a confident prediction
TIMING_FILE = "train_wall_s.json"  # written into each workdir by the run that trained it


def make_config(
    weighting: str, steps: int, seed: int, snr_gamma: float, num_samples: int
) -> ml_collections.ConfigDict:
    """The embedded default with only the loss weighting, length, seed and sample count set."""
    config = digits_ddpm.get_config()
    config.num_train_steps = steps
    config.seed = seed
    config.sample_every_steps = 0
    config.diffusion.loss_weighting = weighting
    config.diffusion.snr_gamma = snr_gamma
    config.sampler.num_samples = num_samples
    return config


def latest_step(workdir: str, max_to_keep: int) -> int:
    """The newest checkpoint step under `workdir` (0 when there is none)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return 0
    step = checkpointing.make_manager(workdir, max_to_keep).latest_step()
    return 0 if step is None else int(step)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the run; returns its timing, read back if an earlier call trained it."""
    start_step = latest_step(workdir, config.max_checkpoints_to_keep)
    start = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    wall_s = time.perf_counter() - start
    path = os.path.join(workdir, TIMING_FILE)
    if start_step < config.num_train_steps:
        timing = {"start_step": start_step, "end_step": config.num_train_steps, "wall_s": wall_s}
        with open(path, "w") as f:
            json.dump(timing, f)
        return timing
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"start_step": start_step, "end_step": start_step, "wall_s": float("nan")}


def final_eps_mse(workdir: str) -> float:
    """The network-output MSE of the last logged interval (`unweighted_loss`, else `loss`)."""
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415
    from tensorboard.util import tensor_util  # noqa: PLC0415

    events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags().get("tensors", [])
    for tag in ("unweighted_loss", "loss"):
        if tag in tags:
            last = max(events.Tensors(tag), key=lambda event: event.step)
            return float(tensor_util.make_ndarray(last.tensor_proto))
    return float("nan")


def draw_samples(config: ml_collections.ConfigDict, workdir: str, seed: int) -> np.ndarray:
    """`sampler.num_samples` images [N, 8, 8, 1] in [-1, 1] from the run's EMA parameters."""
    _, state, sample_fn = sample_run.restore_sampler(config, workdir)
    return np.asarray(sample_fn(state.ema_params, jax.random.key(seed)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of `a` and `b` (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


def frechet_stats(
    embed, samples: np.ndarray, real: np.ndarray, n_floor: int, repeats: int, seed: int
) -> dict[str, np.ndarray]:
    """FD@N (samples vs N real), FD@n (samples[:n] vs n real) and the floor (n real vs n other
    real), one value per random draw of the real digits (the same draws for every run)."""
    n = len(samples)
    fake = embed(samples)
    at_n, at_floor, floor = [], [], []
    for repeat in range(repeats):
        order = np.random.default_rng([seed, repeat]).permutation(len(real))
        feats = embed(real[order])
        if n <= len(real):
            at_n.append(frechet_distance(fake, feats[:n]))
        at_floor.append(frechet_distance(fake[:n_floor], feats[:n_floor]))
        floor.append(frechet_distance(feats[n_floor : 2 * n_floor], feats[:n_floor]))
    return {"fd_n": np.array(at_n), "fd_floor_n": np.array(at_floor), "floor": np.array(floor)}


def held_out(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of the 20% of the real digits `train_classifier(seed)` does not train on."""
    indices = np.arange(len(labels))
    split = train_test_split(indices, labels, test_size=0.2, random_state=seed, stratify=labels)
    return split[1]


def classifier_stats(classifier, images: np.ndarray) -> dict[str, float]:
    """Mean max probability, share >= CONFIDENT, entropy (nats) and max share of the classes."""
    probs = classifier.predict_proba(digits_classifier.to_features(images))
    top = probs.max(axis=1)
    counts = np.bincount(probs.argmax(axis=1), minlength=digits.NUM_CLASSES)
    share = counts / counts.sum()
    nonzero = share[share > 0]
    return {
        "confidence": float(top.mean()),
        "confident_share": float(np.mean(top >= CONFIDENT)),
        "class_entropy": float(-(nonzero * np.log(nonzero)).sum()),
        "max_class_share": float(share.max()),
    }


def fmt(values: np.ndarray, sign: str = "") -> str:
    """'mean ± std' of Frechet distances over the draws of the real digits."""
    return "—" if len(values) == 0 else f"{np.mean(values):{sign}.2f} ± {np.std(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weightings", default="uniform,min_snr")
    parser.add_argument("--snr_gamma", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample_seed", type=int, default=None, help="sampling key (--seed)")
    parser.add_argument("--num_samples", type=int, default=1024)
    parser.add_argument("--fd_repeats", type=int, default=10)
    parser.add_argument("--workdir_root", default="/tmp/loss_weighting")
    args = parser.parse_args()
    logging.set_verbosity(logging.INFO)

    real, labels = digits.load_digits_images()
    pca = PCA(PCA_DIM, random_state=0).fit(digits_classifier.to_features(real))
    embed = lambda images: pca.transform(digits_classifier.to_features(images))
    n_floor = min(args.num_samples, len(real) // 2)
    classifier, accuracy = digits_classifier.train_classifier(args.seed)
    sample_seed = args.seed if args.sample_seed is None else args.sample_seed

    rows = []
    for weighting in args.weightings.split(","):
        config = make_config(weighting, args.steps, args.seed, args.snr_gamma, args.num_samples)
        workdir = os.path.join(args.workdir_root, weighting)
        timing = train(config, workdir)
        start = time.perf_counter()
        samples = draw_samples(config, workdir, sample_seed)
        sample_s = time.perf_counter() - start
        fd = frechet_stats(embed, samples, real, n_floor, args.fd_repeats, args.seed)
        name = weighting if weighting == "uniform" else f"{weighting} (γ={args.snr_gamma:g})"
        rows.append(
            {
                "name": name,
                "timing": timing,
                "sample_s": sample_s,
                "eps_mse": final_eps_mse(workdir),
                **fd,
                **classifier_stats(classifier, samples),
            }
        )
        print(f"{weighting}: {timing}, {len(samples)} samples in {sample_s:.1f} s", flush=True)
    reference_images = real[held_out(labels, args.seed)]
    reference = classifier_stats(classifier, reference_images)

    n = args.num_samples
    print(f"\ncommand: python {' '.join(sys.argv)}")
    print(
        f"configs/digits_ddpm.py, {args.steps} steps, batch 64, seed {args.seed}; "
        f"{n} EMA samples (DDIM 100 trailing steps, key {sample_seed}); FD in a {PCA_DIM}-d PCA "
        f"of the real digits, mean ± std over {args.fd_repeats} draws of the real digits; "
        f"classifier held-out accuracy {accuracy:.3f} (real row: its {len(reference_images)} "
        f"held-out digits; ln 10 = {np.log(10):.3f})\n"
    )
    base = rows[0] if rows else None
    print(
        f"| run | train wall s | sample s | final eps MSE | FD@{n} vs real | FD@{n_floor} vs real "
        f"| FD@{n_floor} minus {base['name'] if base else '-'}, paired | confidence "
        f"| share p>={CONFIDENT} | class entropy | max class share |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        timing = row["timing"]
        resumed = "" if timing["start_step"] == 0 else f" (from step {timing['start_step']})"
        print(
            f"| {row['name']} | {timing['wall_s']:.0f}{resumed} | {row['sample_s']:.0f} "
            f"| {row['eps_mse']:.4f} | {fmt(row['fd_n'])} | {fmt(row['fd_floor_n'])} "
            f"| {fmt(row['fd_floor_n'] - base['fd_floor_n'], '+')} "
            f"| {row['confidence']:.3f} | {row['confident_share']:.3f} "
            f"| {row['class_entropy']:.3f} | {row['max_class_share']:.3f} |"
        )
    floor = base["floor"] if base else np.array([])
    print(
        f"| real digits | — | — | — | — | {fmt(floor)} (real vs real) | — "
        f"| {reference['confidence']:.3f} | {reference['confident_share']:.3f} "
        f"| {reference['class_entropy']:.3f} | {reference['max_class_share']:.3f} |"
    )


if __name__ == "__main__":
    main()
