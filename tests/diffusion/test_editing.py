"""Image-to-image and inpainting (diffusion/editing.py, grids.drop_first, the sampler's `init`):
diffusers' strength rule, the cut grid, closed-form chains and one compile for every strength."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import editing, grids, processes, samplers, schedules
from diffusion.editing import Init

SHAPE = (2, 6, 6, 3)
MASK_SHAPE = (2, 6, 6, 1)


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("linear", 1000, 1e-4, 0.02)


@pytest.fixture(scope="module")
def arrays():
    """(x_T, image, binary mask [B, H, W, 1] with both values present)."""
    x_T = jax.random.normal(jax.random.key(0), SHAPE)
    image = jax.random.uniform(jax.random.key(1), SHAPE, minval=-1.0, maxval=1.0)
    mask = jax.random.bernoulli(jax.random.key(2), 0.5, MASK_SHAPE).astype(jnp.float32)
    assert 0.0 < float(mask.mean()) < 1.0
    return x_T, image, mask


def _eps_model(x, t):
    """A nonlinear eps model that mixes neighbouring pixels (the kept region matters)."""
    scale = (t / 1000.0).reshape((-1, 1, 1, 1))
    return 0.5 * jnp.tanh(x) + 0.2 * jnp.roll(jnp.tanh(x), 1, axis=1) + 0.05 * scale


@pytest.mark.parametrize(
    "num_steps,strength,start",
    [(10, 0.6, 4), (10, 1.0, 0), (10, 0.3, 7), (10, 0.7, 3), (50, 0.75, 13), (25, 0.5, 13)],
)
def test_start_step_is_diffusers_rule(num_steps, strength, start):
    # int(10 * 0.3) = 3 and int(10 * 0.7) = 7 although both products are 3.0000000000000004 /
    # 7.000000000000001 in floating point; int(25 * 0.5) = 12 keeps 12 of 25 steps.
    assert editing.start_step(num_steps, strength) == start


@pytest.mark.parametrize("strength", [0.0, -0.2, 1.01, float("nan"), True, "0.5"])
def test_start_step_refuses_strength_outside_unit_interval(strength):
    with pytest.raises(ValueError, match="strength"):
        editing.start_step(10, strength)


def test_start_step_refuses_strength_that_leaves_no_step():
    with pytest.raises(ValueError, match=r"leaves no step of num_steps=3 .* strength >= 0.333"):
        editing.start_step(3, 0.3)
    with pytest.raises(ValueError, match="num_steps"):
        editing.start_step(0, 0.5)


def test_drop_first_keeps_rows_and_pads_to_max_steps(schedule):
    grid = samplers.make_grid("lms", 10, schedule=schedule, max_steps=12)
    cut = grids.drop_first(grid, 4)
    assert cut.max_steps == 12
    np.testing.assert_array_equal(cut.timesteps[:6], grid.timesteps[4:10])
    np.testing.assert_array_equal(cut.sigmas[:6], grid.sigmas[4:10])
    np.testing.assert_array_equal(cut.sigmas_next[:6], grid.sigmas_next[4:10])
    np.testing.assert_array_equal(cut.steps_left, [6, 5, 4, 3, 2, 1] + [0] * 6)
    # LMS's first kept row keeps its 4th-order weights from the full grid, as diffusers does.
    np.testing.assert_array_equal(cut.extras["lms_coeffs"][:6], grid.extras["lms_coeffs"][4:10])
    assert np.count_nonzero(cut.extras["lms_coeffs"][0]) == 4
    # Padding rows are pad_grid's.
    np.testing.assert_array_equal(cut.timesteps[6:], 0.0)
    np.testing.assert_array_equal(cut.sigmas[6:], 1.0)
    np.testing.assert_array_equal(cut.sigmas_next[6:], 1.0)
    np.testing.assert_array_equal(cut.extras["lms_coeffs"][6:], 0.0)
    same = grids.drop_first(grid, 0)
    for name in ("timesteps", "sigmas", "sigmas_next", "steps_left"):
        np.testing.assert_array_equal(getattr(same, name), getattr(grid, name))


@pytest.mark.parametrize("count", [-1, 10, 1.5])
def test_drop_first_refuses_counts_that_leave_no_step(schedule, count):
    grid = samplers.make_grid("ddim", 10, schedule=schedule)
    with pytest.raises(ValueError, match=r"count=.* must be an integer in \[0, 9\]"):
        grids.drop_first(grid, count)


def _sample(schedule, x_T, sampler, *, init=None, strength=1.0, model=_eps_model, **kwargs):
    return samplers.sample(
        model,
        schedule,
        x_T,
        jax.random.key(3),
        sampler=sampler,
        num_steps=10,
        init=init,
        strength=strength,
        return_trajectory=True,
        **kwargs,
    )


@pytest.mark.parametrize(
    "process,sampler", [("ddpm", "ddim"), ("ddpm", "euler"), ("flow", "euler")]
)
def test_img2img_stays_on_the_images_noised_path(schedule, arrays, process, sampler):
    """A model whose x0 is the image: every state is the image noised with x_T to that level
    (so the chain started there) and the chain returns the image."""
    x_T, image, _ = arrays
    out = _sample(
        schedule if process == "ddpm" else None,
        x_T,
        sampler,
        init=Init(image),
        strength=0.6,
        model=lambda x, t: image,
        prediction="x0",
        process=process,
    )
    assert int(out.nfe) == 6
    grid = samplers.make_grid(sampler, 10, process=process, schedule=schedule)
    alpha, s, _ = processes.view_levels(process, grid.sigmas_next[4:])
    expected = alpha[:, None, None, None, None] * image + s[:, None, None, None, None] * x_T
    np.testing.assert_allclose(out.trajectory[:6], expected, atol=2e-5)
    np.testing.assert_allclose(out.samples, image, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m"])
def test_inpainting_returns_the_image_where_the_mask_is_zero(schedule, arrays, sampler):
    x_T, image, mask = arrays
    out = _sample(schedule, x_T, sampler, init=Init(image, mask), strength=0.6)
    keep = np.broadcast_to(np.asarray(mask) == 0, SHAPE)
    np.testing.assert_array_equal(np.asarray(out.samples)[keep], np.asarray(image)[keep])
    assert np.max(np.abs(np.asarray(out.samples - image)[~keep])) > 0.1
    # Before the last step the kept region is the image noised with x_T to that level.
    grid = samplers.make_grid(sampler, 10, schedule=schedule)
    alpha, s, _ = processes.view_levels("ddpm", grid.sigmas_next[8])
    noised = np.asarray(alpha * image + s * x_T)
    np.testing.assert_allclose(np.asarray(out.trajectory[4])[keep], noised[keep], atol=1e-5)


def test_inpainting_ends_on_the_image_when_ddim_ends_above_sigma_zero(schedule, arrays):
    """set_alpha_to_one=False ends at alpha_bar_0 < 1; diffusers blends the clean image into
    those final latents, so the kept region is still the image."""
    x_T, image, mask = arrays
    out = _sample(
        schedule, x_T, "ddim", init=Init(image, mask), strength=0.6, set_alpha_to_one=False
    )
    keep = np.broadcast_to(np.asarray(mask) == 0, SHAPE)
    np.testing.assert_allclose(np.asarray(out.samples)[keep], np.asarray(image)[keep], atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_full_mask_from_noise_is_the_plain_chain_bit_for_bit(schedule, arrays, sampler):
    x_T, image, _ = arrays
    plain = _sample(schedule, x_T, sampler)
    edited = _sample(
        schedule, x_T, sampler, init=Init(image, jnp.ones(MASK_SHAPE), from_noise=True)
    )
    np.testing.assert_array_equal(edited.samples, plain.samples)
    np.testing.assert_array_equal(edited.trajectory, plain.trajectory)
    assert int(edited.nfe) == int(plain.nfe) == 10


def test_strengths_share_one_compile_and_padding_is_a_no_op(schedule, arrays):
    x_T, image, mask = arrays
    traces = []

    def model(x, t):
        traces.append(1)
        return _eps_model(x, t)

    denoise = samplers.make_denoiser(model)
    run = jax.jit(
        lambda grid, init: samplers.sample_on_grid(
            denoise,
            grid,
            x_T,
            jax.random.key(3),
            sampler="dpmpp_2m",
            init=init,
            return_trajectory=True,
        )
    )
    full = samplers.make_grid("dpmpp_2m", 10, schedule=schedule, max_steps=16)
    init = Init(image, mask)
    outs = {s: run(editing.edit_grid(full, init, s), init) for s in (0.3, 0.8)}
    assert run._cache_size() == 1
    assert len(traces) == 1  # the step is traced once, inside lax.cond
    assert int(outs[0.3].nfe) == 3 and int(outs[0.8].nfe) == 8
    # The same edit without padding (a 10-row grid) gives the same samples; padded rows of
    # the trajectory repeat the final state.
    unpadded = _sample(schedule, x_T, "dpmpp_2m", init=init, strength=0.3)
    np.testing.assert_allclose(outs[0.3].samples, unpadded.samples, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outs[0.3].trajectory[:3], unpadded.trajectory[:3], atol=1e-6)
    np.testing.assert_array_equal(
        outs[0.3].trajectory[3:], jnp.broadcast_to(outs[0.3].samples, (13, *SHAPE))
    )


def test_sample_refuses_inconsistent_edits(schedule, arrays):
    x_T, image, mask = arrays
    with pytest.raises(ValueError, match=r"strength=0.5 needs an `init` image"):
        _sample(schedule, x_T, "ddim", strength=0.5)
    with pytest.raises(ValueError, match="from_noise .* needs strength=1.0, not 0.5"):
        _sample(schedule, x_T, "ddim", init=Init(image, mask, from_noise=True), strength=0.5)
    with pytest.raises(ValueError, match=r"init.image has shape \(2, 6, 6, 1\)"):
        _sample(schedule, x_T, "ddim", init=Init(image[..., :1]), strength=0.5)
    with pytest.raises(ValueError, match=r"init.mask has shape \(2, 5, 6, 1\)"):
        _sample(schedule, x_T, "ddim", init=Init(image, mask[:, :5]), strength=0.5)
    with pytest.raises(ValueError, match="leaves no step"):
        _sample(schedule, x_T, "ddim", init=Init(image), strength=0.05)
