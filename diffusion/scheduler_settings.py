"""A diffusers scheduler config (a pipeline's scheduler/scheduler_config.json, parsed) read into the
project's schedule, parameterisation and sampler settings.

Two kinds of settings live in such a file. The schedule (betas, T) and the prediction type belong
to the trained network. The rest (timestep spacing, steps offset, final alpha, clipping) belong to
sampling, and there diffusers has a rule this module follows: `XScheduler.from_config(config)`
takes each value the file states, but a value the file leaves out (or one a loaded scheduler
marks in `_use_default_values`) takes class X's own default. So Stable Diffusion 1.5's file,
which states no timestep_spacing, gives "leading" to DDIM and "linspace" to Euler. The sampler
overrides are therefore computed for one of the project's samplers, each standing for the
diffusers class its parity tests compare it with.

Keys that only choose the file's own scheduler algorithm (solver_order, skip_prk_steps, ...) are
ignored: `sampler.name` chooses the algorithm. Any other key or value this module cannot honour
is a ValueError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NoReturn

from diffusion import schedules

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "squaredcos_cap_v2": "cosine",
}
SPACINGS = ("linspace", "leading", "trailing")

# Keys read below, with the value diffusers' schedulers assume when a file leaves them out.
READ_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,  # (HeunDiscreteScheduler's differ: CLASS_DEFAULTS)
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "timestep_spacing": None,  # None: each sampler's diffusers class default
    "steps_offset": 0,
    "set_alpha_to_one": None,
    "clip_sample": None,
    "clip_sample_range": 1.0,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "use_karras_sigmas": False,
}
# Classes whose constructor defaults differ from READ_DEFAULTS.
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "HeunDiscreteScheduler": {"beta_start": 0.00085, "beta_end": 0.012},
}
# Keys accepted only with these values (anything else changes the grid or the network's meaning).
REQUIRED_VALUES: dict[str, tuple[Any, ...]] = {
    "trained_betas": (None,),
    "rescale_betas_zero_snr": (False,),
    "variance_type": (None, "fixed_small"),
    "interpolation_type": ("linear",),
    "timestep_type": ("discrete",),
    "final_sigmas_type": ("zero",),
    "use_exponential_sigmas": (False, None),
    "use_beta_sigmas": (False, None),
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "use_dynamic_shifting": (False,),
    "lambda_min_clipped": (-math.inf,),
    "sigma_min": (None,),
    "sigma_max": (None,),
    "shift_terminal": (None,),
}
# Metadata, and the algorithm choices of the file's own class (sampler.name makes those).
IGNORED_KEYS = frozenset(
    {
        "_class_name",
        "_diffusers_version",
        "_use_default_values",
        "skip_prk_steps",
        "solver_order",
        "algorithm_type",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "predict_x0",
        "disable_corrector",
        "solver_p",
        "flow_shift",  # only read with use_flow_sigmas, which must be false
        "time_shift_type",  # only read with use_dynamic_shifting, which must be false
    }
)


@dataclasses.dataclass(frozen=True)
class DiffusersClass:
    """How the diffusers scheduler a project sampler matches treats the optional settings."""

    name: str
    spacing: str  # its default timestep_spacing
    clip_sample: bool | None  # its default clip_sample; None: it never clips x0
    reads_thresholding: bool  # whether it applies `thresholding` (dynamic thresholding)
    reads_karras: bool  # whether it has use_karras_sigmas


# The project's samplers and the diffusers classes tests/diffusion/test_samplers_parity.py
# compares them with.
DIFFUSERS_CLASSES: dict[str, DiffusersClass] = {
    "ddpm": DiffusersClass("DDPMScheduler", "leading", True, True, False),
    "ddim": DiffusersClass("DDIMScheduler", "leading", True, True, False),
    "euler": DiffusersClass("EulerDiscreteScheduler", "linspace", None, False, True),
    "euler_ancestral": DiffusersClass(
        "EulerAncestralDiscreteScheduler", "linspace", None, False, False
    ),
    "heun": DiffusersClass("HeunDiscreteScheduler", "linspace", False, False, True),
    "lms": DiffusersClass("LMSDiscreteScheduler", "linspace", None, False, True),
    "dpmpp_2m": DiffusersClass("DPMSolverMultistepScheduler", "linspace", None, True, True),
    "dpmpp_2m_sde": DiffusersClass("DPMSolverMultistepScheduler", "linspace", None, True, True),
    "unipc": DiffusersClass("UniPCMultistepScheduler", "linspace", None, True, True),
    "dpmpp_3m": DiffusersClass("DPMSolverMultistepScheduler", "linspace", None, True, True),
    "dpmpp_3m_diffusers": DiffusersClass(
        "DPMSolverMultistepScheduler", "linspace", None, True, True
    ),
    "dpmpp_3m_sde": DiffusersClass("DPMSolverMultistepScheduler", "linspace", None, True, True),
    "unipc_bh1": DiffusersClass("UniPCMultistepScheduler", "linspace", None, True, True),
    "unipc_3": DiffusersClass("UniPCMultistepScheduler", "linspace", None, True, True),
    "unipc_3_bh1": DiffusersClass("UniPCMultistepScheduler", "linspace", None, True, True),
    "deis": DiffusersClass("DEISMultistepScheduler", "linspace", None, True, True),
    # No diffusers class steps as iPNDM (its IPNDMScheduler has its own schedule): the settings
    # Euler would take.
    "ipndm": DiffusersClass("EulerDiscreteScheduler", "linspace", None, False, True),
}


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
    """A scheduler config, read. None in a sampling field: the file does not state it, so each
    sampler takes its diffusers class's default."""

    class_name: str  # the file's `_class_name` ('' if absent)
    schedule: str  # the project's name: 'linear' | 'scaled_linear' | 'cosine'
    num_timesteps: int
    beta_start: float
    beta_end: float
    prediction: str  # 'eps' | 'v' | 'x0'
    spacing: str | None  # 'linspace' | 'leading' | 'trailing'
    steps_offset: int
    set_alpha_to_one: bool | None
    clip_sample: bool | None  # clip x0 to [-1, 1] (clip_sample_range must be 1)
    thresholding: str  # what `thresholding` asks for: 'none' | 'static' | 'dynamic'
    dynamic_percentile: float
    karras: bool  # use_karras_sigmas

    @property
    def sampler(self) -> str | None:
        """The project's sampler for the file's own class (None: none matches, e.g. PNDM)."""
        matches = [n for n, c in DIFFUSERS_CLASSES.items() if c.name == self.class_name]
        return matches[0] if matches else None

    def diffusion_overrides(self) -> dict[str, Any]:
        """`config.diffusion.*` values: the schedule and the network's parameterisation."""
        overrides = {
            "diffusion.process": "ddpm",
            "diffusion.schedule": self.schedule,
            "diffusion.num_timesteps": self.num_timesteps,
            "diffusion.prediction": self.prediction,
        }
        if self.schedule != "cosine":  # the cosine schedule has no betas to set
            overrides |= {
                "diffusion.beta_start": self.beta_start,
                "diffusion.beta_end": self.beta_end,
            }
        return overrides

    def sampler_overrides(self, sampler: str) -> dict[str, Any]:
        """`config.sampler.*` values that make `sampler` step as diffusers' matching class
        built with `from_config(this file)` does."""
        if sampler not in DIFFUSERS_CLASSES:
            raise ValueError(
                f"sampler={sampler!r} has no diffusers counterpart here; allowed: "
                f"{', '.join(DIFFUSERS_CLASSES)}"
            )
        cls = DIFFUSERS_CLASSES[sampler]
        spacing = "karras" if self.karras and cls.reads_karras else (self.spacing or cls.spacing)
        overrides = {
            "sampler.spacing": spacing,
            "sampler.steps_offset": self.steps_offset,
            "sampler.set_alpha_to_one": self.set_alpha_to_one is not False,
            "sampler.thresholding": self._thresholding_for(cls),
        }
        if overrides["sampler.thresholding"] == "dynamic":
            overrides["sampler.dynamic_percentile"] = self.dynamic_percentile
        return overrides

    def overrides(self, sampler: str) -> dict[str, Any]:
        """Both: dotted config field -> value."""
        return self.diffusion_overrides() | self.sampler_overrides(sampler)

    def _thresholding_for(self, cls: DiffusersClass) -> str:
        """diffusers applies `thresholding` first, then clip_sample, each where the class has it."""
        if cls.reads_thresholding and self.thresholding != "none":
            return self.thresholding
        clip = cls.clip_sample if self.clip_sample is None else self.clip_sample
        return "static" if cls.clip_sample is not None and clip else "none"


def from_diffusers(scheduler_config: Mapping[str, Any]) -> SchedulerSettings:
    """Reads a parsed scheduler_config.json (or a scheduler's `.config`) into SchedulerSettings.

    Raises:
      ValueError: a key this module does not know, or a value it cannot honour, named with what
        is allowed.
    """
    if not isinstance(scheduler_config, Mapping):
        raise ValueError(f"a scheduler config must be a dict, not {type(scheduler_config)}")
    class_name = scheduler_config.get("_class_name", "")
    if not isinstance(class_name, str):
        _fail("_class_name", class_name, "must be a string (a diffusers scheduler class name)")
    if class_name.startswith("FlowMatch"):
        raise ValueError(
            f"_class_name={class_name!r} is a flow-matching scheduler; only VP (DDPM-style) "
            "schedulers with betas are supported"
        )
    stated = _stated(scheduler_config)
    _check_keys(stated)
    values = READ_DEFAULTS | CLASS_DEFAULTS.get(class_name, {})
    values |= {k: v for k, v in stated.items() if k in READ_DEFAULTS}
    schedule = _choice(values, "beta_schedule", BETA_SCHEDULES)
    num_timesteps, beta_start, beta_end = (
        values["num_train_timesteps"],
        _number(values, "beta_start"),
        _number(values, "beta_end"),
    )
    try:
        schedules.validate_schedule_args(schedule, num_timesteps, beta_start, beta_end)
    except ValueError as err:
        raise ValueError(f"scheduler config: {err} (num_train_timesteps, beta_*)") from err
    spacing = values["timestep_spacing"]
    if spacing is not None and spacing not in SPACINGS:
        _fail("timestep_spacing", spacing, f"is not known; allowed: {', '.join(SPACINGS)}")
    steps_offset = values["steps_offset"]
    if not isinstance(steps_offset, int) or isinstance(steps_offset, bool) or steps_offset < 0:
        _fail("steps_offset", steps_offset, "must be an integer >= 0")
    return SchedulerSettings(
        class_name=class_name,
        schedule=schedule,
        num_timesteps=num_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        prediction=_choice(values, "prediction_type", PREDICTIONS),
        spacing=spacing,
        steps_offset=steps_offset,
        set_alpha_to_one=_flag(values, "set_alpha_to_one"),
        clip_sample=_clip_sample(values),
        thresholding=_thresholding(values),
        dynamic_percentile=_dynamic_percentile(values),
        karras=bool(_flag(values, "use_karras_sigmas")),
    )


def _stated(scheduler_config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys the config states itself (diffusers drops those in `_use_default_values`)."""
    defaulted = set(scheduler_config.get("_use_default_values") or ())
    return {k: v for k, v in scheduler_config.items() if k not in defaulted}


def _check_keys(stated: Mapping[str, Any]) -> None:
    """Refuses unknown keys and keys whose value would change the grid or the network."""
    known = set(READ_DEFAULTS) | set(REQUIRED_VALUES) | IGNORED_KEYS
    for key, value in stated.items():
        if key not in known:
            raise ValueError(
                f"scheduler config key {key!r} (= {_show(value)}) is not known; known keys: "
                f"{', '.join(sorted(known))}"
            )
        allowed = REQUIRED_VALUES.get(key)
        if allowed is not None and not any(_same(value, a) for a in allowed):
            _fail(key, value, f"is not supported; allowed: {', '.join(map(_show, allowed))}")


def _clip_sample(values: Mapping[str, Any]) -> bool | None:
    """clip_sample as stated; clipping to any range but [-1, 1] is refused."""
    clip = _flag(values, "clip_sample")
    if clip is not False and _number(values, "clip_sample_range") != 1.0:
        _fail(
            "clip_sample_range",
            values["clip_sample_range"],
            "is not supported with clip_sample on (sampler.thresholding='static' clips to "
            "[-1, 1]); allowed: 1.0",
        )
    return clip


def _thresholding(values: Mapping[str, Any]) -> str:
    """diffusers' dynamic thresholding divides by s = clamp(quantile, 1, sample_max_value): at
    sample_max_value 1 that is plain clipping ('static'), uncapped it is ours ('dynamic')."""
    if not _flag(values, "thresholding"):
        return "none"
    cap = _number(values, "sample_max_value")
    if cap == 1.0:
        return "static"
    if cap == math.inf:
        return "dynamic"
    _fail(
        "sample_max_value",
        values["sample_max_value"],
        "is not supported with thresholding on (the project's dynamic thresholding does not cap "
        "s); allowed: 1.0 (plain clipping), Infinity",
    )


def _dynamic_percentile(values: Mapping[str, Any]) -> float:
    ratio = _number(values, "dynamic_thresholding_ratio")
    if not 0.0 < ratio <= 1.0:
        _fail("dynamic_thresholding_ratio", ratio, "must be in (0, 1]")
    return ratio


def _choice(values: Mapping[str, Any], key: str, table: Mapping[str, str]) -> str:
    """table[values[key]], refused with the table's keys."""
    value = values[key]
    if not isinstance(value, str) or value not in table:
        _fail(key, value, f"is not supported; allowed: {', '.join(table)}")
    return table[value]


def _flag(values: Mapping[str, Any], key: str) -> bool | None:
    value = values[key]
    if value is not None and not isinstance(value, bool):
        _fail(key, value, "must be true or false")
    return value


def _number(values: Mapping[str, Any], key: str) -> float:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(key, value, "must be a number")
    return float(value)


def _same(value: Any, allowed: Any) -> bool:
    """Equality that keeps booleans apart from numbers (0 is not false here)."""
    return isinstance(value, bool) == isinstance(allowed, bool) and value == allowed


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(key: str, value: Any, requirement: str) -> NoReturn:
    raise ValueError(f"scheduler config: {key}={_show(value)} {requirement}")
