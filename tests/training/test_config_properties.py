"""Property: any config, however broken, is either accepted or refused with a ConfigError.

Starting from the small digits configs, one or two fields are replaced by values drawn from
valid choices, boundary numbers, unknown names, wrong types, None, or removed altogether.
`validate_config` must then pass or raise `errors.ConfigError`; anything else (a TypeError,
ZeroDivisionError, KeyError, an error from inside JAX or Flax) fails the test. Configs it
accepts must also build (`build_experiment`) without any other exception.
"""

import math

import jax
import ml_collections
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs import digits_ddpm, digits_dit, digits_flow
from diffusion import samplers
from errors import ConfigError
from training import experiment as experiment_lib
from training import validation

DELETE = "<deleted>"  # marker: remove the field
NUM_DEVICES = 8  # tests/conftest.py

JUNK = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-2, 9), max_size=3),
    st.just({}),
)
INTS = st.one_of(st.sampled_from([0, -1, 1, 2, 3, 8, 2**31, 10**12]), st.integers(-3, 70))
FLOATS = st.one_of(
    st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0, 1e308, -1e-9, math.nan, math.inf])
)
TUPLES = st.lists(st.integers(-1, 9), max_size=5).map(tuple)
FLAGS = st.booleans()


def names(*valid: str) -> st.SearchStrategy:
    return st.sampled_from([*valid, "bogus", "", "NONE"])


# (dotted field, plausible values); every field also gets JUNK and DELETE.
FIELDS = [
    ("seed", INTS),
    ("num_train_steps", INTS),
    ("batch_size", st.one_of(st.sampled_from([8, 16, 24, 60, 64, 128]), INTS)),
    ("log_every_steps", INTS),
    ("checkpoint_every_steps", INTS),
    ("sample_every_steps", INTS),
    ("max_checkpoints_to_keep", INTS),
    ("compilation_cache_dir", names("/tmp/jax_cache")),
    ("data.name", names("digits", "cifar10", "tfds")),
    ("data.image_size", st.one_of(st.sampled_from([4, 8, 12, 16, 28, 32]), INTS)),
    ("data.channels", INTS),
    ("data.shuffle_buffer", INTS),
    ("data.tfds_name", names("mnist")),
    ("data.text_key", names("text")),
    ("data.random_flip", FLAGS),
    ("data.device_prefetch", INTS),
    ("diffusion.process", names("ddpm", "flow")),
    ("diffusion.flow_shift", FLOATS),
    ("diffusion.schedule", names("linear", "cosine", "scaled_linear")),
    ("diffusion.num_timesteps", INTS),
    ("diffusion.beta_start", FLOATS),
    ("diffusion.beta_end", FLOATS),
    ("diffusion.prediction", names("eps", "x0", "v")),
    ("model", JUNK),
    ("model.name", names("unet", "dit")),
    ("model.base_channels", INTS),
    ("model.channel_mult", TUPLES),
    ("model.num_res_blocks", INTS),
    ("model.attention_resolutions", TUPLES),
    ("model.num_heads", INTS),
    ("model.num_groups", INTS),
    ("model.dropout", FLOATS),
    ("model.dtype", names("float32", "bfloat16")),
    ("model.remat", FLAGS),
    ("model.attention_impl", st.sampled_from([None, "xla", "cudnn", "flash"])),
    ("model.image_size", INTS),
    ("model.not_a_field", INTS),
    ("model.patch_size", INTS),
    ("model.size", names("S", "B", "XL")),
    ("model.depth", st.one_of(st.none(), INTS)),
    ("model.hidden_size", st.one_of(st.none(), INTS)),
    ("model.mlp_ratio", FLOATS),
    ("model.pos_embed", names("sincos", "learned")),
    ("model.learn_sigma", FLAGS),
    ("conditioning.kind", names("none", "class", "text")),
    ("conditioning.dropout", FLOATS),
    ("text_encoder.name", names("none", "clip", "t5", "minilm")),
    ("text_encoder.path", names("/nonexistent/encoder")),
    ("text_encoder.max_length", INTS),
    ("optimizer.name", names("adam", "adamw")),
    ("optimizer.learning_rate", FLOATS),
    ("optimizer.warmup_steps", INTS),
    ("optimizer.b1", FLOATS),
    ("optimizer.b2", FLOATS),
    ("optimizer.eps", FLOATS),
    ("optimizer.weight_decay", FLOATS),
    ("optimizer.grad_clip_norm", FLOATS),
    ("optimizer.ema_decay", FLOATS),
    ("training", JUNK),
    ("training.grad_accumulation_steps", INTS),
    ("training.nonfinite_policy", names("skip", "stop")),
    ("training.donate_state", FLAGS),
    ("sampler", JUNK),
    ("sampler.name", names(*samplers.SAMPLERS)),
    ("sampler.num_steps", INTS),
    ("sampler.max_steps", INTS),
    ("sampler.spacing", names("linspace", "leading", "trailing", "karras")),
    ("sampler.eta", FLOATS),
    ("sampler.num_samples", INTS),
    ("sampler.thresholding", names("none", "static", "dynamic")),
    ("sampler.dynamic_percentile", FLOATS),
    ("sampler.guidance_scale", FLOATS),
    ("sampler.guidance_rescale", FLOATS),
    ("sampler.class_labels", st.sampled_from(["", "3,5", "4,12", "x", "-1", "9" * 12])),
    ("sampler.prompts", names("a zero;a one")),
    ("mesh", JUNK),
    ("mesh.data", st.one_of(st.sampled_from([-1, 1, 2, 4, 8, 16]), INTS)),
    ("mesh.fsdp", st.one_of(st.sampled_from([-1, 1, 2, 4, 8]), INTS)),
    ("mesh.tensor", st.one_of(st.sampled_from([-1, 1, 2, 4]), INTS)),
    ("mesh.rules", names("heads=tensor", "embed=fsdp,mlp=fsdp", "heads=nowhere", "=tensor")),
]
PLAUSIBLE = dict(FIELDS)


def small(module) -> dict:
    """The base config as a plain dict, with sizes that build in a fraction of a second."""
    config = module.get_config()
    config.batch_size = 16
    config.sampler.num_samples = 2
    if config.model.name == "unet":
        config.model.base_channels = 16
        config.model.num_res_blocks = 1
    else:
        config.model.depth = 1
        config.model.hidden_size = 32
    return config.to_dict()


BASES = {m.__name__: small(m) for m in (digits_ddpm, digits_dit, digits_flow)}


def mutate(base: dict, mutations: list[tuple[str, object]]) -> ml_collections.ConfigDict:
    """A copy of `base` with each (dotted field, value) applied, as a fresh ConfigDict: it takes
    the new values' types, as a config file that sets them directly would."""
    config = ml_collections.ConfigDict(base).to_dict()  # deep copy
    for path, value in mutations:
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # an earlier mutation replaced the section
        if value == DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return ml_collections.ConfigDict(config)


@st.composite
def broken_configs(draw, plausible_only: bool = False):
    base = draw(st.sampled_from(sorted(BASES)))
    count = draw(st.integers(1, 2))
    mutations = []
    for _ in range(count):
        path = draw(st.sampled_from([path for path, _ in FIELDS]))
        values = PLAUSIBLE[path]
        if not plausible_only:
            values = st.one_of(values, JUNK, st.just(DELETE))
        mutations.append((path, draw(values)))
    return base, mutations


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(broken_configs())
def test_validation_accepts_or_raises_config_error(case):
    base, mutations = case
    config = mutate(BASES[base], mutations)
    try:
        validation.validate_config(config, NUM_DEVICES, process_count=1)
    except ConfigError as err:
        message = str(err)
        assert "=" in message or "missing" in message, message  # names a field and its value
        if len(mutations) == 1:  # the mutated field (or its section) is the one named
            path = mutations[0][0]
            assert path.split(".")[-1] in message or path.split(".")[0] in message, message


@settings(PROPERTY_SETTINGS, max_examples=25)
@given(broken_configs(plausible_only=True))
def test_accepted_configs_build_without_compiling(case):
    base, mutations = case
    config = mutate(BASES[base], mutations)
    try:
        validation.validate_config(config, NUM_DEVICES, process_count=1)
    except ConfigError:
        return
    with pytest.MonkeyPatch.context() as patch:  # building compiles nothing
        patch.setattr(jax, "jit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("jit")))
        experiment_lib.build_experiment(config)  # nothing but ConfigError may come out
