import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.functional import FunctionalModel, count_params, functionalize, init_params
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


# The numbers checked here do not depend on XLA's optimisation passes: skip them.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _tiny(**changes) -> UNetConfig:
    return UNetConfig(**{**TINY.__dict__, **changes})


@functools.cache
def _network(config: UNetConfig):
    """(functional model, jitted apply, jitted init) for one config, built once per session."""
    model = functionalize(lambda rngs: UNet(config, rngs=rngs))
    init = jax.jit(lambda: init_params(lambda rngs: UNet(config, rngs=rngs), seed=0))
    return model, jax.jit(model.apply), init


def _random_params(model: FunctionalModel, seed: int):
    """Zero-initialised output layers make a fresh U-Net output 0; use N(0, 0.1^2) weights.

    Drawn with NumPy on the host: a jitted draw per leaf costs seconds of XLA compile time.
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: jnp.asarray(0.1 * rng.standard_normal(leaf.shape), jnp.float32),
        model.abstract_params,
    )


def _random_network(config: UNetConfig):
    model, apply, _ = _network(config)
    return model, apply, _random_params(model, 0)


def test_cifar_ddpm_unet_has_the_papers_35_7m_parameters():
    config = UNetConfig()  # defaults are Ho et al.'s CIFAR-10 network
    count = count_params(functionalize(lambda rngs: UNet(config, rngs=rngs)).abstract_params)
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
    _, apply, params = _random_network(config)
    out = apply(params, jnp.ones((2, 16, 16, 3)), jnp.array([1, 500]))
    assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


def test_fresh_network_outputs_zero_and_depends_on_t_once_trained():
    model, apply, init = _network(TINY)
    params = init()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    np.testing.assert_array_equal(apply(params, x, jnp.array([3, 3])), 0.0)  # zero conv_out
    params = _random_params(model, 0)
    a = apply(params, x, jnp.array([3, 3]))
    b = apply(params, x, jnp.array([900.0, 900.0]))  # float timesteps work too
    assert not np.allclose(a, b)


def test_bfloat16_computation_keeps_float32_params_and_output():
    config = _tiny(dtype="bfloat16", dropout=0.0)
    model, apply, _ = _network(config)
    params = _random_params(model, 0)
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 1))
    out = apply(params, x, jnp.array([10]))
    reference = _network(_tiny(dropout=0.0))[1](params, x, jnp.array([10]))
    assert out.dtype == jnp.float32
    scale = float(jnp.abs(reference).max())
    np.testing.assert_allclose(out, reference, atol=0.05 * scale)


def test_dropout_only_with_a_key():
    _, apply, params = _random_network(TINY)
    x, t = jnp.ones((1, 8, 8, 1)), jnp.array([10])
    np.testing.assert_array_equal(apply(params, x, t), apply(params, x, t))
    a = apply(params, x, t, dropout_key=jax.random.key(0))
    b = apply(params, x, t, dropout_key=jax.random.key(1))
    assert not np.allclose(a, b)
    assert not np.allclose(a, apply(params, x, t))


def test_class_labels_condition_the_output():
    config = _tiny(num_classes=10, dropout=0.0)
    _, apply, params = _random_network(config)
    assert params["class_embed"]["embedding"].shape == (11, 64)  # + the null class
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([10, 10])
    a = apply(params, x, t, class_labels=jnp.array([1, 2]))
    assert not np.allclose(a[0], a[1])
    null = apply(params, x, t)  # no labels = the reserved null class
    np.testing.assert_allclose(null, apply(params, x, t, class_labels=jnp.array([10, 10])))


def test_cross_attention_reads_context_and_honours_the_mask():
    config = _tiny(context_dim=12, dropout=0.0)
    _, apply, params = _random_network(config)
    x, t = jnp.ones((1, 8, 8, 1)), jnp.array([10])
    context = jax.random.normal(jax.random.key(1), (1, 5, 12))
    a = apply(params, x, t, context=context)
    b = apply(params, x, t, context=context * 2.0)
    assert not np.allclose(a, b)
    # Masking out the last two tokens equals not passing them at all.
    mask = jnp.array([[True, True, True, False, False]])
    masked = apply(params, x, t, context=context, context_mask=mask)
    shorter = apply(params, x, t, context=context[:, :3])
    np.testing.assert_allclose(masked, shorter, rtol=1e-5, atol=1e-6)
    assert not np.allclose(masked, a)


def test_conditioning_the_network_was_not_built_for_is_an_error():
    model = functionalize(lambda rngs: UNet(TINY, rngs=rngs))
    x, t = jnp.ones((1, 8, 8, 1)), jnp.array([10])
    with pytest.raises(ValueError, match="num_classes=None"):
        jax.eval_shape(
            lambda p: model.apply(p, x, t, class_labels=jnp.array([1])), model.abstract_params
        )
    with pytest.raises(ValueError, match="context_dim=None"):
        jax.eval_shape(
            lambda p: model.apply(p, x, t, context=jnp.ones((1, 2, 4))), model.abstract_params
        )
    with pytest.raises(ValueError, match="pooled_dim=None"):
        jax.eval_shape(
            lambda p: model.apply(p, x, t, pooled=jnp.ones((1, 4))), model.abstract_params
        )


def test_pooled_text_embedding_conditions_the_output():
    _, apply, params = _random_network(_tiny(pooled_dim=6, dropout=0.0))
    x, t = jnp.ones((2, 8, 8, 1)), jnp.array([10, 10])
    pooled = jax.random.normal(jax.random.key(4), (2, 6))
    a = apply(params, x, t, pooled=pooled)
    assert not np.allclose(a[0], a[1])
    assert not np.allclose(a, apply(params, x, t))


@pytest.mark.parametrize(
    "changes,match",
    [
        (
            {"image_size": 28},
            r"data\.image_size=28 cannot be halved 3 times .*model\.channel_mult=\(1, 2, 2, 2\) "
            r"has 4 levels\); use a multiple of 8",
        ),
        (
            {"num_groups": 24},
            r"model\.num_groups=24 must divide every level's channels; "
            r"model\.base_channels \* mult = 128 is not divisible",
        ),
        (
            {"attention_resolutions": (7,)},
            r"model\.attention_resolutions=\(7,\): \[7\] never occur; "
            r"the feature-map sizes are \(32, 16, 8, 4\)",
        ),
        ({"dropout": 1.0}, r"model\.dropout=1.0 must be in \[0, 1\)"),
        ({"num_heads": 3}, r"model\.num_heads=3 must divide every level's channels \(128\)"),
        ({"channel_mult": ()}, r"model\.channel_mult=\(\) needs >= 1 positive entries"),
        ({"base_channels": 2, "num_groups": 1}, r"model\.base_channels=2 must be >= 4"),
        ({"dtype": "float16"}, r"model\.dtype='float16' is not one of \['bfloat16', 'float32'\]"),
        (
            {"attention_impl": "flash"},
            r"model\.attention_impl='flash' is not known; allowed: None, 'xla', 'cudnn'",
        ),
        (
            {"heads_per_level": (1, 2)},
            r"model\.heads_per_level=\(1, 2\) needs one positive entry per level \(4\)",
        ),
        (
            {"heads_per_level": (1, 2, 3, 4)},
            r"model\.heads_per_level\[2\]=3 must divide every level's channels \(256\)",
        ),
        ({"norm_eps": 0.0}, r"model\.norm_eps=0\.0 must be > 0"),
        ({"freq_shift": 2}, r"model\.freq_shift=2 is not known; allowed: 0, 1"),
        ({"downsample_padding": 2}, r"model\.downsample_padding=2 is not known; allowed: 0, 1"),
    ],
)
def test_invalid_configs_are_explained(changes, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**changes).validate()


@pytest.mark.parametrize("context_dim", [None, 12], ids=["ddpm_attention", "spatial_transformer"])
def test_xla_attention_impl_gives_the_same_output_as_jaxs_choice(context_dim):
    chosen, apply, _ = _network(_tiny(context_dim=context_dim))
    _, apply_xla, _ = _network(_tiny(context_dim=context_dim, attention_impl="xla"))
    params = _random_params(chosen, 0)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.array([10, 500])
    cond = {} if context_dim is None else {"context": jnp.ones((2, 3, context_dim))}
    np.testing.assert_allclose(
        apply_xla(params, x, t, **cond), apply(params, x, t, **cond), rtol=1e-6, atol=1e-6
    )


def test_remat_gives_the_same_output_and_gradients():
    """`remat=True` wraps every ResBlock and attention block in nnx.remat: same numbers (dropout
    streams included), but the backward pass recomputes the blocks' activations."""
    config = _tiny(context_dim=12, dropout=0.1)
    plain, _, _ = _network(config)
    remat, _, _ = _network(_tiny(context_dim=12, dropout=0.1, remat=True))
    params = _random_params(plain, 0)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t, context = jnp.array([10, 500]), jax.random.normal(jax.random.key(1), (2, 5, 12))

    def loss(model):
        def value(p):
            out = model.apply(p, x, t, context=context, dropout_key=jax.random.key(2))
            return jnp.mean(out**2)

        return jax.value_and_grad(value)

    value, grads = jax.jit(loss(plain))(params)
    remat_value, remat_grads = jax.jit(loss(remat))(params)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads, grads
    )
    assert float(jnp.abs(grads["down_blocks"][0]["conv1"]["kernel"]).max()) > 0

    # One checkpoint per ResBlock (2 down, 2 mid, 4 up) and attention block (1, 1, 2).
    def checkpoints(model) -> int:
        forward = jax.make_jaxpr(lambda p: model.apply(p, x, t, context=context))(params)
        return len(re.findall(r"\b(?:remat\d*|checkpoint)\[", str(forward)))

    assert (checkpoints(remat), checkpoints(plain)) == (12, 0)


def test_sd_options_reach_the_layers():
    """norm_eps: ResBlocks and the output norm (text-attention GroupNorm keeps 1e-6); heads per
    level; bias-free q / k / v; 1x1-conv projections; timestep features; Downsample padding."""
    config = _tiny(
        context_dim=12,
        norm_eps=1e-5,
        heads_per_level=(4, 2),
        qkv_bias=False,
        use_linear_projection=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
    )
    unet = UNet(config, rngs=nnx.Rngs(0))
    assert unet.down_blocks[0].norm1.epsilon == unet.norm_out.epsilon == 1e-5
    assert unet.down_attn[1].norm.epsilon == 1e-6
    assert (
        unet.down_attn[1].self_attention.num_heads == unet.mid_attn.cross_attention.num_heads == 2
    )
    assert unet.up_attn[0].self_attention.num_heads == 2  # the up path starts at the last level
    assert unet.up_attn[0].self_attention.query.bias is None
    assert unet.mid_attn.proj_in.kernel[...].shape == (1, 1, 32, 32)
    assert (unet.time_embed.flip_sin_to_cos, unet.time_embed.freq_shift) == (True, 0)
    assert unet.downsamplers[0].conv.padding == ((1, 1), (1, 1))
