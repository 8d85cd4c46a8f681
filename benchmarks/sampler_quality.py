"""Sample quality against NFE on an analytic Gaussian mixture, ours beside diffusers' schedulers.

    python benchmarks/sampler_quality.py
    python benchmarks/sampler_quality.py --nfe=10,20,50 --num-samples=50000

Every sampler, ours and the diffusers equivalent, drives the same exact denoiser (the posterior
mean of a 1-D three-mode Gaussian mixture, `diffusion/analytic.py`), so the only error is the
sampler's own discretisation. The figure is the Wasserstein-1 distance between the samples and as
many exact draws from the mixture (x 1e3); the row "exact vs exact" is the finite-sample floor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion import analytic, samplers, schedules  # noqa: E402

MEANS, STDS, WEIGHTS = (-0.8, 0.1, 0.7), (0.05, 0.1, 0.08), (0.3, 0.3, 0.4)

# sampler -> (diffusers scheduler class, its constructor options)
DIFFUSERS = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_small", "clip_sample": False}),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {"solver_type": "bh2", "predict_x0": True}),
}


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Heun spends 2 evaluations per step except the last (onto sigma = 0): NFE = 2 n - 1."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def wasserstein_1d(samples: np.ndarray, reference: np.ndarray) -> float:
    """W1 between two equal-size 1-D empirical distributions: mean gap of the sorted values."""
    return float(np.mean(np.abs(np.sort(samples.ravel()) - np.sort(reference.ravel()))))


def ours(model_fn, schedule, sampler: str, num_steps: int, spacing: str, x_T) -> np.ndarray:
    """Our sampler, one jitted scan."""
    run = jax.jit(
        lambda x, key: (
            samplers.sample(
                model_fn, schedule, x, key, sampler=sampler, num_steps=num_steps, spacing=spacing
            ).samples
        )
    )
    return np.asarray(run(x_T, jax.random.key(7)))


def reference(model_fn, schedule, sampler: str, num_steps: int, spacing: str, x_T) -> np.ndarray:
    """diffusers' PyTorch scheduler with its own grid (same spacing) and its own noise."""
    import diffusers
    import torch

    torch.manual_seed(7)
    class_name, options = DIFFUSERS[sampler]
    scheduler = getattr(diffusers, class_name)(
        num_train_timesteps=schedule.num_timesteps,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        timestep_spacing=spacing,
        steps_offset=0,
        **options,
    )
    scheduler.alphas_cumprod = torch.tensor(np.asarray(schedule.alphas_cumprod))
    scheduler.set_timesteps(num_steps)
    sample = torch.tensor(x_T) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(sample, t)
        t_batch = jnp.full((x_T.shape[0],), float(t))
        eps = model_fn(jnp.asarray(model_in.numpy()), t_batch)
        sample = scheduler.step(torch.tensor(np.asarray(eps)), t, sample).prev_sample
    return sample.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default=",".join(samplers.SAMPLERS))
    parser.add_argument("--nfe", default="10,20,50")
    parser.add_argument("--num-samples", type=int, default=50_000)
    parser.add_argument("--spacing", default="leading", choices=("linspace", "leading", "trailing"))
    parser.add_argument("--no-diffusers", action="store_true")
    args = parser.parse_args()

    schedule = schedules.make_schedule("linear", 1000)
    model_fn = jax.jit(analytic.mixture_model_fn(schedule, MEANS, STDS, WEIGHTS, "eps"))
    exact = analytic.mixture_samples(MEANS, STDS, WEIGHTS, args.num_samples, seed=1)
    floor = wasserstein_1d(
        analytic.mixture_samples(MEANS, STDS, WEIGHTS, args.num_samples, 2), exact
    )
    x_T = np.random.default_rng(3).standard_normal((args.num_samples, 1)).astype(np.float32)
    nfes = [int(n) for n in args.nfe.split(",")]

    print(f"command: python {' '.join(sys.argv)}")
    print(f"mixture means {MEANS}, stds {STDS}, weights {WEIGHTS}; {args.num_samples} samples;")
    print(f"W1(samples, exact draws) x 1e3, linear schedule T=1000, {args.spacing} spacing\n")
    header = " | ".join(f"NFE {n} ours | NFE {n} diffusers" for n in nfes)
    print(f"| sampler | {header} |")
    print("|---|" + "---:|" * (2 * len(nfes)))
    for sampler in args.samplers.split(","):
        cells = []
        for nfe in nfes:
            steps = steps_for_nfe(sampler, nfe)
            drawn = ours(model_fn, schedule, sampler, steps, args.spacing, jnp.asarray(x_T))
            ours_w1 = wasserstein_1d(drawn, exact)
            ref_w1 = float("nan")
            if not args.no_diffusers:
                drawn = reference(model_fn, schedule, sampler, steps, args.spacing, x_T)
                ref_w1 = wasserstein_1d(drawn, exact)
            cells += [f"{1e3 * ours_w1:.2f}", f"{1e3 * ref_w1:.2f}"]
        print(f"| {sampler} | " + " | ".join(cells) + " |", flush=True)
    print("| exact vs exact (floor) | " + " | ".join([f"{1e3 * floor:.2f}"] * 2 * len(nfes)) + " |")


if __name__ == "__main__":
    main()
