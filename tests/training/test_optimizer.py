import jax.numpy as jnp
import optax
import pytest

from configs import cifar_ddpm, cifar_dit, digits_ddpm, imagenet_latent_dit, sd_pretrained
from training.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer


def test_warmup_is_linear_then_constant():
    lr = learning_rate_schedule(OptimizerConfig(learning_rate=2e-4, warmup_steps=5000))
    assert float(lr(0)) == 0.0
    assert float(lr(2500)) == pytest.approx(1e-4)
    assert float(lr(5000)) == pytest.approx(2e-4)
    assert float(lr(700_000)) == pytest.approx(2e-4)


def test_gradients_are_clipped_to_the_global_norm():
    opt = make_optimizer(
        OptimizerConfig(name="adam", learning_rate=1.0, warmup_steps=0, grad_clip_norm=1.0)
    )
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.full(4, 10.0)}  # global norm 20
    clip_state, _ = opt.init(params)
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, clip_state)
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    # Adam's first step moves every coordinate by lr * sign(g) regardless of the scale.
    updates, _ = opt.update(grads, opt.init(params), params)
    assert jnp.allclose(updates["w"], -1.0, atol=1e-4)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("name", "sgd", r"optimizer\.name='sgd'"),
        ("learning_rate", 0.0, r"optimizer\.learning_rate=0.0"),
        ("ema_decay", 1.0, r"optimizer\.ema_decay=1.0"),
        ("warmup_steps", -1, r"optimizer\.warmup_steps=-1"),
    ],
)
def test_bad_fields_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**{field: value}).validate()


def test_ema_warmup_is_on_except_in_the_paper_reproductions():
    """DDPM (Ho et al. 2020) and DiT (Peebles & Xie 2023) keep a plain 0.9999 EMA from step 0."""
    assert OptimizerConfig().ema_warmup
    for module in (digits_ddpm, sd_pretrained):
        assert module.get_config().optimizer.ema_warmup is True, module.__name__
    for module in (cifar_ddpm, cifar_dit, imagenet_latent_dit):
        assert module.get_config().optimizer.ema_warmup is False, module.__name__
