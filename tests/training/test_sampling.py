import dataclasses

import jax
import numpy as np
import pytest

import sharding
from diffusion import samplers
from models.functional import init_params
from training.experiment import build_experiment
from training.sampling import SamplerConfig, make_sample_fn


def _sample_fn(tiny_config, **sampler_fields):
    experiment = build_experiment(tiny_config)
    sampler = dataclasses.replace(experiment.sampler, **sampler_fields)
    replicated = sharding.replicated(experiment.mesh)
    sample_fn = make_sample_fn(
        experiment.model,
        experiment.schedule,
        sampler,
        precond=experiment.step_config.precond,
        image_shape=experiment.image_shape,
        mesh=experiment.mesh,
        params_sharding=jax.tree.map(lambda _: replicated, experiment.model.abstract_params),
        process=experiment.step_config.process,
        flow_shift=experiment.run.diffusion.flow_shift,
    )
    params = init_params(experiment.build_model, 0)
    # A zero-initialised output conv makes the network's output 0; perturb it so steps matter.
    params = jax.tree.map(lambda p: p + 0.01 * jax.numpy.ones_like(p), params)
    return sample_fn, params


@pytest.mark.slow
def test_max_steps_pads_the_grid_and_all_step_counts_share_one_compile(tiny_config):
    padded_fn, params = _sample_fn(tiny_config, max_steps=12, num_samples=8)
    exact_fn, _ = _sample_fn(tiny_config, num_samples=8)
    key = jax.random.key(3)
    for steps in (3, 7, 12):
        np.testing.assert_allclose(
            padded_fn(params, key, steps), exact_fn(params, key, steps), rtol=1e-5, atol=1e-5
        )
    assert padded_fn.chain._cache_size() == 1
    assert exact_fn.chain._cache_size() == 3


def test_max_steps_below_num_steps_is_refused():
    with pytest.raises(ValueError, match=r"sampler\.max_steps=4 must be 0 .* >= sampler\.num_"):
        SamplerConfig(num_steps=10, max_steps=4).validate()


def test_flow_sampling_takes_the_step_count_it_is_given(tiny_config):
    """The chain of a flow run follows `num_steps` (the earlier flow path closed over
    sampler.num_steps and silently ignored the argument), all counts sharing one compile."""
    tiny_config.diffusion.process = "flow"
    tiny_config.diffusion.prediction = "velocity"
    tiny_config.sampler.name = "euler"
    tiny_config.sampler.thresholding = "none"
    sample_fn, params = _sample_fn(tiny_config, max_steps=8, num_samples=8)
    key = jax.random.key(5)
    images = {steps: sample_fn(params, key, steps) for steps in (2, 3, 8)}
    assert sample_fn.chain._cache_size() == 1
    assert not np.allclose(images[2], images[8], atol=1e-4)
    # The same chain as the library's sampler with that many Euler steps on the flow ODE.
    experiment = build_experiment(tiny_config)
    noise_key, _ = jax.random.split(key)
    x_T = jax.random.normal(noise_key, (8, *experiment.image_shape))
    for steps in (2, 3):
        direct = samplers.sample(
            lambda x, t: experiment.model.apply(params, x, t),
            None,
            x_T,
            key,
            sampler="euler",
            num_steps=steps,
            prediction="velocity",
            process="flow",
        ).samples
        np.testing.assert_allclose(images[steps], np.clip(direct, -1, 1), rtol=1e-4, atol=1e-5)
