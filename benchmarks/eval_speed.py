"""Speed of --mode=eval: sampling and feature extraction, separately, and 50k CIFAR extrapolated.

    python benchmarks/eval_speed.py                        # digits and CIFAR U-Nets, this machine
    python benchmarks/eval_speed.py --models=digits --chunk=500

For each model (configs/digits_ddpm.py's U-Net with the digits feature network; configs/
cifar_ddpm.py's 35.7M U-Net with the FID Inception), with freshly initialised weights (speed does
not depend on their values; the Inception's are random too, as its real ones cannot be
downloaded here): one chunk of `--chunk` images drawn with DDIM at `--steps` steps through the
same sharded chain --mode=eval uses, and the same chunk through the feature network. Timings
are the best of `--repeats` calls after a warm-up (compile excluded). The 50k line is
50,000 x 100 NFE at the measured per-image-per-NFE cost plus 50,000 feature passes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

from evaluation import digits_network, inception  # noqa: E402
from evaluation.eval_config import SweepPoint  # noqa: E402
from evaluation.feature_network import FeatureNetwork  # noqa: E402
from models.functional import init_params  # noqa: E402
from training import loop  # noqa: E402
from training.eval_features import make_featurizer  # noqa: E402
from training.eval_sampling import EvalSampler  # noqa: E402
from training.experiment import build_experiment  # noqa: E402

CONFIGS = {"digits": "configs.digits_ddpm", "cifar": "configs.cifar_ddpm"}
PAPER_SAMPLES, PAPER_NFE = 50_000, 100


def random_inception() -> FeatureNetwork:
    """The FID Inception with random weights (same graph and cost as the real ones)."""
    params = init_params(lambda rngs: inception.FIDInceptionV3(rngs=rngs), 0)
    return inception.as_feature_network(params, "random")


def best_seconds(fn, repeats: int) -> float:
    """Minimum wall time of `fn()` (blocked until ready) over `repeats` calls after a warm-up."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model: str, chunk: int, steps: int, repeats: int) -> dict[str, float]:
    """Images/s of sampling (per NFE too) and of feature extraction for one model."""
    config = importlib.import_module(CONFIGS[model]).get_config()
    config.eval.batch_size = chunk
    experiment = build_experiment(config)
    state, shardings = loop.create_state(experiment, seed=0)
    network = digits_network.load() if model == "digits" else random_inception()
    sampler = EvalSampler(experiment, network, shardings.ema_params, "ddim")
    point = SweepPoint("ddim", steps)
    key = jax.random.key(0)
    images = sampler.sample_fn.on_device(state.ema_params, key, num_steps=steps)
    featurize = make_featurizer(network, experiment.mesh)
    sample_s = best_seconds(
        lambda: sampler.sample_fn.on_device(state.ema_params, key, num_steps=point.num_steps),
        repeats,
    )
    feature_s = best_seconds(lambda: featurize(images), repeats)
    per_image_nfe = sample_s / (chunk * steps)
    return {
        "sample_images_per_s": chunk / sample_s,
        "image_nfe_per_s": 1.0 / per_image_nfe,
        "feature_images_per_s": chunk / feature_s,
        "paper_hours": (
            PAPER_SAMPLES * PAPER_NFE * per_image_nfe + PAPER_SAMPLES * feature_s / chunk
        )
        / 3600.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,cifar")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{jax.device_count()} x {jax.devices()[0].platform}; chunk {args.chunk}, DDIM {args.steps}"
    )
    print(
        "| model | sampling images/s | image-NFE/s | features images/s | 50k x 100 NFE + features |"
    )
    print("|---|---:|---:|---:|---:|")
    for model in args.models.split(","):
        r = measure(model, args.chunk, args.steps, args.repeats)
        print(
            f"| {model} | {r['sample_images_per_s']:.1f} | {r['image_nfe_per_s']:.0f} | "
            f"{r['feature_images_per_s']:.1f} | {r['paper_hours']:.1f} h |",
            flush=True,
        )
    print(f"command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
