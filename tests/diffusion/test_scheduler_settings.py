"""diffusion/scheduler_settings.py: a diffusers scheduler_config.json read into the project's
schedule and sampler settings, and each refusal naming its key and value.

Step-for-step parity of the resulting samplers with diffusers lives in test_samplers_parity.py;
here the diffusers-backed checks only compare the class defaults this module assumes.
"""

import inspect
import math
import re

import pytest

from configs import default
from diffusion import scheduler_settings
from diffusion.scheduler_settings import DIFFUSERS_CLASSES, from_diffusers
from tests.diffusion.sd_scheduler_configs import SD15, SD15_LEADING, SD21

KARRAS_READERS = (
    *("euler", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde", "unipc"),
    *("dpmpp_3m", "dpmpp_3m_diffusers", "dpmpp_3m_sde", "unipc_bh1", "unipc_3", "unipc_3_bh1"),
    *("deis", "ipndm"),
)


def _refused(config, *fragments):
    """Asserts from_diffusers(config) raises a ValueError whose message holds every fragment."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    with pytest.raises(ValueError, match=pattern):
        from_diffusers(config)


# --- Stable Diffusion's files ---------------------------------------------------------------------


def test_sd15_schedule_and_parameterisation():
    settings = from_diffusers(SD15)
    assert settings.class_name == "PNDMScheduler"
    assert settings.sampler is None  # PNDM has no project counterpart
    assert settings.diffusion_overrides() == {
        "diffusion.process": "ddpm",
        "diffusion.schedule": "scaled_linear",
        "diffusion.num_timesteps": 1000,
        "diffusion.prediction": "eps",
        "diffusion.beta_start": 0.00085,
        "diffusion.beta_end": 0.012,
    }
    assert settings.spacing is None  # not stated: each sampler takes its class default
    assert settings.steps_offset == 1
    assert settings.set_alpha_to_one is False
    assert settings.clip_sample is False
    assert settings.thresholding == "none"
    assert settings.karras is False


def test_sd15_ddim_takes_ddims_leading_default():
    assert from_diffusers(SD15).sampler_overrides("ddim") == {
        "sampler.spacing": "leading",
        "sampler.steps_offset": 1,
        "sampler.set_alpha_to_one": False,
        "sampler.thresholding": "none",
    }


def test_sd15_euler_takes_eulers_linspace_default():
    overrides = from_diffusers(SD15).sampler_overrides("euler")
    assert overrides["sampler.spacing"] == "linspace"
    assert overrides["sampler.steps_offset"] == 1
    assert overrides["sampler.thresholding"] == "none"


@pytest.mark.parametrize("sampler", list(DIFFUSERS_CLASSES))
def test_sd15_spacing_is_the_class_default(sampler):
    cls = DIFFUSERS_CLASSES[sampler]
    assert from_diffusers(SD15).sampler_overrides(sampler)["sampler.spacing"] == cls.spacing


def test_stated_spacing_applies_to_every_sampler():
    settings = from_diffusers(SD15_LEADING)
    for sampler in DIFFUSERS_CLASSES:
        assert settings.sampler_overrides(sampler)["sampler.spacing"] == "leading"


def test_sd21_is_a_v_prediction_ddim():
    settings = from_diffusers(SD21)
    assert settings.prediction == "v"
    assert settings.diffusion_overrides()["diffusion.prediction"] == "v"
    assert settings.sampler == "ddim"
    assert settings.schedule == "scaled_linear"
    assert settings.sampler_overrides("ddim")["sampler.set_alpha_to_one"] is False


# stabilityai/stable-diffusion-xl-base-1.0's scheduler file: Euler with its spacing stated.
SDXL = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def test_sdxl_euler_is_leading_with_offset():
    settings = from_diffusers(SDXL)
    assert settings.sampler == "euler"
    assert settings.sampler_overrides("euler") == {
        "sampler.spacing": "leading",
        "sampler.steps_offset": 1,
        "sampler.set_alpha_to_one": False,
        "sampler.thresholding": "none",
    }


@pytest.mark.parametrize(
    "prediction_type,expected", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")]
)
def test_prediction_types(prediction_type, expected):
    assert from_diffusers(SD15 | {"prediction_type": prediction_type}).prediction == expected


def test_overrides_is_both_and_every_key_is_a_config_field():
    settings = from_diffusers(SD15 | {"thresholding": True, "sample_max_value": math.inf})
    config = default.get_config()
    for sampler in DIFFUSERS_CLASSES:
        overrides = settings.overrides(sampler)
        assert overrides == settings.diffusion_overrides() | settings.sampler_overrides(sampler)
        for dotted in overrides:
            section, field = dotted.split(".")
            assert field in config[section], dotted


def test_empty_config_takes_diffusers_defaults():
    settings = from_diffusers({})
    assert settings.class_name == ""
    assert settings.sampler is None
    assert (settings.schedule, settings.num_timesteps) == ("linear", 1000)
    assert (settings.beta_start, settings.beta_end) == (0.0001, 0.02)
    assert settings.prediction == "eps"
    assert settings.steps_offset == 0
    # DDIM's own defaults: clip_sample=True (static), set_alpha_to_one=True.
    assert settings.sampler_overrides("ddim")["sampler.thresholding"] == "static"
    assert settings.sampler_overrides("ddim")["sampler.set_alpha_to_one"] is True


def test_cosine_overrides_omit_betas():
    settings = from_diffusers({"beta_schedule": "squaredcos_cap_v2"})
    overrides = settings.diffusion_overrides()
    assert overrides["diffusion.schedule"] == "cosine"
    assert "diffusion.beta_start" not in overrides
    assert "diffusion.beta_end" not in overrides


def test_sampler_property_picks_the_files_class():
    assert from_diffusers({"_class_name": "EulerDiscreteScheduler"}).sampler == "euler"
    assert from_diffusers({"_class_name": "DPMSolverMultistepScheduler"}).sampler == "dpmpp_2m"


# --- _use_default_values --------------------------------------------------------------------------


def test_use_default_values_keys_are_unstated():
    # As a pipeline's loaded PNDMScheduler records it: these two were filled from PNDM's defaults.
    loaded = SD15 | {
        "timestep_spacing": "leading",
        "prediction_type": "v_prediction",
        "_use_default_values": ["timestep_spacing", "prediction_type"],
    }
    settings = from_diffusers(loaded)
    assert settings == from_diffusers(SD15)
    assert settings.spacing is None
    assert settings.prediction == "eps"
    assert settings.sampler_overrides("euler")["sampler.spacing"] == "linspace"


def test_use_default_values_skips_checks_on_defaulted_keys():
    # A defaulted value is never read, so even one the module would refuse is no error.
    assert from_diffusers({"foo": 1, "_use_default_values": ["foo"]}) == from_diffusers({})


# --- use_karras_sigmas ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(DIFFUSERS_CLASSES))
def test_karras_only_for_samplers_that_read_it(sampler):
    settings = from_diffusers(SD15 | {"use_karras_sigmas": True, "timestep_spacing": "trailing"})
    assert settings.karras
    spacing = settings.sampler_overrides(sampler)["sampler.spacing"]
    assert spacing == ("karras" if sampler in KARRAS_READERS else "trailing")


def test_karras_flag_must_be_boolean():
    _refused({"use_karras_sigmas": "yes"}, "use_karras_sigmas='yes'", "true or false")


# --- thresholding and clip_sample -----------------------------------------------------------------


def test_thresholding_with_unit_cap_is_static_clipping():
    settings = from_diffusers(SD15 | {"thresholding": True, "sample_max_value": 1.0})
    assert settings.thresholding == "static"
    assert settings.sampler_overrides("ddim")["sampler.thresholding"] == "static"
    assert "sampler.dynamic_percentile" not in settings.sampler_overrides("ddim")
    # Euler has neither thresholding nor clip_sample in diffusers.
    assert settings.sampler_overrides("euler")["sampler.thresholding"] == "none"


def test_thresholding_cap_defaults_to_one():
    assert from_diffusers({"thresholding": True}).thresholding == "static"


def test_thresholding_uncapped_is_dynamic():
    config = SD15 | {
        "thresholding": True,
        "sample_max_value": math.inf,
        "dynamic_thresholding_ratio": 0.9,
    }
    settings = from_diffusers(config)
    assert settings.thresholding == "dynamic"
    for sampler in ("ddpm", "ddim", "dpmpp_2m", "unipc"):
        overrides = settings.sampler_overrides(sampler)
        assert overrides["sampler.thresholding"] == "dynamic"
        assert overrides["sampler.dynamic_percentile"] == 0.9
    # Heun does not read `thresholding`; SD 1.5's clip_sample=False leaves it unclipped.
    assert settings.sampler_overrides("heun")["sampler.thresholding"] == "none"


def test_thresholding_off_ignores_the_cap():
    settings = from_diffusers(SD15 | {"thresholding": False, "sample_max_value": 2.0})
    assert settings.thresholding == "none"


def test_thresholding_other_cap_is_refused():
    _refused(SD15 | {"thresholding": True, "sample_max_value": 2.0}, "sample_max_value=2.0")


def test_dynamic_thresholding_ratio_out_of_range_is_refused():
    _refused({"dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio=1.5", "(0, 1]")


@pytest.mark.parametrize(
    "clip_sample,expected",
    [
        # (file's clip_sample) -> thresholding for ddpm, ddim, euler, heun
        (None, ("static", "static", "none", "none")),  # class defaults: True, True, -, False
        (True, ("static", "static", "none", "static")),
        (False, ("none", "none", "none", "none")),
    ],
)
def test_clip_sample_mapping(clip_sample, expected):
    config = {} if clip_sample is None else {"clip_sample": clip_sample}
    settings = from_diffusers(config)
    assert settings.clip_sample is clip_sample
    got = tuple(
        settings.sampler_overrides(s)["sampler.thresholding"]
        for s in ("ddpm", "ddim", "euler", "heun")
    )
    assert got == expected


def test_thresholding_wins_over_clip_sample():
    settings = from_diffusers(
        {"clip_sample": True, "thresholding": True, "sample_max_value": math.inf}
    )
    assert settings.sampler_overrides("ddim")["sampler.thresholding"] == "dynamic"
    assert settings.sampler_overrides("heun")["sampler.thresholding"] == "static"  # its clip


@pytest.mark.parametrize("clip_sample", [True, None])
def test_clip_sample_range_other_than_one_is_refused(clip_sample):
    config = {"clip_sample_range": 2.0}
    if clip_sample is not None:
        config["clip_sample"] = clip_sample
    _refused(config, "clip_sample_range=2.0", "allowed: 1.0")


def test_clip_sample_range_is_free_when_clipping_is_off():
    assert from_diffusers({"clip_sample": False, "clip_sample_range": 2.0}).clip_sample is False


# --- refusals -------------------------------------------------------------------------------------


def test_unknown_key_is_refused():
    _refused(SD15 | {"shiny_new_option": 3}, "'shiny_new_option'", "= 3", "not known")


def test_trained_betas_are_refused():
    _refused(SD15 | {"trained_betas": [0.1, 0.2]}, "trained_betas=[0.1, 0.2]", "allowed: null")


def test_rescale_betas_zero_snr_is_refused():
    _refused(SD15 | {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True")


def test_required_values_keep_booleans_apart_from_numbers():
    _refused({"rescale_betas_zero_snr": 0}, "rescale_betas_zero_snr=0", "allowed: False")


@pytest.mark.parametrize(
    "key,value", [("final_sigmas_type", "sigma_min"), ("timestep_type", "continuous")]
)
def test_grid_changing_values_are_refused(key, value):
    _refused({key: value}, f"{key}={value!r}", "not supported")


def test_flow_match_class_is_refused():
    _refused(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0},
        "_class_name='FlowMatchEulerDiscreteScheduler'",
        "flow-matching",
    )


def test_non_string_class_name_is_refused():
    _refused({"_class_name": None}, "_class_name=null")


def test_bad_timestep_spacing_is_refused():
    _refused(SD15 | {"timestep_spacing": "karras"}, "timestep_spacing='karras'", "leading")


@pytest.mark.parametrize("value", [-1, True, 1.0])
def test_bad_steps_offset_is_refused(value):
    _refused(SD15 | {"steps_offset": value}, f"steps_offset={value!r}", "integer >= 0")


@pytest.mark.parametrize("config", [[("beta_schedule", "linear")], "scheduler_config.json", None])
def test_non_dict_is_refused(config):
    _refused(config, "must be a dict", type(config).__name__)


def test_bad_beta_schedule_is_refused():
    _refused(SD15 | {"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'", "squaredcos_cap_v2")


def test_bad_prediction_type_is_refused():
    _refused(SD15 | {"prediction_type": "flow"}, "prediction_type='flow'", "v_prediction")


def test_bad_betas_are_refused():
    _refused(SD15 | {"beta_start": 0.02, "beta_end": 0.01}, "beta_start=0.02", "beta_end=0.01")
    _refused(SD15 | {"beta_end": "0.012"}, "beta_end='0.012'", "must be a number")


def test_sampler_without_counterpart_is_refused():
    with pytest.raises(ValueError, match=r"sampler='pndm'.*allowed: ddpm, ddim"):
        from_diffusers(SD15).sampler_overrides("pndm")


# --- the class table against diffusers itself -----------------------------------------------------


@pytest.mark.parametrize("sampler", list(DIFFUSERS_CLASSES))
def test_default_spacing_is_what_diffusers_picks(sampler):
    diffusers = pytest.importorskip("diffusers")
    cls = getattr(diffusers, DIFFUSERS_CLASSES[sampler].name)
    overrides = from_diffusers(SD15).sampler_overrides(sampler)
    assert cls.from_config(SD15).config.timestep_spacing == overrides["sampler.spacing"]
    # As a pipeline does it: the file's own class first, then the sampler's from its config.
    loaded = diffusers.PNDMScheduler.from_config(SD15).config
    assert from_diffusers(loaded) == from_diffusers(SD15)
    assert cls.from_config(loaded).config.timestep_spacing == overrides["sampler.spacing"]
    assert cls.from_config(loaded).config.steps_offset == overrides["sampler.steps_offset"]


@pytest.mark.parametrize("sampler", list(DIFFUSERS_CLASSES))
def test_class_table_matches_diffusers_signatures(sampler):
    diffusers = pytest.importorskip("diffusers")
    table = DIFFUSERS_CLASSES[sampler]
    cls = getattr(diffusers, table.name)
    params = inspect.signature(cls.__init__).parameters
    assert params["timestep_spacing"].default == table.spacing
    clip = params["clip_sample"].default if "clip_sample" in params else None
    assert clip == table.clip_sample
    assert ("thresholding" in params) == table.reads_thresholding
    assert ("use_karras_sigmas" in params) == table.reads_karras
    # The class's own full config is read without refusal.
    assert from_diffusers(dict(cls().config)).num_timesteps == 1000


def test_ddim_from_sd15_keeps_alpha_bar_zero():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler.from_config(SD15)
    assert scheduler.config.set_alpha_to_one is False
    assert from_diffusers(SD15).sampler_overrides("ddim")["sampler.set_alpha_to_one"] is False


def test_module_constants_are_consistent():
    assert set(scheduler_settings.SPACINGS) <= {"linspace", "leading", "trailing"}
    known = set(scheduler_settings.READ_DEFAULTS) | set(scheduler_settings.REQUIRED_VALUES)
    assert not known & scheduler_settings.IGNORED_KEYS


def test_heun_file_without_betas_takes_heuns_own_defaults():
    settings = scheduler_settings.from_diffusers({"_class_name": "HeunDiscreteScheduler"})
    assert (settings.beta_start, settings.beta_end) == (0.00085, 0.012)


def test_class_name_not_a_string_is_named():
    with pytest.raises(ValueError, match="_class_name=null must be a string"):
        scheduler_settings.from_diffusers({"_class_name": None})
