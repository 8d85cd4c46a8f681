import jax
import numpy as np
import pytest

import sharding
from models.functional import init_params
from training.experiment import build_experiment
from training.sampling import SamplerConfig, make_sample_fn


def _sample_fn(tiny_config, **sampler_fields):
    experiment = build_experiment(tiny_config)
    sampler = SamplerConfig(**{**tiny_config.sampler, **sampler_fields})
    replicated = sharding.replicated(experiment.mesh)
    sample_fn = make_sample_fn(
        experiment.model,
        experiment.schedule,
        sampler,
        prediction=experiment.step_config.prediction,
        image_shape=experiment.image_shape,
        mesh=experiment.mesh,
        params_sharding=jax.tree.map(lambda _: replicated, experiment.model.abstract_params),
    )
    params = init_params(experiment.build_model, 0)
    # A zero-initialised output conv makes the network's output 0; perturb it so steps matter.
    params = jax.tree.map(lambda p: p + 0.01 * jax.numpy.ones_like(p), params)
    return sample_fn, params


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
    with pytest.raises(ValueError, match=r"sampler\.max_steps=4"):
        SamplerConfig(num_steps=10, max_steps=4).validate(1000)
