"""diffusers' side of benchmarks/few_step.py: its deterministic schedulers in every timestep
spacing and sigma placement they take, on our schedule, driven by the same exact model.

torch and diffusers are test-only dependencies, imported when a scheduler is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import jax.numpy as jnp
import numpy as np

SPACINGS = ("leading", "linspace", "trailing")  # Lin et al. 2024, table 2
# Sigma placements that override the timestep spacing, where a class takes the option.
PLACEMENTS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas")

# label -> (scheduler class, constructor options beyond the schedule and the spacing).
SCHEDULERS = {
    "DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": False, "set_alpha_to_one": True}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    **{
        f"DPM++{order}M": (
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": order},
        )
        for order in (2, 3)
    },
    **{
        f"UniPC-{order} {variant}": (
            "UniPCMultistepScheduler",
            {"solver_type": variant, "solver_order": order, "predict_x0": True},
        )
        for order in (2, 3)
        for variant in ("bh1", "bh2")
    },
    # bh1's step onto sigma = 0 is NaN in diffusers 0.42 (B(h) = h = inf times a zero residual);
    # ending at sigma_min instead (final_sigmas_type) is how its users get a finite answer.
    **{
        f"UniPC-{order} bh1, final sigma_min": (
            "UniPCMultistepScheduler",
            {
                "solver_type": "bh1",
                "solver_order": order,
                "predict_x0": True,
                "final_sigmas_type": "sigma_min",
            },
        )
        for order in (2, 3)
    },
    **{f"DEIS-{order}": ("DEISMultistepScheduler", {"solver_order": order}) for order in (2, 3)},
    # Singlestep takes no timestep_spacing (always linspace); lower_order_final changes nothing
    # here (the last step onto sigma = 0 is first order either way).
    **{
        f"DPM++{order}S": (
            "DPMSolverSinglestepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": order},
        )
        for order in (2, 3)
    },
}

Setting = tuple[str, str, str, str, dict]  # (label, spacing, placement, class name, options)
Row = tuple[str, list]  # ("label / grid", cells): a cell is (error, NFE spent) or a reason


def _accepted(class_name: str) -> set[str]:
    """The constructor arguments of a diffusers scheduler class."""
    import diffusers  # noqa: PLC0415

    return set(inspect.signature(getattr(diffusers, class_name).__init__).parameters)


def settings() -> Iterator[Setting]:
    """Every scheduler x timestep spacing x sigma placement its class takes."""
    for label, (class_name, options) in SCHEDULERS.items():
        accepted = _accepted(class_name)
        spacings = SPACINGS if "timestep_spacing" in accepted else ("linspace",)
        for placement in ("", *(name for name in PLACEMENTS if name in accepted)):
            for spacing in spacings:
                extra = {placement: True} if placement else {}
                if "timestep_spacing" in accepted:
                    extra["timestep_spacing"] = spacing
                yield label, spacing, placement, class_name, {**options, **extra}


def make_scheduler(class_name: str, options: dict, schedule):
    """The scheduler on exactly our schedule: every schedule argument set, alphas_cumprod
    overwritten with ours (as benchmarks/sampler_quality.py does)."""
    import diffusers  # noqa: PLC0415
    import torch  # noqa: PLC0415

    diffusers.logging.set_verbosity_error()  # Singlestep's "changing lower_order_final" notes
    offset = {"steps_offset": 0} if "steps_offset" in _accepted(class_name) else {}
    scheduler = getattr(diffusers, class_name)(
        num_train_timesteps=schedule.num_timesteps,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        **offset,
        **options,
    )
    scheduler.alphas_cumprod = torch.tensor(np.asarray(schedule.alphas_cumprod))
    return scheduler


def endpoints(model_fn, class_name, options, schedule, x_T, nfe) -> tuple[np.ndarray, int]:
    """(endpoints [B, D], model calls) of the scheduler with the most inference steps whose
    timesteps (one model call each) fit in `nfe`."""
    import torch  # noqa: PLC0415

    for num_steps in range(nfe, 0, -1):
        scheduler = make_scheduler(class_name, options, schedule)
        scheduler.set_timesteps(num_steps)
        if len(scheduler.timesteps) <= nfe:
            break
    sample, calls = torch.tensor(x_T) * scheduler.init_noise_sigma, 0
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(sample, t)
        t_batch = jnp.full((x_T.shape[0],), float(t), jnp.float32)
        eps = np.asarray(model_fn(jnp.asarray(model_in.numpy()), t_batch))
        calls += 1
        sample = scheduler.step(torch.tensor(eps), t, sample).prev_sample
    return sample.numpy(), calls


def rows(model_fn, schedule, x_T, nfes, score: Callable[[np.ndarray], float]) -> list[Row]:
    """One row per setting, settings whose cells are identical (a placement that ignores the
    spacing) folded into one."""
    merged: dict[tuple, tuple[list[str], list]] = {}
    for label, spacing, placement, class_name, options in settings():
        cells = []
        for nfe in nfes:
            try:
                ends, calls = endpoints(model_fn, class_name, options, schedule, x_T, nfe)
                cells.append((score(ends), calls))
            except Exception as error:  # noqa: BLE001 (a setting diffusers refuses is reported)
                cells.append(f"{type(error).__name__}: {str(error)[:80]}")
        key = (label, placement, repr(cells))
        merged.setdefault(key, ([], cells))[0].append(spacing)
    return [
        (f"{label} / {_spacings(spacings)}{', ' + _short(placement) if placement else ''}", cells)
        for (label, placement, _), (spacings, cells) in merged.items()
    ]


def _spacings(spacings: list[str]) -> str:
    """'any spacing' when the result did not depend on it, else the spacings joined by '+'."""
    return "any spacing" if len(spacings) == len(SPACINGS) else "+".join(spacings)


def _short(placement: str) -> str:
    """use_karras_sigmas -> karras, use_lu_lambdas -> lu."""
    return placement.removeprefix("use_").removesuffix("_sigmas").removesuffix("_lambdas")
