"""Forward-pass parity of the DiT with diffusers' DiTTransformer2DModel (test-only deps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.dit import DiT, DiTConfig
from models.functional import functionalize

pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py

# 2 blocks of width 32, 2 heads, 4 x 4 tokens of 4 channels, 10 classes, and the learned variance
# that diffusers' DiT always predicts.
CONFIG = DiTConfig(
    image_size=8,
    in_channels=4,
    out_channels=4,
    patch_size=2,
    depth=2,
    hidden_size=32,
    num_heads=2,
    num_classes=10,
    learn_sigma=True,
)


def _torch_to_dit_params(reference, depth: int) -> dict:
    """Our parameter tree (scanned layout) from diffusers' DiTTransformer2DModel weights."""
    state = {name: value.detach().numpy() for name, value in reference.state_dict().items()}

    def linear(prefix: str) -> dict:
        return {"kernel": state[f"{prefix}.weight"].T, "bias": state[f"{prefix}.bias"]}

    def block(i: int) -> dict:
        prefix = f"transformer_blocks.{i}"
        qkv = [linear(f"{prefix}.attn1.to_{name}") for name in "qkv"]
        return {
            "attention": {
                "qkv": jax.tree.map(lambda *parts: np.concatenate(parts, axis=-1), *qkv),
                "out": linear(f"{prefix}.attn1.to_out.0"),
            },
            "mlp_in": linear(f"{prefix}.ff.net.0.proj"),
            "mlp_out": linear(f"{prefix}.ff.net.2"),
            "modulation": linear(f"{prefix}.norm1.linear"),
        }

    conv = state["pos_embed.proj.weight"]  # [D, C, p, p] -> rows in patchify's (p, p, C) order
    embedder = "transformer_blocks.0.norm1.emb"
    time_in = linear(f"{embedder}.timestep_embedder.linear_1")
    half = time_in["kernel"].shape[0] // 2  # diffusers' features are [cos | sin], ours [sin | cos]
    time_in["kernel"] = np.concatenate([time_in["kernel"][half:], time_in["kernel"][:half]])
    params = {
        "patch_embed": {
            "kernel": conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]),
            "bias": state["pos_embed.proj.bias"],
        },
        "time_in": time_in,
        "time_out": linear(f"{embedder}.timestep_embedder.linear_2"),
        "class_embed": {"embedding": state[f"{embedder}.class_embedder.embedding_table.weight"]},
        "blocks": jax.tree.map(lambda *leaves: np.stack(leaves), *map(block, range(depth))),
        "final": {"modulation": linear("proj_out_1"), "linear": linear("proj_out_2")},
    }
    return jax.tree.map(jnp.asarray, params)


def test_matches_diffusers_dit_with_the_same_weights():
    """Forward-pass parity with diffusers' DiTTransformer2DModel (an independent implementation).

    diffusers gives every block its own timestep/class embedder; block 0's is copied to all so
    that they share ours. Random weights everywhere (the zero-initialised ones included).
    """
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    reference = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_eps=1e-6,
    ).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.1)
        shared = reference.transformer_blocks[0].norm1.emb.state_dict()
        for block in reference.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(shared)
    params = _torch_to_dit_params(reference, depth=2)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, CONFIG.in_channels))
    t = jnp.array([3.0, 617.0])
    labels = jnp.array([4, 10])  # a class and the null class
    with torch.no_grad():
        expected = reference(
            torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()),
            timestep=torch.from_numpy(np.array(t)),
            class_labels=torch.from_numpy(np.array(labels)),
        ).sample.numpy()
    assert np.abs(expected).max() > 0.5
    apply = jax.jit(functionalize(lambda rngs: DiT(CONFIG, rngs=rngs)).apply)
    out = apply(params, x, t, class_labels=labels)
    np.testing.assert_allclose(out, expected.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
