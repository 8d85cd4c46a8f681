"""losses.diffusion_loss: one loss for every process, parameterisation and weighting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import losses, processes, schedules, weighting
from diffusion.precond import Precond
from diffusion.processes import TimeSampling
from diffusion.weighting import Weighting

SCHEDULE = schedules.make_schedule("linear", 1000, 1e-4, 0.02)
CASES = [("ddpm", p) for p in ("eps", "x0", "v", "edm")] + [("flow", p) for p in ("velocity", "x0")]


def _oracle(x0, p):
    """A model that knows x0 and inverts x_t exactly: it outputs the target."""

    def model(x_in, timestep, levels):
        alpha, s = (v[:, None, None, None] for v in (levels.alpha, levels.s))
        x_t = x_in / p.input_scale(alpha, s)
        return p.target(x0, (x_t - alpha * x0) / s, alpha, s)

    return model


@pytest.mark.parametrize("process,prediction", CASES)
@pytest.mark.parametrize("sampling", processes.T_SAMPLINGS)
def test_oracle_has_zero_loss(process, prediction, sampling):
    x0 = jax.random.normal(jax.random.key(1), (16, 4, 4, 1))
    schedule = SCHEDULE if process == "ddpm" else None
    draws = losses.draw_noise(jax.random.key(2), x0, schedule, process, TimeSampling(sampling))
    p = Precond(prediction)
    model = _oracle(x0, p)
    loss, metrics = losses.diffusion_loss(lambda x, t: model(x, t, draws[0]), x0, draws, p)
    assert float(loss) < 1e-6
    assert metrics["loss"] is loss


def test_uniform_eps_loss_is_ho_et_als_l_simple():
    """Algorithm 1 of Ho et al. 2020 with the draws made the way the loss has always made them
    (t from randint on the first half of the split key, eps from normal on the second)."""
    x0 = jax.random.normal(jax.random.key(3), (8, 4, 4, 2))
    key = jax.random.key(4)

    def model(x_t, t):
        return 0.5 * x_t + 1e-3 * t[:, None, None, None]

    loss, _ = losses.diffusion_loss(model, x0, losses.draw_noise(key, x0, SCHEDULE))
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (8,), 0, 1000, dtype=jnp.int32)
    eps = jax.random.normal(noise_key, x0.shape)
    alpha_bar = SCHEDULE.alphas_cumprod[t][:, None, None, None]
    x_t = jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * eps
    reference = jnp.mean(jnp.square(model(x_t, t) - eps))
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)


def test_uniform_flow_loss_is_lipmans_conditional_flow_matching():
    """Lipman et al. 2023 eq. 23 on the straight path, t ~ U(0, 1), network told 1000 t."""
    x0 = jax.random.normal(jax.random.key(5), (8, 4, 4, 1))
    key = jax.random.key(6)

    def model(x_t, t):
        return -x_t + 1e-3 * t[:, None, None, None]

    draws = losses.draw_noise(key, x0, None, "flow")
    loss, _ = losses.diffusion_loss(model, x0, draws, Precond("velocity"))
    t_key, noise_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (8,))[:, None, None, None]
    eps = jax.random.normal(noise_key, x0.shape)
    x_t = (1 - t) * x0 + t * eps
    reference = jnp.mean(jnp.square(model(x_t, 1000 * t[:, 0, 0, 0]) - (eps - x0)))
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)


def test_zero_model_eps_loss_is_the_noise_second_moment():
    x0 = jnp.zeros((64, 8, 8, 1))
    draws = losses.draw_noise(jax.random.key(7), x0, SCHEDULE)
    loss, _ = losses.diffusion_loss(lambda x, t: jnp.zeros_like(x), x0, draws)
    assert float(loss) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("name", ["min_snr", "soft_min_snr", "edm", "p2"])
def test_weighted_loss_is_the_mean_of_per_example_weighted_errors(name):
    """The loss is mean_b w(level_b) * mean_pixels (F - target)^2 with the weighting's w."""
    x0 = jax.random.normal(jax.random.key(8), (32, 4, 4, 1))
    draws = losses.draw_noise(jax.random.key(9), x0, SCHEDULE)
    levels, eps = draws
    w = Weighting(name)

    def model(x_t, t):
        return jnp.zeros_like(x_t)  # per-example error: mean(eps^2)

    loss, metrics = losses.diffusion_loss(model, x0, draws, Precond("eps"), w)
    per_example = jnp.mean(jnp.square(eps), axis=(1, 2, 3))
    snr = levels.alpha**2 / levels.s**2
    weights = weighting.output_weight(w, snr, snr)  # eps: output error per x0 error = SNR
    assert float(loss) == pytest.approx(float(jnp.mean(weights * per_example)), rel=1e-5)
    assert float(metrics["unweighted_loss"]) == pytest.approx(float(jnp.mean(per_example)))
    assert not np.allclose(np.asarray(weights), 1.0)  # the weighting did something
