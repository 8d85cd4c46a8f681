import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import forward, losses, schedules


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("linear", 1000, 1e-4, 0.02)


def test_timesteps_cover_range_uniformly():
    t = losses.sample_timesteps(jax.random.key(0), 100_000, 10)
    counts = np.bincount(np.asarray(t), minlength=10)
    assert t.dtype == jnp.int32 and counts.shape == (10,)
    np.testing.assert_allclose(counts / 100_000, 0.1, atol=0.005)


@pytest.mark.parametrize("prediction", forward.PREDICTIONS)
def test_oracle_that_knows_the_data_has_zero_loss(schedule, prediction):
    """A model that knows x0 and inverts x_t exactly outputs the target: the loss is ~0."""
    x0 = jax.random.normal(jax.random.key(1), (16, 4, 4, 1))

    def oracle(x_t, t):
        alpha_bar = forward.alpha_bar_at(schedule, t, x_t)
        eps = forward.eps_from_x0(x_t, x0, alpha_bar)
        return forward.training_target(prediction, x0, eps, alpha_bar)

    loss, metrics = losses.noise_prediction_loss(
        oracle, schedule, x0, jax.random.key(2), prediction
    )
    assert float(loss) < 1e-6
    assert metrics["loss"] is loss


def test_zero_model_loss_is_target_second_moment(schedule):
    """Predicting zero with eps targets costs E[eps^2] = 1."""
    x0 = jnp.zeros((64, 8, 8, 1))
    loss, _ = losses.noise_prediction_loss(
        lambda x, t: jnp.zeros_like(x), schedule, x0, jax.random.key(3)
    )
    assert float(loss) == pytest.approx(1.0, abs=0.05)
