"""Stable Diffusion's scheduler/scheduler_config.json files, written out as the hub ships them
(shared by the scheduler-settings and sampler-parity tests)."""

# runwayml/stable-diffusion-v1-5: a PNDMScheduler; no timestep_spacing or prediction_type key.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# stabilityai/stable-diffusion-2-1 (768 px): a DDIMScheduler with v-prediction.
SD21 = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# SD 1.5's file as newer diffusers versions write it: spacing and prediction type stated.
SD15_LEADING = SD15 | {"timestep_spacing": "leading", "prediction_type": "epsilon"}

CONFIGS = {"sd15": SD15, "sd21": SD21, "sd15_leading": SD15_LEADING}
