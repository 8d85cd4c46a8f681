import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import forward, schedules


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("linear", 1000, 1e-4, 0.02)


def test_closed_form_matches_iterated_markov_chain(schedule):
    """q(x_t|x_0) from eq. 4 vs. iterating x_k = sqrt(1-beta_k) x_{k-1} + sqrt(beta_k) z."""
    x0 = jnp.array([1.5, -0.7, 0.0])
    n = 20_000
    t = 300
    x = jnp.broadcast_to(x0, (n, 3))
    key = jax.random.key(0)

    def step(x, inputs):
        beta, k = inputs
        z = jax.random.normal(jax.random.fold_in(key, k), x.shape)
        return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * z, None

    x, _ = jax.lax.scan(step, x, (schedule.betas[: t + 1], jnp.arange(t + 1)))
    mean, var = forward.q_mean_variance(schedule, x0[None], jnp.array([t]))
    np.testing.assert_allclose(x.mean(0), mean[0], atol=0.02)
    np.testing.assert_allclose(x.var(0), var[0], rtol=0.03)


def test_q_sample_is_the_reparameterised_mean_and_variance(schedule):
    x0 = jnp.ones((4, 2, 2, 1))
    t = jnp.array([0, 10, 500, 999])
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    mean, var = forward.q_mean_variance(schedule, x0, t)
    np.testing.assert_allclose(
        forward.q_sample(schedule, x0, t, noise), mean + jnp.sqrt(var) * noise, rtol=1e-6
    )


def test_posterior_matches_ho_eq7_and_bayes(schedule):
    """The posterior of q(x_{t-1}|x_t,x_0) equals the Gaussian product of its two factors."""
    t = 400
    ab, ab_prev, beta = (
        float(v)
        for v in (schedule.alphas_cumprod[t], schedule.alphas_cumprod[t - 1], schedule.betas[t])
    )
    x0, x_t = jnp.array([[0.5]]), jnp.array([[-0.2]])
    mean, var = forward.q_posterior_mean_variance(schedule, x0, x_t, jnp.array([t]))
    # Prior x_{t-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev);
    # likelihood x_t ~ N(sqrt(1 - beta) x_{t-1}, beta).
    precision = 1 / (1 - ab_prev) + (1 - beta) / beta
    expected_mean = (
        np.sqrt(ab_prev) * 0.5 / (1 - ab_prev) + np.sqrt(1 - beta) * -0.2 / beta
    ) / precision
    assert float(var[0, 0]) == pytest.approx(1 / precision, rel=1e-4)
    assert float(mean[0, 0]) == pytest.approx(expected_mean, rel=1e-4)


def test_snr_is_alpha_bar_over_one_minus(schedule):
    t = jnp.array([0, 999])
    ab = schedule.alphas_cumprod[t]
    np.testing.assert_allclose(forward.snr(schedule, t), ab / (1 - ab), rtol=1e-6)
