import numpy as np
import pytest

from diffusion import schedules


def test_linear_matches_ho_et_al():
    s = schedules.make_schedule("linear", 1000, 1e-4, 0.02)
    betas = np.asarray(s.betas)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-3)
    np.testing.assert_allclose(
        s.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5
    )
    # Ho et al. report alpha_bar_T ~ 4e-5 for this schedule (L_T ~ 1e-5 bits/dim).
    assert float(s.alphas_cumprod[-1]) == pytest.approx(4.04e-5, rel=0.02)


def test_scaled_linear_is_square_of_linear_sqrt():
    s = schedules.make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    expected = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    np.testing.assert_allclose(s.betas, expected, rtol=1e-6)


def test_cosine_alpha_bar_follows_nichol_dhariwal_eq17():
    T, offset = 1000, 0.008
    s = schedules.make_schedule("cosine", T)
    t = np.arange(1, T + 1)
    f = lambda u: np.cos((u / T + offset) / (1 + offset) * np.pi / 2) ** 2  # noqa: E731
    expected = f(t) / f(0)
    # Identical except where beta clipping at 0.999 kicks in (the last step).
    np.testing.assert_allclose(s.alphas_cumprod[:-1], expected[:-1], rtol=1e-4, atol=1e-7)
    assert float(np.max(s.betas)) <= 0.999 + 1e-6


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_alphas_cumprod_decrease_in_open_interval(name):
    s = schedules.make_schedule(name, 500)
    ab = np.asarray(s.alphas_cumprod)
    assert np.all(np.diff(ab) < 0) and ab[0] < 1 and ab[-1] >= 0
    np.testing.assert_allclose(s.sigmas, np.sqrt((1 - ab) / ab), rtol=1e-5)


def test_unknown_schedule_names_field_and_choices():
    with pytest.raises(ValueError, match=r"^schedule='quadratic'.*linear, cosine"):
        schedules.make_schedule("quadratic", 1000)


def test_bad_betas_rejected():
    with pytest.raises(ValueError, match=r"^beta_start"):
        schedules.make_schedule("linear", 1000, 0.02, 1e-4)
    with pytest.raises(ValueError, match=r"^num_timesteps"):
        schedules.make_schedule("linear", 1)
