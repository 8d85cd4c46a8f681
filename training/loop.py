"""The training loop: sharded init or resume, jitted steps, metrics, checkpoints, sample grids."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions

import sharding
from errors import ConfigError
from input_pipeline import device_prefetch, pipeline
from models.functional import init_params
from training import (
    autoencoder_run,
    checkpointing,
    conditioning,
    metric_writer,
    nonfinite,
    preemption,
    sample_grids,
)
from training.experiment import Experiment, build_experiment
from training.run_config import RunConfig
from training.sampling import make_sample_fn
from training.train_state import TrainState, create_train_state
from training.train_step import jit_train_step

# Dispatch waits for the step this many back: a long log interval cannot queue hundreds of steps.
MAX_STEPS_IN_FLIGHT = 8


def state_shardings(experiment: Experiment, abstract_state: TrainState) -> TrainState:
    """NamedShardings for every leaf of the train state (params by the logical-axis rules)."""
    mesh = experiment.mesh
    params_sharding = sharding.param_shardings(
        experiment.model.abstract_params,
        experiment.model.logical_specs,
        mesh,
        experiment.sharding_rules,
    )
    params_structure = jax.tree.structure(abstract_state.params)
    return TrainState(
        step=sharding.replicated(mesh),
        params=params_sharding,
        ema_params=params_sharding,
        opt_state=sharding.shard_like_params(
            abstract_state.opt_state, params_sharding, params_structure, mesh
        ),
        rng=sharding.replicated(mesh),
    )


def create_state(experiment: Experiment, seed: int) -> tuple[TrainState, TrainState]:
    """A fresh state created already sharded (jit with out_shardings), and its shardings; its
    params are the pretrained U-Net's when the experiment has one (init_from)."""
    init = functools.partial(_init_state, experiment, seed)
    shardings = state_shardings(experiment, jax.eval_shape(init))
    if experiment.initial_params_fn is not None:
        params = sharding.put_host_tree(experiment.initial_params_fn(), shardings.params)
        start = functools.partial(create_train_state, optimizer=experiment.optimizer, seed=seed)
        with jax.named_scope("init"):
            return jax.jit(start, out_shardings=shardings)(params), shardings
    with jax.named_scope("init"):
        return jax.jit(init, out_shardings=shardings)(), shardings


def abstract_state(experiment: Experiment, seed: int = 0) -> tuple[TrainState, TrainState]:
    """The train state as shape-only leaves carrying their shardings (nothing allocated), and
    those shardings: what restoring, lowering or memory analysis needs."""
    shapes = jax.eval_shape(functools.partial(_init_state, experiment, seed))
    shardings = state_shardings(experiment, shapes)
    return checkpointing.abstract_like(shapes, shardings), shardings


def init_or_restore(experiment: Experiment, manager, seed: int) -> tuple[TrainState, TrainState]:
    """Restores the newest checkpoint into place, or creates a fresh state; plus its shardings."""
    abstract, shardings = abstract_state(experiment, seed)
    restored = checkpointing.restore_latest(manager, abstract)
    if restored is not None:
        return restored, shardings
    return create_state(experiment, seed)


def _init_state(experiment: Experiment, seed: int) -> TrainState:
    params = init_params(experiment.build_model, seed)
    return create_train_state(params, experiment.optimizer, seed)


def make_train_step(experiment: Experiment, shardings: TrainState):
    """The jitted train step for this experiment: batch split on the batch axes, the state
    donated unless `training.donate_state` is False."""
    batch_sharding = sharding.batch_sharding(experiment.mesh)
    return jit_train_step(
        shardings,
        batch_sharding,  # one sharding for every batch field (image, label, caption_id)
        sharding.replicated(experiment.mesh),
        model=experiment.model,
        schedule=experiment.schedule,
        optimizer=experiment.optimizer,
        learning_rate_fn=experiment.learning_rate_fn,
        config=experiment.step_config,
        sequence_parallel=experiment.run.mesh.sequence_parallel,
        donate_state=experiment.run.training.donate_state,
    )


def experiment_sample_fn(experiment: Experiment, params_sharding):
    """The experiment's sampler (`sampler.*`, its conditions), taking EMA params laid out as
    `params_sharding`: what sample grids, --mode=sample and the benchmarks draw with. An
    autoencoder run "samples" held-out images and their reconstructions instead."""
    if experiment.step_config.autoencoder is not None:
        return autoencoder_run.reconstruction_grid_fn(experiment)
    return make_sample_fn(
        experiment.model,
        experiment.schedule,
        experiment.sampler,
        precond=experiment.step_config.precond,
        image_shape=experiment.image_shape,
        mesh=experiment.mesh,
        params_sharding=params_sharding,
        process=experiment.step_config.process,
        flow_shift=experiment.run.diffusion.flow_shift,
        conditions=experiment.sample_conditions,
        sequence_parallel=experiment.run.mesh.sequence_parallel,
        latent=experiment.latent,
        init=experiment.sample_init,
    )


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, object]:
    """Dotted-key view of the config for TensorBoard hparams."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            flat.update({f"{key}.{k}": v for k, v in flatten_config(value).items()})
        else:
            # TensorBoard's hparams take bool / int / float / str only.
            flat[key] = str(value) if value is None or isinstance(value, (tuple, list)) else value
    return flat


def summarize(
    pending: list[tuple[int, dict[str, jax.Array]]], guard: nonfinite.NonFiniteGuard
) -> dict[str, float]:
    """Fetches the pending metrics; their means over the finite steps, and `skipped_steps`."""
    fetched = jax.device_get([metrics for _, metrics in pending])
    flags = [float(metrics["nonfinite"]) for metrics in fetched]
    skipped = guard.check([step for step, _ in pending], flags)
    finite = [m for m, flag in zip(fetched, flags, strict=True) if not flag] or fetched
    summary = {k: float(np.mean([m[k] for m in finite])) for k in finite[0] if k != "nonfinite"}
    summary["skipped_steps"] = float(skipped)
    return summary


def _to_device(experiment: Experiment, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A host batch as global arrays on the experiment's mesh (free text embedded first)."""
    if experiment.text_encoder is not None:  # free-text datasets: embed on the host
        host_batch = conditioning.encode_batch_text(experiment.text_encoder, host_batch)
    return sharding.host_batch_to_global(host_batch, experiment.mesh)


def train_and_evaluate(config: RunConfig | ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) the run described by `config`, writing everything under `workdir`.

    On SIGTERM (preemption) it checkpoints the step it is at and returns normally. Steps with a
    non-finite loss are skipped by the step itself; `training.nonfinite_policy` decides whether
    the run goes on or raises nonfinite.NonFiniteLossError before its next checkpoint.
    """
    # Entered first, so a SIGTERM during start-up or the final save is also handled.
    with preemption.PreemptionWatcher() as watcher:
        return _train(config, workdir, watcher)


def _train(
    config: RunConfig | ml_collections.ConfigDict,
    workdir: str,
    watcher: preemption.PreemptionWatcher,
) -> TrainState:
    """train_and_evaluate's body: build, restore, then the step loop until the end or SIGTERM."""
    trainer = Trainer(config, workdir)
    config = trainer.run
    if trainer.step >= config.num_train_steps:
        logging.info(
            "Resumed at step %d of num_train_steps=%d; nothing to do (raise num_train_steps to "
            "train on)",
            trainer.step,
            config.num_train_steps,
        )
    trainer.train_to(config.num_train_steps, watcher)
    trainer.close()  # async saves, the final one included
    experiment = trainer.experiment
    if experiment.step_config.autoencoder is not None and trainer.step == config.num_train_steps:
        path = autoencoder_run.export(experiment, trainer.state.ema_params, workdir)
        logging.info("Exported the autoencoder (EMA params, diffusers format) to %s", path)
    return trainer.state


class Trainer:
    """A run being trained: experiment, state, data, writer and checkpoints, built once.

    `train_to(step)` runs the step loop: main.py to num_train_steps, the notebook API a few
    steps at a time (the data iterator, compiled step and metric history carry over)."""

    def __init__(self, config: RunConfig | ml_collections.ConfigDict, workdir: str):
        checkpointing.validate_workdir(workdir)  # created if missing; ConfigError if unwritable
        experiment = build_experiment(config)  # all validation happens here, before any compile
        run = experiment.run  # the typed run config, built once
        pipeline.require_data(experiment.data)  # a dataset missing from data.data_dir, before init
        _refuse_inpainting_training(run)
        mesh = experiment.mesh
        logging.info("Mesh %s over %d devices", dict(mesh.shape), mesh.devices.size)
        self.experiment, self.run, self.workdir = experiment, run, workdir
        self.writer = metric_writer.create_writer(
            workdir, just_logging=jax.process_index() > 0, asynchronous=True
        )
        self.manager = checkpointing.make_manager(workdir, run.max_checkpoints_to_keep)
        self.state, self.shardings = init_or_restore(experiment, self.manager, run.seed)
        self.step = int(jax.device_get(self.state.step))  # host-side copy: no device sync
        self.start_step = self.step
        if self.step == 0:
            self.writer.write_hparams(flatten_config(run.to_configdict()))
            logging.info("Fresh run in %s", workdir)
        else:
            logging.info("Resumed %s at step %d", workdir, self.step)
        # tools/fault_log.py reads this line.
        logging.info("Starting at step %d of %d", self.step, run.num_train_steps)
        self.history: list[dict[str, float]] = []  # every logged summary, with its "step"
        self._train_step = make_train_step(experiment, self.shardings)
        self.sample_fn = experiment_sample_fn(experiment, self.shardings.ema_params)
        self._evaluate = None
        if experiment.step_config.autoencoder is not None:  # reconstruction PSNR, held out
            self._evaluate = autoencoder_run.reconstruction_metrics_fn(experiment)
        elif run.eval_every_steps:  # reference statistics read (or made once), chain compiled
            from training.evaluator import InLoopEvaluator  # noqa: PLC0415 (only when evaluating)

            self._evaluate = InLoopEvaluator(experiment, self.shardings.ema_params)
        self._batches = None  # made on the first train_to, at the step the state is at
        self._guard = nonfinite.NonFiniteGuard(run.training.nonfinite_policy, self.manager)

    def _batch_iterator(self):
        experiment, run = self.experiment, self.run
        batches = pipeline.create_train_iterator(
            experiment.data,
            per_process_batch_size=run.batch_size // jax.process_count(),
            seed=run.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_step=self.step,
        )
        return device_prefetch.prefetch_to_device(
            batches, experiment.data.device_prefetch, functools.partial(_to_device, experiment)
        )

    def train_to(
        self,
        target_step: int,
        watcher: preemption.PreemptionWatcher | None = None,
        on_step: Callable[[int, dict[str, float] | None], None] | None = None,
    ) -> list[dict[str, float]]:
        """Steps until `target_step` (or a SIGTERM seen by `watcher`); the summaries logged.

        Scalars are written every log_every_steps and at `target_step`; checkpoints every
        checkpoint_every_steps and at num_train_steps (or on preemption); sample grids and
        evaluations at their cadences. `on_step(step, summary or None)` follows progress."""
        run = self.run
        if self._batches is None:
            self._batches = self._batch_iterator()
        # Progress/ETA log lines; the scalar steps/s below excludes sampling and checkpoint time.
        report = periodic_actions.ReportProgress(num_train_steps=target_step, every_secs=60)
        pending: list[tuple[int, dict[str, jax.Array]]] = []  # (step, metrics) not yet fetched
        logged: list[dict[str, float]] = []
        interval_start, interval_steps = time.perf_counter(), 0
        for step in range(self.step + 1, target_step + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                batch = next(self._batches)  # put on the devices data.device_prefetch ahead
                self.state, metrics = self._train_step(self.state, batch, self.experiment.frozen)
            self.step = step
            pending.append((step, metrics))
            if len(pending) > MAX_STEPS_IN_FLIGHT:  # bound the dispatch run-ahead (see constant)
                jax.block_until_ready(pending[-MAX_STEPS_IN_FLIGHT - 1][1])
            interval_steps += 1
            report(step)
            preempted = watcher is not None and watcher.should_stop(step)  # host flag, no sync
            is_last = step == run.num_train_steps
            summary = None
            if step % run.log_every_steps == 0 or step == target_step or is_last or preempted:
                summary = summarize(pending, self._guard)  # 'stop' raises on a non-finite step
                elapsed = time.perf_counter() - interval_start
                summary["steps_per_sec"] = interval_steps / elapsed
                summary["examples_per_sec"] = interval_steps * run.batch_size / elapsed
                self.writer.write_scalars(step, summary)
                logged.append({"step": step, **summary})
                pending, interval_start, interval_steps = [], time.perf_counter(), 0
            if step % run.checkpoint_every_steps == 0 or is_last or preempted:
                paused = time.perf_counter()
                with report.timed("checkpoint"):
                    self.save(force=is_last or preempted, pending=pending)
                interval_start += time.perf_counter() - paused
            if preempted:
                self.manager.wait_until_finished()
                logging.warning(
                    "Preempted: saved checkpoint at step %d in %s", step, self.manager.directory
                )
                break
            paused = time.perf_counter()
            self._periodic_outputs(step, is_last, report)
            interval_start += time.perf_counter() - paused
            if on_step is not None:
                on_step(step, summary)
        self.history.extend(logged)
        return logged

    def _periodic_outputs(self, step: int, is_last: bool, report) -> None:
        """The sample grid and the evaluation, when their cadence (or the last step) says so."""
        run = self.run
        if run.sample_every_steps and (step % run.sample_every_steps == 0 or is_last):
            with report.timed("sample"):
                sample_grids.write_sample_grid(
                    self.writer,
                    self.sample_fn,
                    self.state,
                    step,
                    self.workdir,
                    run.seed,
                    sample_grids.grid_rows(self.experiment),
                    sample_grids.grid_labels(self.experiment),
                )
        every = run.eval_every_steps or run.sample_every_steps
        if self._evaluate is not None and every and (step % every == 0 or is_last):
            with report.timed("eval"):
                self.writer.write_scalars(step, self._evaluate(self.state.ema_params))

    def save(self, force: bool = True, pending=()) -> bool:
        """Checkpoints the current state (`force`: even off the checkpoint cadence); never after
        a non-finite step under nonfinite_policy='stop'."""
        self._guard.check_before_save(list(pending))
        return checkpointing.save(self.manager, self.state, force=force)

    def close(self) -> None:
        """Waits for asynchronous checkpoint saves and flushes the metric writer."""
        self.manager.wait_until_finished()
        self.writer.flush()


def _refuse_inpainting_training(run: RunConfig) -> None:
    """ConfigError for a 9-channel inpainting U-Net: training it needs masks with the data."""
    extra = getattr(run.model, "in_channels", 0) - getattr(run.model, "out_channels", 0)
    if extra:
        raise ConfigError(
            f"pretrained.path={run.pretrained.path!r} is an inpainting U-Net ({extra} extra "
            "input channels: mask + masked image); training it needs masks with the data, which "
            "is not supported. Sample it (--mode=sample with sampler.init_image / sampler.mask) "
            "or fine-tune a text-to-image pipeline."
        )
