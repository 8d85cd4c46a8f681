"""Property: any config, however broken, is either accepted or refused with a ConfigError.

The fields and their types come from the schema itself (the section classes of
training/run_config.py and every backbone's config), plausible values from what the shipped
configs set: nothing here restates the schema. One or two fields of a small digits config are
replaced by a plausible value, a wrong-typed value, junk, or removed. `RunConfig.from_configdict`
must pass or raise `errors.ConfigError` naming the field; anything else (a TypeError, a
ZeroDivisionError, an error from inside JAX or Flax) fails. Accepted configs must also build
without compiling. Both outcomes must occur often, so a checker that refused (or accepted)
everything would fail too.
"""

import collections
import math
import typing

import jax
import ml_collections
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schema
from configs import (
    cifar_ddpm,
    cifar_dit,
    digits_ddpm,
    digits_dit,
    digits_flow,
    digits_text_unet,
    digits_vae,
)
from errors import ConfigError
from models import registry
from training import experiment as experiment_lib
from training import run_config
from training.run_config import RunConfig

DELETE = "<deleted>"  # marker: remove the field
NUM_DEVICES = 8  # tests/conftest.py
SHIPPED = (
    digits_ddpm,
    digits_dit,
    digits_flow,
    cifar_ddpm,
    cifar_dit,
    digits_text_unet,
    digits_vae,
)


def schema_fields() -> dict[str, typing.Any]:
    """dotted path -> type hint, for every field a config may set (from the classes)."""
    fields = {
        f.name: typing.get_type_hints(RunConfig)[f.name]
        for f in schema.user_fields(RunConfig, run_config.SECTIONS)
    }
    for name, cls in run_config.SECTIONS.items():
        if name == "model":
            continue
        hints = typing.get_type_hints(cls)
        fields.update({f"{name}.{f.name}": hints[f.name] for f in schema.user_fields(cls)})
    for _, cls in registry.MODELS.values():
        hints = typing.get_type_hints(cls)
        for f in schema.user_fields(cls, registry.DATA_FIELDS):
            fields.setdefault(f"model.{f.name}", hints[f.name])
    return fields


def shipped_values() -> dict[str, list]:
    """dotted path -> every value a shipped config (or a schema default) gives it."""
    values = collections.defaultdict(list)

    def walk(prefix, node):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{path}.", value)
            elif value not in values[path]:
                values[path].append(value)

    for module in SHIPPED:
        walk("", module.get_config().to_dict())
    return values


FIELDS = schema_fields()
VALUES = shipped_values()
JUNK = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-2, 9), max_size=3),
    st.just({}),
)
BY_TYPE = {
    int: st.one_of(st.sampled_from([0, -1, 1, 2, 3, 8, 2**31, 10**12]), st.integers(-3, 70)),
    float: st.one_of(
        st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0, 1e308, -1e-9, math.nan, math.inf])
    ),
    bool: st.booleans(),
    str: st.sampled_from(["bogus", "", "NONE"]),
}


def plausible(path: str) -> st.SearchStrategy:
    """What the shipped configs use for `path`, plus values of the field's own type."""
    hint = FIELDS[path]
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    drawn = [BY_TYPE[k] for k in kinds if k in BY_TYPE]
    if typing.get_origin(hint) is tuple:
        drawn.append(st.lists(st.integers(-1, 9), max_size=5).map(tuple))
    known = VALUES.get(path, [])
    shipped = [st.sampled_from(known)] * 3 if known else []  # weighted towards real values
    return st.one_of(*shipped, *drawn)


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
    mutations = []
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(sorted(FIELDS)))
        values = plausible(path)
        if not plausible_only:
            values = st.one_of(values, JUNK, st.just(DELETE))
        mutations.append((path, draw(values)))
    return base, mutations


PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_every_schema_field_is_drawn_and_known_to_a_shipped_config_or_the_default():
    assert len(FIELDS) > 80
    assert {"diffusion.loss_weighting", "model.patch_size", "model.base_channels"} <= set(FIELDS)
    missing = [path for path in FIELDS if path not in VALUES]
    assert not missing, missing  # default.py (or dit_model()) sets every one of them


def test_validation_accepts_or_raises_config_error():
    outcomes = collections.Counter()

    @PROPERTY_SETTINGS
    @given(broken_configs())
    def check(case):
        base, mutations = case
        config = mutate(BASES[base], mutations)
        try:
            RunConfig.from_configdict(config, NUM_DEVICES, process_count=1)
        except ConfigError as err:
            outcomes["refused"] += 1
            message = str(err)
            assert "=" in message or "not a field" in message, message
            if len(mutations) == 1:  # the mutated field (or its section) is the one named
                path = mutations[0][0]
                assert path.split(".")[-1] in message or path.split(".")[0] in message, message
        else:
            outcomes["accepted"] += 1

    check()
    assert outcomes["accepted"] >= 20 and outcomes["refused"] >= 20, outcomes


@pytest.mark.slow
def test_accepted_configs_build_without_compiling():
    built = collections.Counter()

    @settings(PROPERTY_SETTINGS, max_examples=30)
    @given(broken_configs(plausible_only=True))
    def check(case):
        base, mutations = case
        config = mutate(BASES[base], mutations)
        try:
            run = RunConfig.from_configdict(config, NUM_DEVICES, process_count=1)
        except ConfigError:
            return
        with pytest.MonkeyPatch.context() as patch:  # building compiles nothing
            patch.setattr(jax, "jit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("jit")))
            experiment_lib.build_experiment(run)  # nothing but ConfigError may come out
        built["built"] += 1

    check()
    assert built["built"] >= 5, built
