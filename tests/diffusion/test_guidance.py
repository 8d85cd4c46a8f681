import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import guidance, samplers, schedules


def _model(x, t, cond):
    """Output depends on the condition (a per-example vector) in a nonlinear way."""
    return jnp.tanh(x + cond["shift"][:, None]) * (1.0 + t[:, None] / 1000.0)


X = jax.random.normal(jax.random.key(0), (3, 5))
T = jnp.array([10.0, 500.0, 900.0])
COND = {"shift": jnp.array([0.3, -1.0, 2.0])}
UNCOND = {"shift": jnp.zeros(3)}


def test_scale_one_is_the_conditional_and_zero_the_unconditional_model():
    one = guidance.guided_model(_model, COND, UNCOND, jnp.array(1.0), jnp.array(0.0))
    zero = guidance.guided_model(_model, COND, UNCOND, jnp.array(0.0), jnp.array(0.0))
    np.testing.assert_allclose(one(X, T), _model(X, T, COND), rtol=1e-6)
    np.testing.assert_allclose(zero(X, T), _model(X, T, UNCOND), rtol=1e-6)


def test_batched_branches_equal_two_separate_calls_in_one_network_call():
    calls = []

    def counting_model(x, t, cond):
        calls.append(x.shape[0])
        return _model(x, t, cond)

    guided = guidance.guided_model(counting_model, COND, UNCOND, jnp.array(7.5), jnp.array(0.0))
    out = guided(X, T)
    expected = _model(X, T, UNCOND) + 7.5 * (_model(X, T, COND) - _model(X, T, UNCOND))
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert calls == [6]  # one call on the doubled batch


def test_rescale_matches_lin_et_al_and_restores_the_conditional_std():
    cond_out, uncond_out = _model(X, T, COND), _model(X, T, UNCOND)
    guided = uncond_out + 5.0 * (cond_out - uncond_out)
    full = guidance.combine(cond_out, uncond_out, jnp.array(5.0), jnp.array(1.0))
    np.testing.assert_allclose(jnp.std(full, axis=1), jnp.std(cond_out, axis=1), rtol=1e-5)
    half = guidance.combine(cond_out, uncond_out, jnp.array(5.0), jnp.array(0.5))
    np.testing.assert_allclose(half, 0.5 * full + 0.5 * guided, rtol=1e-5)


def test_dynamic_thresholding_follows_imagen():
    x0 = jnp.stack([jnp.linspace(-3.0, 3.0, 1001), jnp.linspace(-0.5, 0.5, 1001)])
    out = guidance.threshold_x0(x0, "dynamic", percentile=0.9)
    s = float(jnp.quantile(jnp.abs(x0[0]), 0.9))
    np.testing.assert_allclose(out[0], jnp.clip(x0[0], -s, s) / s, rtol=1e-6)
    np.testing.assert_allclose(out[1], x0[1])  # s = max(1, .) leaves in-range samples alone
    np.testing.assert_array_equal(guidance.threshold_x0(x0, "static"), jnp.clip(x0, -1, 1))


def test_guidance_scale_and_conditioning_are_traced_one_compile():
    schedule = schedules.make_schedule("linear", 1000)
    traces = []

    @jax.jit
    def run(scale, cond, uncond):
        traces.append(1)
        return samplers.sample(
            _model,
            schedule,
            X,
            jax.random.key(0),
            sampler="dpmpp_2m",
            num_steps=5,
            cond=cond,
            uncond=uncond,
            guidance_scale=scale,
        ).samples

    a = run(1.0, COND, UNCOND)
    b = run(4.0, COND, UNCOND)
    c = run(4.0, {"shift": -COND["shift"]}, UNCOND)
    assert len(traces) == 1
    assert not np.allclose(a, b) and not np.allclose(b, c)
    plain = samplers.sample(
        lambda x, t: _model(x, t, COND),
        schedule,
        X,
        jax.random.key(0),
        sampler="dpmpp_2m",
        num_steps=5,
    ).samples
    np.testing.assert_allclose(a, plain, rtol=1e-5, atol=1e-6)


def test_guidance_without_an_unconditional_branch_is_refused():
    with pytest.raises(ValueError, match="needs `uncond`"):
        samplers.conditioned_model(_model, COND, None, 3.0)
