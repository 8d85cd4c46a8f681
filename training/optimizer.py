"""Optax optimizer and learning-rate schedule built from config."""

from __future__ import annotations

import dataclasses

import optax

from schema import field, one_of, require

OPTIMIZERS = ("adam", "adamw")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """`config.optimizer`: Adam(W) with warmup, clipping and the EMA of the parameters."""

    name: str = field("adam", "'adam' | 'adamw'.")
    learning_rate: float = field(2e-4, "Peak learning rate after warmup.")
    warmup_steps: int = field(5000, "Linear warmup from 0 to the peak.")
    b1: float = field(0.9, "Adam beta1.")
    b2: float = field(0.999, "Adam beta2.")
    eps: float = field(1e-8, "Adam epsilon.")
    weight_decay: float = field(0.0, "Decoupled weight decay (adamw only).")
    grad_clip_norm: float = field(1.0, "Global-norm gradient clipping; 0 disables.")
    ema_decay: float = field(0.9999, "EMA of parameters used for sampling.")
    ema_warmup: bool = field(
        True,
        "EMA decay min(ema_decay, (1 + s) / (10 + s)) at step s (0 at the first step), as "
        "diffusers' EMAModel: the EMA forgets the random init within tens of steps instead of "
        "~1 / (1 - ema_decay) (99% init after 100 steps at 0.9999). False: ema_decay from step 0 "
        "(Ho et al. 2020; DiT).",
    )

    def validate(self) -> None:
        """Raises ConfigError naming the bad field before anything is compiled."""
        one_of("optimizer.name", self.name, OPTIMIZERS)
        require(
            self.learning_rate > 0, "optimizer.learning_rate", self.learning_rate, "must be > 0."
        )
        require(
            self.warmup_steps >= 0, "optimizer.warmup_steps", self.warmup_steps, "must be >= 0."
        )
        for name in ("b1", "b2", "ema_decay"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"optimizer.{name}", value, "must be in [0, 1).")
        for name in ("eps", "weight_decay", "grad_clip_norm"):
            value = getattr(self, name)
            require(value >= 0, f"optimizer.{name}", value, "must be >= 0.")


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """Linear warmup to the peak rate, then constant (Ho et al. 2020, Appendix B)."""
    if config.warmup_steps == 0:
        return optax.constant_schedule(config.learning_rate)
    return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """Gradient clipping by global norm followed by Adam or AdamW."""
    schedule = learning_rate_schedule(config)
    if config.name == "adamw":
        update = optax.adamw(
            schedule, config.b1, config.b2, config.eps, weight_decay=config.weight_decay
        )
    else:
        update = optax.adam(schedule, config.b1, config.b2, config.eps)
    if config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), update)
    return update
