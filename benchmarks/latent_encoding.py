"""What encoding on the fly costs: the frozen encoder's share of a latent diffusion train step.

    python benchmarks/latent_encoding.py                      # digits and ImageNet-256 DiT-XL/2
    python benchmarks/latent_encoding.py --setups=digits --batch=64
    python benchmarks/latent_encoding.py --setups=imagenet --dit_size=XL   # needs ~24 GB RAM

Latent runs encode each batch inside the jitted train step (training/latent.py says why). For
each setup this times, on random weights (speed does not depend on their values) and random
images, the whole latent train step and the encoder alone (posterior sample included) at the
same batch, compiled the same way, best of `--repeats` after a warm-up. The encoder's share is
what a cached latent data set would save per step.
  digits:   configs/digits_latent.py (text U-Net on 8x8x4) with configs/digits_vae.py's
            autoencoder (16x16x1 -> 8x8x4).
  imagenet: configs/imagenet_latent_dit.py (DiT on 32x32x4, bf16 compute; --dit_size, B by
            default: XL's train state alone is 11 GB of float32) with Stable Diffusion's VAE
            layout (128, 256, 512, 512; 256x256x3 -> 32x32x4).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sharding  # noqa: E402
from models import autoencoder as ae  # noqa: E402
from models.autoencoder_weights import save_autoencoder  # noqa: E402
from models.functional import init_params  # noqa: E402
from training import loop  # noqa: E402
from training.experiment import build_experiment  # noqa: E402

SETUPS = {
    "digits": (
        "configs.digits_latent",
        dict(
            in_channels=1,
            out_channels=1,
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=8,
        ),
    ),
    "imagenet": ("configs.imagenet_latent_dit", dict()),  # AutoencoderConfig's defaults: SD's
}


def best_seconds(fn, repeats: int) -> float:
    """Minimum wall time of `fn()` (blocked until ready) over `repeats` calls after a warm-up."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    setup: str, batch: int, repeats: int, directory: str, dit_size: str
) -> dict[str, float]:
    """Seconds per train step and per encode of one batch."""
    module, vae_fields = SETUPS[setup]
    vae = ae.AutoencoderConfig(**vae_fields)
    vae_dir = save_autoencoder(
        Path(directory) / setup, vae, init_params(ae.build_autoencoder(vae), 0)
    )
    config = importlib.import_module(module).get_config()
    config.batch_size = batch
    config.autoencoder.path = str(vae_dir)
    if setup == "imagenet":
        config.model.size = dit_size
    config.mesh.data = jax.device_count()
    experiment = build_experiment(config)
    state, shardings = loop.create_state(experiment, seed=0)
    step = loop.make_train_step(experiment, shardings)
    size, channels = experiment.data.image_size, experiment.data.channels
    rng = np.random.default_rng(0)
    host = {
        "image": rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32),
        "label": (np.arange(batch) % 10).astype(np.int32),
        "caption_id": (np.arange(batch) % 10).astype(np.int32),
    }
    batch_arrays = sharding.host_batch_to_global(host, experiment.mesh)
    frozen = experiment.frozen
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step(holder["state"], batch_arrays, frozen)
        return metrics["loss"]

    encode = jax.jit(experiment.latent.encode)
    key = jax.random.key(0)
    step_s = best_seconds(one_step, repeats)
    encode_s = best_seconds(lambda: encode(frozen.autoencoder, batch_arrays["image"], key), repeats)
    return {"step_s": step_s, "encode_s": encode_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="digits,imagenet")
    parser.add_argument("--batch", type=int, default=0, help="0: 64 for digits, 2 for imagenet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dit_size", default="B", help="imagenet: the DiT size (S, B, L, XL)")
    args = parser.parse_args()
    print(f"{jax.device_count()} x {jax.devices()[0].platform}")
    print("| setup | batch | train step s | encoder s | encoder share of the step |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as directory:
        for setup in args.setups.split(","):
            batch = args.batch or (64 if setup == "digits" else 2)
            r = measure(setup, batch, args.repeats, directory, args.dit_size)
            name = f"imagenet DiT-{args.dit_size}/2" if setup == "imagenet" else setup
            print(
                f"| {name} | {batch} | {r['step_s']:.3f} | {r['encode_s']:.3f} | "
                f"{r['encode_s'] / r['step_s']:.1%} |",
                flush=True,
            )
    print(f"command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
