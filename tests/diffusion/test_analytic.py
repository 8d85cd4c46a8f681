"""diffusion/analytic.py's D-dimensional Gaussian mixture: its exact denoiser, the network adapter
on a VP schedule and the fine probability-flow-ODE reference, each against a closed form or an
independent float64 numpy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import analytic, grids, schedules

K, D = 4, 8


@pytest.fixture(scope="module")
def mixture():
    """(means [K, D], stds [K], weights [K]): narrow, unequal, unnormalised weights."""
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (K, D)), rng.uniform(0.05, 0.1, K), rng.uniform(0.5, 2.0, K)


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("linear", 1000, 1e-4, 0.02)


def _numpy_posterior(means, stds, weights, x, sigma):
    """(responsibilities [B, K], E[x0 | x] [B, D]) from the densities themselves, in float64."""
    var = stds**2 + sigma**2  # [K]
    squared = np.sum((x[:, None, :] - means) ** 2, axis=-1)  # [B, K]
    density = weights * (2 * np.pi * var) ** (-x.shape[-1] / 2) * np.exp(-squared / (2 * var))
    resp = density / density.sum(axis=1, keepdims=True)
    component = means + (stds**2 / var)[:, None] * (x[:, None, :] - means)  # [B, K, D]
    return resp, np.einsum("bk,bkd->bd", resp, component)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0])
def test_responsibilities_and_denoiser_match_numpy(mixture, sigma):
    means, stds, weights = mixture
    x = means[np.arange(6) % K] + 0.4 * np.random.default_rng(1).standard_normal((6, D))
    resp, x0 = _numpy_posterior(means, stds, weights, x, sigma)
    log_resp = analytic.gmm_log_responsibilities(means, stds, weights, jnp.asarray(x), sigma)
    np.testing.assert_allclose(np.exp(log_resp), resp, atol=1e-5)
    denoised = analytic.gmm_denoiser(means, stds, weights)(jnp.asarray(x), sigma)
    np.testing.assert_allclose(denoised, x0, atol=1e-5)


def test_single_component_is_the_gaussian_posterior():
    mean, std, sigma = np.linspace(-1, 1, D), 0.3, 0.7
    x = np.random.default_rng(2).standard_normal((5, D))
    denoised = analytic.gmm_denoiser(mean[None], [std], [1.0])(jnp.asarray(x), sigma)
    expected = mean + std**2 / (std**2 + sigma**2) * (x - mean)
    np.testing.assert_allclose(denoised, expected, rtol=1e-5, atol=1e-6)


def test_denoiser_is_tweedie(mixture):
    """E[x0 | x] = x + sigma^2 grad log p_sigma(x) (Tweedie's formula), per-example sigmas."""
    means, stds, weights = mixture

    def log_marginal(x, sigma):
        var = stds**2 + sigma**2
        squared = jnp.sum((x - means) ** 2, axis=-1)
        logits = jnp.log(weights) - 0.5 * D * jnp.log(var) - 0.5 * squared / var
        return jax.scipy.special.logsumexp(logits)

    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(3).standard_normal((4, D)))
        sigma = jnp.asarray([0.02, 0.2, 1.0, 10.0])
        score = jax.vmap(jax.grad(log_marginal))(x, sigma)
        denoised = analytic.gmm_denoiser(means, stds, weights)(x, sigma)
        np.testing.assert_allclose(denoised, x + sigma[:, None] ** 2 * score, atol=1e-10)


def test_denoiser_limits_and_stability(mixture):
    means, stds, weights = mixture
    denoise = analytic.gmm_denoiser(means, stds, weights)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, D)), jnp.float32)
    np.testing.assert_allclose(denoise(x, 1e-6), x, atol=1e-6)  # sigma -> 0: D(x) -> x
    np.testing.assert_array_equal(denoise(x, 0.0), x)
    # Far from every mode and at a tiny level every density underflows; log-sum-exp does not.
    far = denoise(1e3 * x, 1e-3)
    assert np.all(np.isfinite(far))
    np.testing.assert_allclose(far, 1e3 * np.asarray(x), rtol=1e-3)  # shrink ~ 1 at sigma 1e-3
    resp = np.exp(analytic.gmm_log_responsibilities(means, stds, weights, 1e3 * x, 1e-3))
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-6)
    # The winner is the component of the highest log density (its std matters as much as its mean).
    var = stds**2 + 1e-6
    squared = np.sum((1e3 * np.asarray(x, np.float64)[:, None] - means) ** 2, axis=-1)
    log_density = np.log(weights) - 0.5 * D * np.log(var) - 0.5 * squared / var
    np.testing.assert_array_equal(np.argmax(resp, axis=1), np.argmax(log_density, axis=1))
    # At a huge level the posterior mean is the weighted mean of the means.
    prior_mean = np.sum(weights[:, None] * means, axis=0) / weights.sum()
    np.testing.assert_allclose(denoise(x, 1e4)[0], prior_mean, atol=1e-4)


def test_timestep_sigma_at_integers_and_inverse_of_grids(schedule):
    sigmas = grids.train_sigmas(schedule)
    t = np.array([0, 1, 17, 500, 998, 999])
    np.testing.assert_allclose(analytic.timestep_sigma(schedule, jnp.asarray(t)), sigmas[t], 1e-5)
    targets = np.geomspace(sigmas[0], sigmas[-1], 13)  # between the training levels
    fractional = grids.sigma_to_timestep(targets, sigmas)
    np.testing.assert_allclose(analytic.timestep_sigma(schedule, fractional), targets, rtol=1e-5)


def test_model_fn_returns_the_exact_eps(mixture, schedule):
    """At integer t the adapter's eps is (x - D(x, sigma_t)) / sigma_t with x = x_t / a_t."""
    means, stds, weights = mixture
    denoise = analytic.gmm_denoiser(means, stds, weights)
    model_fn = analytic.sigma_view_model_fn(denoise, schedule)
    t = np.array([0, 10, 250, 999])
    x_t = np.random.default_rng(5).standard_normal((4, D))
    alpha_bar = np.asarray(schedule.alphas_cumprod, np.float64)[t][:, None]
    sigma = np.sqrt((1 - alpha_bar) / alpha_bar)
    x = x_t / np.sqrt(alpha_bar)
    x0 = np.concatenate(
        [_numpy_posterior(means, stds, weights, x[i : i + 1], sigma[i, 0])[1] for i in range(4)]
    )
    eps = model_fn(jnp.asarray(x_t, jnp.float32), jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(eps, (x - x0) / sigma, rtol=1e-4, atol=1e-4)
    # The x0 parameterisation of the same model returns the posterior mean.
    x0_model = analytic.sigma_view_model_fn(denoise, schedule, "x0")
    np.testing.assert_allclose(x0_model(jnp.asarray(x_t, jnp.float32), t), x0, atol=1e-4)


def test_pf_ode_endpoint_of_a_gaussian_is_closed_form():
    """For x0 ~ N(mu, s^2 I) the flow is x(sigma) = mu + r(sigma) (x_start - mu) with
    r = sqrt((s^2 + sigma^2) / (s^2 + sigma_start^2)), so it ends at r(0) (x_start - mu) + mu."""
    mean, std, sigma_start = np.linspace(-1, 1, D), 0.1, 80.0
    x = sigma_start * np.random.default_rng(6).standard_normal((16, D))
    denoise = analytic.gmm_denoiser(mean[None], [std], [1.0])
    endpoint = analytic.pf_ode_endpoint(denoise, x, sigma_start, 1e-6, 1000)
    expected = mean + std * (x - mean) / np.sqrt(std**2 + sigma_start**2)
    assert endpoint.dtype == np.float64
    np.testing.assert_allclose(endpoint, expected, atol=1e-9)


def test_pf_ode_endpoint_converges_on_the_mixture(mixture, schedule):
    """Halving the step count moves the reference by < 1e-6 RMS (benchmarks/few_step.py's)."""
    means, stds, weights = mixture
    sigmas = grids.train_sigmas(schedule)
    x = sigmas[-1] * np.random.default_rng(7).standard_normal((64, D))
    denoise = analytic.gmm_denoiser(means, stds, weights)
    fine, coarse = (
        analytic.pf_ode_endpoint(denoise, x, sigmas[-1], 1e-4 * sigmas[0], n) for n in (2000, 1000)
    )
    assert np.sqrt(np.mean((fine - coarse) ** 2)) < 1e-6
    # It lands on the data: within a few stds of a mode.
    nearest = np.min(np.linalg.norm(fine[:, None] - means, axis=-1), axis=1)
    assert np.all(nearest < 3 * np.sqrt(D) * stds.max())
