"""weighting: each loss weighting against its paper's definition (and a reference library's)."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import schedules, weighting
from diffusion.precond import Precond
from diffusion.weighting import Weighting

SCHEDULE = schedules.make_schedule("linear", 1000, 1e-4, 0.02)
ALPHA = jnp.sqrt(SCHEDULE.alphas_cumprod)
S = jnp.sqrt(1.0 - SCHEDULE.alphas_cumprod)
SNR = ALPHA**2 / S**2


def _output_weight(name: str, prediction: str, **constants) -> np.ndarray:
    p = Precond(prediction, sigma_data=constants.get("sigma_data", 0.5))
    w = Weighting(name, **constants)
    return np.asarray(weighting.output_weight(w, SNR, p.output_per_x0_error(ALPHA, S)))


def test_uniform_is_one_for_every_parameterisation():
    for prediction in ("eps", "x0", "v", "edm"):
        np.testing.assert_array_equal(_output_weight("uniform", prediction), 1.0)


def test_min_snr_is_hang_et_al_for_eps_x0_and_v():
    """Hang et al. 2023 sec. 3.4 (and diffusers' train_text_to_image snr_gamma): the eps loss
    is weighted min(SNR, gamma) / SNR, the x0 loss min(SNR, gamma), the v loss
    min(SNR, gamma) / (SNR + 1)."""
    clipped = np.minimum(SNR, 5.0)
    np.testing.assert_allclose(_output_weight("min_snr", "eps"), clipped / SNR, rtol=1e-5)
    np.testing.assert_allclose(_output_weight("min_snr", "x0"), clipped, rtol=1e-5)
    np.testing.assert_allclose(_output_weight("min_snr", "v"), clipped / (SNR + 1), rtol=1e-4)


def test_soft_min_snr_is_k_diffusions_weighting_on_edms_output():
    """k-diffusion weights EDM's F-loss by (sigma sd)^2 / (sigma^2 + sd^2)^2 (Crowson et al.
    2024's soft-min-snr): our x0-space form at gamma = 1 / sd^2 gives the same."""
    sd = 0.5
    sigma = S / ALPHA
    reference = (sigma * sd) ** 2 / (sigma**2 + sd**2) ** 2
    ours = _output_weight("soft_min_snr", "edm", snr_gamma=1 / sd**2, sigma_data=sd)
    np.testing.assert_allclose(ours, reference, rtol=1e-4)


def test_soft_min_snr_lies_below_the_hard_minimum_and_meets_it_far_away():
    soft = _output_weight("soft_min_snr", "x0")
    hard = _output_weight("min_snr", "x0")
    assert np.all(soft <= hard * (1 + 1e-6))
    far = (SNR > 500) | (SNR < 0.01)
    np.testing.assert_allclose(soft[far], hard[far], rtol=0.02)


def test_edm_weighting_makes_edms_output_loss_unweighted():
    """Karras et al. 2022 eq. 8: lambda(sigma) c_out(sigma)^2 = 1."""
    np.testing.assert_allclose(_output_weight("edm", "edm", sigma_data=0.5), 1.0, rtol=1e-4)
    sigma = S / ALPHA
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(_output_weight("edm", "x0"), lam, rtol=1e-4)


def test_p2_is_choi_et_al_on_the_eps_loss():
    """Choi et al. 2022 eq. 8: lambda'_t = 1 / (k + SNR(t))^gamma on L_simple; gamma = 0 is
    uniform."""
    for k, gamma in ((1.0, 1.0), (1.0, 0.5), (2.0, 0.0)):
        ours = _output_weight("p2", "eps", p2_k=k, p2_gamma=gamma)
        np.testing.assert_allclose(ours, 1.0 / (k + SNR) ** gamma, rtol=1e-4)


@pytest.mark.parametrize(
    "name,prediction,process,match",
    [
        ("p2", "v", "ddpm", "not defined for prediction='v'; allowed predictions: eps"),
        ("min_snr", "edm", "ddpm", "not defined for prediction='edm'"),
        ("min_snr", "velocity", "flow", "not the flow process; allowed: uniform"),
        ("edm", "x0", "flow", "not the flow process"),
        ("focal", "eps", "ddpm", "loss_weighting='focal' is not known"),
    ],
)
def test_undefined_weightings_are_refused(name, prediction, process, match):
    with pytest.raises(ValueError, match=match):
        weighting.validate_weighting(Weighting(name), prediction, process)


def test_defined_weightings_pass():
    for name, predictions in weighting.DEFINED_FOR.items():
        for prediction in predictions:
            process = "flow" if prediction == "velocity" else "ddpm"
            weighting.validate_weighting(Weighting(name), prediction, process)
