"""Rectified flow / flow matching on the embedded digits (the SD3 / Flux objective).

Same network and data as digits_ddpm.py; the model predicts the velocity eps - x0 along
x_t = (1 - t) x0 + t eps and is sampled with Heun on the flow ODE with a timestep shift.
Run: python main.py --config=configs/digits_flow.py --workdir=runs/digits_flow
"""

import ml_collections

from configs import digits_ddpm


def get_config() -> ml_collections.ConfigDict:
    """digits_ddpm with diffusion.process = "flow"."""
    config = digits_ddpm.get_config()
    config.diffusion.process = "flow"
    config.diffusion.prediction = "velocity"
    config.diffusion.flow_shift = 1.0
    config.sampler.name = "heun"
    config.sampler.num_steps = 25
    config.sampler.thresholding = "none"  # the flow ODE's x0 estimates are not clipped
    return config
