"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; Esser et al. 2024, SD3).

Path x_t = (1 - t) x0 + t eps for t in [0, 1]; the network predicts the velocity
dx_t/dt = eps - x0 and is called with t * time_scale (1000, as SD3 does) as its timestep.
Sampling integrates the ODE from t = 1 (noise) to t = 0 (data).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion import forward, grids

FLOW_SAMPLERS = ("euler", "heun")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def flow_q_sample(x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = (1 - t) x0 + t eps, t [B] broadcast over the example."""
    t = forward.broadcast_to(t, x0)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """The conditional velocity eps - x0 of the straight path."""
    return noise - x0


def sample_flow_times(key: jax.Array, batch_size: int, kind: str = "uniform") -> jax.Array:
    """t ~ U(0, 1), or logit-normal(0, 1) which favours the middle (SD3, Esser et al. sec. 3.1)."""
    if kind == "logit_normal":
        return jax.nn.sigmoid(jax.random.normal(key, (batch_size,)))
    return jax.random.uniform(key, (batch_size,))


def draw_flow_noise(
    key: jax.Array, x0: jax.Array, time_sampling: str = "uniform"
) -> tuple[jax.Array, jax.Array]:
    """The loss's random draws for a batch: times t [B] in (0, 1) and eps ~ N(0, I) like x0."""
    t_key, noise_key = jax.random.split(key)
    t = sample_flow_times(t_key, x0.shape[0], time_sampling)
    return t, jax.random.normal(noise_key, x0.shape, x0.dtype)


def flow_matching_loss(
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    key: jax.Array | None,
    *,
    time_scale: float = 1000.0,
    time_sampling: str = "uniform",
    draws: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MSE between the predicted and the conditional velocity (Lipman et al. eq. 23).

    `draws` = (t, noise) replaces `draw_flow_noise(key, ...)` (a micro-batch's slice of the
    whole batch's draws under gradient accumulation; `key` is then unused).
    """
    t, noise = draw_flow_noise(key, x0, time_sampling) if draws is None else draws
    with jax.named_scope("model"):
        output = model_fn(flow_q_sample(x0, t, noise), t * time_scale)
    loss = jnp.mean(jnp.square(output.astype(jnp.float32) - velocity_target(x0, noise)))
    return loss, {"loss": loss}


def validate_flow_sampler(name: str, num_steps: int, shift: float) -> None:
    """Raises ValueError naming `sampler.name` / `sampler.num_steps` / `diffusion.flow_shift`."""
    if name not in FLOW_SAMPLERS:
        allowed = ", ".join(FLOW_SAMPLERS)
        raise ValueError(f"sampler.name={name!r} cannot integrate a flow model; allowed: {allowed}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"sampler.num_steps={num_steps!r} must be a positive integer.")
    if shift <= 0:
        raise ValueError(f"diffusion.flow_shift={shift} must be > 0.")


def sample_flow(
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x_T: jax.Array,
    *,
    sampler: str = "euler",
    num_steps: int = 50,
    shift: float = 1.0,
    time_scale: float = 1000.0,
    return_trajectory: bool = False,
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """Integrates dx/dt = v(x, t) from t = 1 to 0 with Euler or Heun as one `lax.scan`.

    Returns (samples, trajectory or None, NFE). Heun skips its corrector on the last step.
    """
    validate_flow_sampler(sampler, num_steps, shift)
    times = jnp.asarray(grids.flow_sigmas(num_steps, shift), jnp.float32)
    batch = x_T.shape[0]

    def velocity(x, t):
        return model_fn(x, jnp.full((batch,), t * time_scale, jnp.float32)).astype(x.dtype)

    def step(carry, ts):
        x, nfe = carry
        t, t_next = ts
        v = velocity(x, t)
        x_euler = x + (t_next - t) * v
        if sampler == "euler":
            return (x_euler, nfe + 1), (x_euler if return_trajectory else None)

        def correct(x_euler):
            return x + (t_next - t) * 0.5 * (v + velocity(x_euler, t_next))

        x = jax.lax.cond(t_next > 0, correct, lambda x_e: x_e, x_euler)
        nfe = nfe + 1 + (t_next > 0).astype(jnp.int32)
        return (x, nfe), (x if return_trajectory else None)

    (x, nfe), trajectory = jax.lax.scan(
        step, (x_T, jnp.zeros((), jnp.int32)), (times[:-1], times[1:])
    )
    return x, trajectory, nfe
