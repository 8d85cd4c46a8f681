import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import flow

MEAN, STD = 0.5, 0.3


def _exact_velocity(x, t_scaled):
    """E[eps - x0 | x_t] for x0 ~ N(MEAN, STD^2): x_t ~ N((1-t) MEAN, (1-t)^2 STD^2 + t^2)."""
    t = (t_scaled / 1000.0)[:, None]
    var = (1 - t) ** 2 * STD**2 + t**2
    centred = x - (1 - t) * MEAN
    x0 = MEAN + (1 - t) * STD**2 * centred / var
    eps = t * centred / var
    return eps - x0


def test_path_and_target():
    x0, eps, t = jnp.array([[2.0]]), jnp.array([[-1.0]]), jnp.array([0.25])
    assert float(flow.flow_q_sample(x0, t, eps)[0, 0]) == pytest.approx(0.75 * 2 - 0.25)
    assert float(flow.velocity_target(x0, eps)[0, 0]) == -3.0


def test_oracle_velocity_has_lower_loss_than_zero():
    x0 = MEAN + STD * jax.random.normal(jax.random.key(0), (4096, 2))
    exact, _ = flow.flow_matching_loss(_exact_velocity, x0, jax.random.key(1))
    zero, _ = flow.flow_matching_loss(lambda x, t: jnp.zeros_like(x), x0, jax.random.key(1))
    assert float(exact) < 0.75 * float(zero)


@pytest.mark.parametrize("sampler,steps,nfe", [("euler", 50, 50), ("heun", 25, 49)])
def test_flow_ode_reproduces_gaussian_moments(sampler, steps, nfe):
    x_T = jax.random.normal(jax.random.key(0), (16384, 2))
    x, _, count = flow.sample_flow(_exact_velocity, x_T, sampler=sampler, num_steps=steps)
    # Euler is first order: at 50 steps its std is ~4% low (see the order test below).
    assert abs(float(x.mean()) - MEAN) < 0.01 and abs(float(x.std()) - STD) < 0.02
    assert int(count) == nfe


def test_heun_is_second_order_and_euler_first():
    x_T = jax.random.normal(jax.random.key(0), (8192, 2))
    err = {
        (s, n): abs(
            float(flow.sample_flow(_exact_velocity, x_T, sampler=s, num_steps=n)[0].std()) - STD
        )
        for s in ("euler", "heun")
        for n in (5, 10)
    }
    assert 1.5 < err[("euler", 5)] / err[("euler", 10)] < 2.6
    assert err[("heun", 5)] / err[("heun", 10)] > 3.0


def test_shift_matches_sd3_formula():
    t = np.linspace(1, 0, 5)
    np.testing.assert_allclose(flow.grids.flow_sigmas(4, 3.0), 3 * t / (1 + 2 * t))


def test_matches_diffusers_flow_match_euler():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    steps, shift = 12, 3.0
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sigmas = flow.grids.flow_sigmas(steps, shift)
    scheduler.set_timesteps(sigmas=list(sigmas[:-1]))
    scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float32)
    scheduler.timesteps = torch.tensor(sigmas[:-1] * 1000, dtype=torch.float32)
    x_T = np.asarray(jax.random.normal(jax.random.key(0), (4, 3)))
    sample = torch.tensor(x_T)
    for t in scheduler.timesteps:
        v = torch.tensor(
            np.asarray(_exact_velocity(jnp.asarray(sample.numpy()), jnp.full((4,), float(t))))
        )
        sample = scheduler.step(v, t, sample).prev_sample
    ours, _, _ = flow.sample_flow(_exact_velocity, jnp.asarray(x_T), num_steps=steps, shift=shift)
    np.testing.assert_allclose(np.asarray(ours), sample.numpy(), rtol=1e-5, atol=1e-6)


def test_bad_flow_options_name_the_field():
    with pytest.raises(ValueError, match=r"sampler\.name='unipc' cannot integrate a flow model"):
        flow.validate_flow_sampler("unipc", 10, 1.0)
    with pytest.raises(ValueError, match=r"diffusion\.flow_shift=0"):
        flow.validate_flow_sampler("euler", 10, 0.0)
