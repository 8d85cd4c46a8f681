import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.functional import count_params, functionalize, init_params
from models.unet import UNet, UNetConfig

TINY = UNetConfig(
    image_size=8,
    in_channels=1,
    out_channels=1,
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    num_heads=2,
    dropout=0.1,
    num_groups=8,
)


def _build(config):
    return lambda rngs: UNet(config, rngs=rngs)


def _randomise(params, seed=0):
    """Zero-initialised output layers make a fresh U-Net output 0; perturb every weight."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten(
        [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )


def test_cifar_ddpm_unet_has_the_papers_35_7m_parameters():
    config = UNetConfig()  # defaults are Ho et al.'s CIFAR-10 network
    count = count_params(functionalize(_build(config)).abstract_params)
    assert count == pytest.approx(35.7e6, rel=0.01)
    assert count == 35_746_307  # diffusers' UNet2DModel with the same settings


def test_output_shape_equals_input_shape():
    config = UNetConfig(
        image_size=16,
        in_channels=3,
        out_channels=3,
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_groups=8,
    )
    model = functionalize(_build(config))
    params = init_params(_build(config), seed=0)
    out = model.apply(params, jnp.ones((2, 16, 16, 3)), jnp.array([1, 500]))
    assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32


def test_fresh_network_outputs_zero_and_depends_on_t_once_trained():
    model = functionalize(_build(TINY))
    params = init_params(_build(TINY), seed=0)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    np.testing.assert_array_equal(
        model.apply(params, x, jnp.array([3, 3])), 0.0
    )  # zero-init conv_out
    params = _randomise(params)
    a = model.apply(params, x, jnp.array([3, 3]))
    b = model.apply(params, x, jnp.array([900, 900]))
    assert not np.allclose(a, b)


def test_dropout_only_with_a_key():
    model = functionalize(_build(TINY))
    params = _randomise(init_params(_build(TINY), seed=0))
    x, t = jnp.ones((1, 8, 8, 1)), jnp.array([10])
    np.testing.assert_array_equal(model.apply(params, x, t), model.apply(params, x, t))
    a = model.apply(params, x, t, dropout_key=jax.random.key(0))
    b = model.apply(params, x, t, dropout_key=jax.random.key(1))
    assert not np.allclose(a, b)


def test_class_labels_condition_the_output():
    config = UNetConfig(**{**TINY.__dict__, "num_classes": 10, "dropout": 0.0})
    model = functionalize(_build(config))
    params = _randomise(init_params(_build(config), seed=0))
    assert params["class_embed"]["embedding"].shape == (11, 64)  # + the null class
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([10, 10])
    a = model.apply(params, x, t, class_labels=jnp.array([1, 2]))
    assert not np.allclose(a[0], a[1])
    null = model.apply(params, x, t)
    np.testing.assert_allclose(null, model.apply(params, x, t, class_labels=jnp.array([10, 10])))


def test_cross_attention_reads_context_and_honours_the_mask():
    config = UNetConfig(**{**TINY.__dict__, "context_dim": 12, "dropout": 0.0})
    model = functionalize(_build(config))
    params = _randomise(init_params(_build(config), seed=0))
    x, t = jnp.ones((1, 8, 8, 1)), jnp.array([10])
    context = jax.random.normal(jax.random.key(1), (1, 5, 12))
    a = model.apply(params, x, t, context=context)
    b = model.apply(params, x, t, context=context * 2.0)
    assert not np.allclose(a, b)
    # Masking out the last two tokens equals not passing them at all.
    mask = jnp.array([[True, True, True, False, False]])
    masked = model.apply(params, x, t, context=context, context_mask=mask)
    shorter = model.apply(params, x, t, context=context[:, :3])
    np.testing.assert_allclose(masked, shorter, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"image_size": 28}, r"data\.image_size=28 cannot be halved 3 times"),
        ({"num_groups": 24}, r"model\.num_groups=24"),
        ({"attention_resolutions": (7,)}, r"model\.attention_resolutions.*\[7\] never occur"),
        ({"dropout": 1.0}, r"model\.dropout=1.0"),
        ({"num_heads": 3}, r"model\.num_heads=3"),
    ],
)
def test_invalid_configs_are_explained(changes, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**changes).validate()
