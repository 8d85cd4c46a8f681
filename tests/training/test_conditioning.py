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

    use_pooled = True

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


def test_free_text_batches_are_embedded_on_the_host_and_dropped_to_the_null_row():
    host = {"image": np.zeros((4, 2, 2, 1)), "text": np.array(["ab", "xyz", "q", "mn"], object)}
    batch = conditioning.encode_batch_text(_FakeEncoder(), host)
    assert "text" not in batch and batch["context"].shape == (4, 2, 2)
    np.testing.assert_array_equal(batch["pooled"][:, 0], [2, 3, 1, 2])
    null_bank = conditioning.TextBank(
        tokens=jnp.full((1, 2, 2), -7.0),
        mask=jnp.zeros((1, 2), bool),
        pooled=jnp.full((1, 2), -7.0),
    )
    kept = conditioning.batch_conditions("text", batch, null_bank, jax.random.key(0), 0.0, 0)
    np.testing.assert_array_equal(kept["pooled"], batch["pooled"])
    big = {k: np.repeat(v, 500, axis=0) for k, v in batch.items() if k != "image"}
    dropped = conditioning.batch_conditions("text", big, null_bank, jax.random.key(0), 0.25, 0)
    is_null = np.asarray(dropped["pooled"][:, 0] == -7.0)
    assert 0.2 < is_null.mean() < 0.3
    assert not np.asarray(dropped["context_mask"])[is_null].any()
    np.testing.assert_array_equal(dropped["context"][~is_null], big["context"][~is_null])


def test_an_encoder_without_pooled_input_gives_the_model_none():
    encoder = _FakeEncoder()
    encoder.use_pooled = False  # Stable Diffusion 1.x / 2.x U-Nets take no pooled embedding
    conditions = conditioning.sample_conditions("text", per_prompt=1, prompts="ab", encoder=encoder)
    assert set(conditions.cond) == set(conditions.uncond) == {"context", "context_mask"}
    host = {"image": np.zeros((2, 2, 2, 1)), "text": np.array(["ab", "q"], object)}
    batch = conditioning.encode_batch_text(encoder, host)
    bank = conditioning.caption_bank(encoder, ["x"])
    assert "pooled" not in batch and bank.pooled is None
    dropped = conditioning.batch_conditions("text", batch, bank, jax.random.key(0), 0.5, 1)
    assert set(dropped) == {"context", "context_mask"}
