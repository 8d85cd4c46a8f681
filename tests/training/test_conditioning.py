import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training import conditioning


def _bank(rows=4, length=3, dim=5):
    tokens = jnp.arange(rows * length * dim, dtype=jnp.float32).reshape(rows, length, dim)
    mask = jnp.arange(length)[None, :] < jnp.arange(1, rows + 1)[:, None]
    return conditioning.TextBank(tokens=tokens, mask=mask, pooled=tokens[:, 0, :])


def test_drop_conditions_replaces_the_expected_share_with_the_null_id():
    ids = jnp.zeros((20_000,), jnp.int32) + 3
    dropped = conditioning.drop_conditions(jax.random.key(0), ids, 0.1, null=10)
    share = float(jnp.mean(dropped == 10))
    assert 0.09 < share < 0.11
    assert set(np.unique(dropped).tolist()) == {3, 10}
    kept = conditioning.drop_conditions(jax.random.key(0), ids, 0.0, 10)
    np.testing.assert_array_equal(kept, ids)


def test_null_ids_are_the_reserved_class_and_the_banks_last_row():
    assert conditioning.null_id("class", 10, None) == 10
    assert conditioning.null_id("text", 10, _bank(rows=7)) == 6
    with pytest.raises(ValueError, match="none"):
        conditioning.null_id("none", 10, None)


def test_model_kwargs_gather_bank_rows():
    bank = _bank()
    kwargs = conditioning.model_kwargs("text", jnp.array([2, 0]), bank)
    np.testing.assert_array_equal(kwargs["context"], bank.tokens[jnp.array([2, 0])])
    np.testing.assert_array_equal(kwargs["context_mask"][0], [True, True, True])
    np.testing.assert_array_equal(kwargs["context_mask"][1], [True, False, False])
    assert conditioning.model_kwargs("class", jnp.array([4]), None) == {"class_labels": 4}
    assert conditioning.model_kwargs("none", None, None) == {}


def test_class_sample_conditions_repeat_labels_and_use_the_null_class():
    conditions = conditioning.sample_conditions(
        "class", per_prompt=3, class_labels="2,7", num_classes=10
    )
    np.testing.assert_array_equal(conditions.cond["class_labels"], [2, 2, 2, 7, 7, 7])
    np.testing.assert_array_equal(conditions.uncond["class_labels"], [10] * 6)
    np.testing.assert_array_equal(conditions.prompt_ids, [0, 0, 0, 1, 1, 1])
    assert conditions.prompts == ("2", "7")
    every = conditioning.sample_conditions("class", per_prompt=1, num_classes=4)
    np.testing.assert_array_equal(every.cond["class_labels"], [0, 1, 2, 3])
    assert conditioning.sample_conditions("none", per_prompt=5) is None


class _FakeEncoder:
    """Embeds a prompt as its length and first character code (enough to check the plumbing)."""

    def encode(self, texts):
        tokens = np.array([[[len(t), ord(t[0]) if t else 0]] * 2 for t in texts], np.float32)
        mask = np.array([[True, bool(t)] for t in texts])
        return conditioning.TextBank(tokens=tokens, mask=mask, pooled=tokens[:, 0])


def test_text_sample_conditions_encode_prompts_once_with_the_negative_as_uncond():
    conditions = conditioning.sample_conditions(
        "text",
        per_prompt=2,
        prompts="ab;xyz",
        negative_prompt="blurry",
        encoder=_FakeEncoder(),
    )
    np.testing.assert_array_equal(conditions.prompt_ids, [0, 0, 1, 1])
    np.testing.assert_array_equal(conditions.cond["pooled"][:, 0], [2, 2, 3, 3])
    np.testing.assert_array_equal(conditions.uncond["pooled"][:, 0], [6] * 4)
    defaults = conditioning.sample_conditions(
        "text", per_prompt=1, default_prompts=["p", "q"], encoder=_FakeEncoder()
    )
    assert defaults.prompts == ("p", "q")
    np.testing.assert_array_equal(defaults.uncond["context_mask"][:, 1], [False, False])


@pytest.mark.parametrize(
    "text,match",
    [("3,x", "comma-separated ints"), ("3,10", r"\[0, 9\]"), ("-1", r"\[0, 9\]")],
)
def test_bad_class_labels_name_the_field(text, match):
    with pytest.raises(ValueError, match=rf"sampler\.class_labels=.*{match}"):
        conditioning.parse_class_labels(text, 10)


def test_bad_conditioning_fields_are_named():
    with pytest.raises(ValueError, match="conditioning.kind='image'.*none, class, text"):
        conditioning.ConditioningConfig(kind="image").validate()
    with pytest.raises(ValueError, match=r"conditioning.dropout=1.0"):
        conditioning.ConditioningConfig(kind="class", dropout=1.0).validate()
    assert conditioning.parse_prompts(" a cat ; ;a dog") == ["a cat", "a dog"]
