"""Optax optimizer and learning-rate schedule built from config."""

from __future__ import annotations

import dataclasses

import optax

from errors import ConfigError

OPTIMIZERS = ("adam", "adamw")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Typed view of `config.optimizer`."""

    name: str = "adam"
    learning_rate: float = 2e-4
    warmup_steps: int = 5000
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.9999

    def validate(self) -> None:
        """Raises ConfigError naming the bad field before anything is compiled."""
        if self.name not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer.name={self.name!r} is unknown; choose one of {list(OPTIMIZERS)}."
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"optimizer.learning_rate={self.learning_rate} must be > 0.")
        if self.warmup_steps < 0:
            raise ConfigError(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0.")
        for name in ("b1", "b2", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optimizer.{name}={getattr(self, name)} must be in [0, 1).")
        for name in ("eps", "weight_decay", "grad_clip_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optimizer.{name}={getattr(self, name)} must be >= 0.")


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
