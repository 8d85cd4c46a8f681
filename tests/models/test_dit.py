import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sharding
from models import registry
from models.dit import DiT, DiTBlock, DiTConfig, patchify, sincos_pos_embed, unpatchify
from models.functional import FunctionalModel, count_params, functionalize

# A tiny DiT with every kind of conditioning: 2 blocks of width 32, 2 heads, 4 x 4 tokens.
TINY = DiTConfig(
    image_size=8,
    in_channels=2,
    out_channels=2,
    patch_size=2,
    depth=2,
    hidden_size=32,
    num_heads=2,
    num_classes=10,
    context_dim=12,
    pooled_dim=6,
)

pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py


def _tiny(**changes) -> DiTConfig:
    return DiTConfig(**{**TINY.__dict__, **changes})


@functools.cache
def _network(config: DiTConfig):
    """(functional model, jitted apply) for one config, built once per session."""
    model = functionalize(lambda rngs: DiT(config, rngs=rngs))
    return model, jax.jit(model.apply)


def _random_params(model: FunctionalModel, seed: int = 0):
    """N(0, 0.1^2) weights drawn on the host (zero-initialised gates would hide everything)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: jnp.asarray(0.1 * rng.standard_normal(leaf.shape), jnp.float32),
        model.abstract_params,
    )


def _inputs(batch: int = 2, config: DiTConfig = TINY):
    x = jax.random.normal(jax.random.key(0), (batch, 8, 8, config.in_channels))
    return x, jnp.arange(1, batch + 1) * 100


def _paper_count(depth: int, hidden: int, patch: int = 2, tokens: int = 256) -> int:
    """Parameters of the released DiT for 256 x 256 ImageNet (32 x 32 x 4 latents, 1000 classes,
    learn_sigma), counted from the architecture, including the frozen sin-cos table (`pos_embed`
    is an nn.Parameter with requires_grad=False, so `model.parameters()` counts it)."""
    d = hidden
    patch_embed = patch * patch * 4 * d + d
    timestep_mlp = 256 * d + d + d * d + d
    class_table = 1001 * d  # + the null class used for classifier-free guidance
    block = (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d) + (6 * d * d + 6 * d)
    final = 2 * d * d + 2 * d + d * patch * patch * 8 + patch * patch * 8
    return patch_embed + timestep_mlp + class_table + depth * block + final + tokens * d


def test_the_formula_reproduces_the_released_dit_xl_2_count():
    assert _paper_count(28, 1152) == 675_129_632  # facebookresearch/DiT, DiT-XL/2


@pytest.mark.parametrize(
    "size,paper_millions",
    [("S", 33), ("B", 130), ("L", 458), ("XL", 675)],  # Table 4 of Peebles & Xie 2023
)
def test_parameter_counts_match_the_paper(size, paper_millions):
    config = DiTConfig(
        image_size=32, in_channels=4, out_channels=4, size=size, num_classes=1000, learn_sigma=True
    )
    depth, hidden, _ = config.dims
    trainable = count_params(_network(config)[0].abstract_params)
    frozen_pos_embed = 256 * hidden  # a constant here, a parameter in the released code
    assert trainable + frozen_pos_embed == _paper_count(depth, hidden)
    assert trainable + frozen_pos_embed == pytest.approx(paper_millions * 1e6, rel=0.01)
    learned = DiTConfig(**{**config.__dict__, "pos_embed": "learned"})
    assert count_params(_network(learned)[0].abstract_params) == _paper_count(depth, hidden)


def test_scanned_and_unrolled_stacks_hold_the_same_parameters():
    scanned = _network(TINY)[0].abstract_params
    unrolled = _network(_tiny(use_scan=False))[0].abstract_params
    assert count_params(scanned) == count_params(unrolled)
    for index in range(2):
        jax.tree.map(
            lambda stacked, one: assert_shape(stacked.shape, (2, *one.shape)),
            scanned["blocks"],
            unrolled["blocks"][index],
        )


def assert_shape(actual, expected):
    assert tuple(actual) == tuple(expected)


@pytest.mark.parametrize("patch,learn_sigma", [(1, False), (2, True), (4, False), (8, True)])
def test_output_shape_for_each_patch_size(patch, learn_sigma):
    config = _tiny(patch_size=patch, learn_sigma=learn_sigma, num_classes=None, context_dim=None)
    model = _network(config)[0]
    x, t = _inputs()
    out = jax.eval_shape(lambda p: model.apply(p, x, t), model.abstract_params)
    assert out.shape == (2, 8, 8, 4 if learn_sigma else 2) and out.dtype == jnp.float32


def test_patchify_round_trips_and_keeps_each_patch_together():
    x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 4, 48)
    np.testing.assert_array_equal(tokens[0, 1].reshape(4, 4, 3), x[0, :4, 4:])  # row 0, col 1
    np.testing.assert_array_equal(unpatchify(tokens, 4, 2), x)


def test_sincos_position_embedding_encodes_column_then_row():
    table = sincos_pos_embed(4, 16)  # [16 tokens, 16 channels]
    assert table.shape == (16, 16)
    np.testing.assert_allclose(table[0], [0, 0, 0, 0, 1, 1, 1, 1] * 2, atol=1e-7)
    np.testing.assert_allclose(table[1, :8], table[4, 8:])  # (row 0, col 1) vs (row 1, col 0)
    np.testing.assert_allclose(table[1, 8:], table[0, 8:])  # same row, same second half
    assert table[1, 0] == pytest.approx(np.sin(1.0))


def test_adaln_zero_blocks_are_the_identity_and_the_network_outputs_zero_at_init():
    keys = jax.random.split(jax.random.key(1), 4)
    tokens = jax.random.normal(keys[0], (2, 16, 32))  # [B, T, D]
    c = jax.random.normal(keys[1], (2, 32))
    context = jax.random.normal(keys[2], (2, 5, 12))
    pooled = jax.random.normal(keys[3], (2, 6))
    x, t = _inputs()

    @jax.jit
    def fresh_outputs():
        """One compile: a fresh block on tokens, a fresh network on images, its params."""
        rngs = nnx.Rngs(params=0, dropout=0)
        block_out = DiTBlock(TINY, rngs=rngs)(tokens, c, context, jnp.ones((2, 5), bool))
        model = DiT(TINY, rngs=rngs)
        out = model(x, t, class_labels=jnp.array([1, 2]), context=context, pooled=pooled)
        return block_out, out, nnx.to_pure_dict(nnx.state(model, nnx.Param))

    block_out, out, params = fresh_outputs()
    np.testing.assert_array_equal(block_out, tokens)
    np.testing.assert_array_equal(out, 0.0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    np.testing.assert_array_equal(params["blocks"]["modulation"]["kernel"], 0.0)
    np.testing.assert_array_equal(params["final"]["linear"]["kernel"], 0.0)
    assert float(jnp.abs(params["patch_embed"]["kernel"]).max()) > 0


def test_scan_and_unrolled_blocks_compute_the_same_function():
    scanned_model, scanned = _network(TINY)
    unrolled_model, unrolled = _network(_tiny(use_scan=False))
    params = _random_params(unrolled_model)
    stacked = dict(params)
    stacked["blocks"] = jax.tree.map(
        lambda *leaves: jnp.stack(leaves), params["blocks"][0], params["blocks"][1]
    )
    jax.tree.map(assert_shape_like, stacked, scanned_model.abstract_params)
    x, t = _inputs()
    context = jax.random.normal(jax.random.key(2), (2, 5, 12))
    kwargs = dict(class_labels=jnp.array([3, 4]), context=context, pooled=jnp.ones((2, 6)))
    reference = unrolled(params, x, t, **kwargs)
    assert float(jnp.abs(reference).max()) > 0.1
    np.testing.assert_allclose(scanned(stacked, x, t, **kwargs), reference, rtol=1e-5, atol=1e-5)


def assert_shape_like(leaf, abstract):
    assert leaf.shape == abstract.shape


def test_remat_gives_the_same_output_and_gradients():
    plain_model, _ = _network(_tiny(context_dim=None))
    remat_model, _ = _network(_tiny(context_dim=None, remat=True))
    params = _random_params(plain_model)
    x, t = _inputs()

    def loss(model):
        return jax.jit(
            jax.value_and_grad(
                lambda p: jnp.mean(model.apply(p, x, t, class_labels=jnp.array([1, 2])) ** 2)
            )
        )

    value, grads = loss(plain_model)(params)
    remat_value, remat_grads = loss(remat_model)(params)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads, grads
    )
    assert float(jnp.abs(grads["blocks"]["modulation"]["kernel"]).max()) > 0


def test_class_labels_condition_the_output_and_none_is_the_null_class():
    config = _tiny(context_dim=None, pooled_dim=None)
    model, apply = _network(config)
    params = _random_params(model)
    assert params["class_embed"]["embedding"].shape == (11, 32)  # + the null class
    x, t = _inputs()
    x = jnp.broadcast_to(x[:1], x.shape)
    t = jnp.full((2,), 100)
    a = apply(params, x, t, class_labels=jnp.array([1, 2]))
    assert not np.allclose(a[0], a[1])
    null = apply(params, x, t)
    np.testing.assert_allclose(null, apply(params, x, t, class_labels=jnp.array([10, 10])))


def test_cross_attention_reads_context_and_ignores_masked_tokens():
    config = _tiny(num_classes=None, pooled_dim=None)
    model, apply = _network(config)
    params = _random_params(model)
    x, t = _inputs(1)
    context = jax.random.normal(jax.random.key(1), (1, 5, 12))
    mask = jnp.array([[True, True, True, False, False]])
    a = apply(params, x, t, context=context, context_mask=mask)
    assert not np.allclose(a, apply(params, x, t, context=context * 2.0, context_mask=mask))
    # Whatever sits at the padding positions does not matter.
    padded = context.at[:, 3:].set(100.0)
    np.testing.assert_allclose(apply(params, x, t, context=padded, context_mask=mask), a, atol=1e-6)
    assert not np.allclose(a, apply(params, x, t, context=context))  # unmasked: they matter
    # A caption without any real token contributes nothing (no NaN, no average of padding).
    empty = apply(params, x, t, context=context, context_mask=jnp.zeros((1, 5), bool))
    np.testing.assert_allclose(empty, apply(params, x, t), atol=1e-6)


def test_pooled_text_embedding_conditions_the_output():
    config = _tiny(num_classes=None, context_dim=None)
    model, apply = _network(config)
    params = _random_params(model)
    x, t = _inputs()
    pooled = jax.random.normal(jax.random.key(4), (2, 6))
    a = apply(params, x, t, pooled=pooled)
    assert not np.allclose(a, apply(params, x, t))


def test_dropout_only_with_a_key():
    config = _tiny(dropout=0.2, num_classes=None, context_dim=None, pooled_dim=None)
    model, apply = _network(config)
    params = _random_params(model)
    x, t = _inputs(1)
    np.testing.assert_array_equal(apply(params, x, t), apply(params, x, t))
    a = apply(params, x, t, dropout_key=jax.random.key(0))
    b = apply(params, x, t, dropout_key=jax.random.key(1))
    assert not np.allclose(a, b) and not np.allclose(a, apply(params, x, t))


def test_conditioning_the_network_was_not_built_for_is_an_error():
    config = _tiny(num_classes=None, context_dim=None, pooled_dim=None)
    model = _network(config)[0]
    x, t = _inputs(1)
    for kwargs, match in [
        ({"class_labels": jnp.array([1])}, "num_classes=None"),
        ({"context": jnp.ones((1, 2, 4))}, "context_dim=None"),
        ({"pooled": jnp.ones((1, 4))}, "pooled_dim=None"),
    ]:
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(lambda p, kw=kwargs: model.apply(p, x, t, **kw), model.abstract_params)


def test_bfloat16_computation_keeps_float32_params_and_output():
    config = _tiny(dtype="bfloat16", context_dim=None, pooled_dim=None)
    model, apply = _network(config)
    params = _random_params(model)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(model.abstract_params))
    x, t = _inputs()
    out = apply(params, x, t)
    reference = _network(_tiny(context_dim=None, pooled_dim=None))[1](params, x, t)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference, atol=0.05 * float(jnp.abs(reference).max()))


def test_fsdp_shards_the_stacked_blocks_but_never_the_layers_axis():
    model = _network(DiTConfig(size="XL", num_classes=1000))[0]
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=8))
    shardings = sharding.param_shardings(
        model.abstract_params, model.logical_specs, mesh, sharding.FSDP_RULES
    )
    P = jax.sharding.PartitionSpec
    blocks = model.logical_specs["blocks"]
    assert blocks["mlp_in"]["kernel"] == P("layers", "embed", "mlp")
    assert shardings["blocks"]["mlp_in"]["kernel"].spec == P(None, None, "fsdp")
    assert shardings["blocks"]["attention"]["qkv"]["kernel"].spec == P(None, None, "fsdp")
    assert shardings["blocks"]["attention"]["out"]["kernel"].spec == P(None, "fsdp", None)
    assert shardings["class_embed"]["embedding"].spec == P(None, "fsdp")  # 8 does not divide 1001
    for spec in jax.tree.leaves(model.logical_specs, is_leaf=lambda s: s is None):
        assert spec is not None  # every parameter is named


def test_xla_attention_impl_gives_the_same_output_as_jaxs_choice():
    """Self-attention and cross-attention to the text tokens both take the setting."""
    model, apply = _network(_tiny(num_classes=None, pooled_dim=None))
    _, apply_xla = _network(_tiny(num_classes=None, pooled_dim=None, attention_impl="xla"))
    params = _random_params(model)
    x, t = _inputs()
    context = jax.random.normal(jax.random.key(1), (2, 5, 12))
    np.testing.assert_allclose(
        apply_xla(params, x, t, context=context),
        apply(params, x, t, context=context),
        rtol=1e-6,
        atol=1e-6,
    )


def test_registry_builds_a_dit_from_the_model_config():
    model_config = registry.make_model_config(
        {"name": "dit", "size": "S", "patch_size": 2},
        image_size=32,
        channels=4,
        num_classes=1000,
        pooled_dim=8,
    )
    assert isinstance(model_config, DiTConfig)
    assert (model_config.in_channels, model_config.num_classes) == (4, 1000)
    assert model_config.pooled_dim == 8 and model_config.context_dim is None
    model = functionalize(registry.build_model(model_config))
    assert model.abstract_params["pooled_in"]["kernel"].shape == (8, 384)
    with pytest.raises(ValueError, match=r"model\.patch_size=3 must be a positive divisor"):
        registry.make_model_config({"name": "dit", "patch_size": 3}, image_size=32, channels=4)
    with pytest.raises(ValueError, match=r"model\.base_channels is not a field .*patch_size"):
        registry.make_model_config({"name": "dit", "base_channels": 8}, image_size=32, channels=4)
