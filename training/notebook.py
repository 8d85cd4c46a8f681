"""The Python API for notebooks: build a run, train a few steps at a time, sample, evaluate.

    from training.notebook import Run
    run = Run("configs/digits_ddpm.py", "/tmp/digits", num_train_steps=300, log_every_steps=10)
    history = run.train()                      # to num_train_steps, with a progress bar
    images = run.sample("dpmpp_2m", num_steps=20)
    run.grid(images)                           # a PIL image; shown inline by Jupyter

Everything `main.py --mode=train` writes (checkpoints, TensorBoard scalars, sample grids) is
written here too, so a notebook run and a command-line run of the same workdir resume each other.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging as std_logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from errors import ConfigError
from input_pipeline.tf_devices import hide_accelerators_from_tensorflow
from training import images, loop
from training.experiment import make_sample_conditions
from training.run_config import RunConfig
from training.sampling import SamplerConfig


def load_config(config: str | ml_collections.ConfigDict | RunConfig) -> ml_collections.ConfigDict:
    """A config given as a file path ('configs/digits_ddpm.py'), a ConfigDict or a RunConfig."""
    if isinstance(config, RunConfig):
        return config.to_configdict()
    if isinstance(config, ml_collections.ConfigDict):
        return ml_collections.ConfigDict(config.to_dict())  # a copy: overrides stay local
    if not os.path.isfile(config):
        raise FileNotFoundError(f"config={config!r}: no such config file.")
    spec = importlib.util.spec_from_file_location("_notebook_config", config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _ProjectLogFilter(std_logging.Filter):
    """Passes this project's records and every library's warnings and errors; drops the
    libraries' INFO chatter (Orbax logs a dozen lines per checkpoint)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        path = os.path.abspath(record.pathname)
        ours = path.startswith(_REPO_ROOT) and "site-packages" not in path
        return ours or record.levelno >= std_logging.WARNING


def show_logs(verbosity: str = "info", libraries: bool = False) -> None:
    """Shows absl logging (what main.py prints) on stderr at `verbosity`, as a notebook wants:
    this project's lines, and other libraries' only from WARNING up unless `libraries`."""
    logging.use_absl_handler()
    logging.set_verbosity(verbosity)
    handler = logging.get_absl_handler()
    handler.python_handler.stream = sys.stderr
    for existing in [f for f in handler.filters if isinstance(f, _ProjectLogFilter)]:
        handler.removeFilter(existing)
    if not libraries:
        handler.addFilter(_ProjectLogFilter())


class Run:
    """A training run driven from Python: `train`, `sample`, `evaluate`, `save`.

    `config` is a config file path, a ConfigDict or a RunConfig; `overrides` set fields by
    dotted name (`Run(path, workdir, **{"sampler.max_steps": 50})` or `num_train_steps=300`).
    A workdir holding checkpoints is resumed from its newest one (the log says which step)."""

    def __init__(
        self,
        config: str | ml_collections.ConfigDict | RunConfig,
        workdir: str,
        verbosity: str = "info",
        **overrides: Any,
    ):
        hide_accelerators_from_tensorflow()  # before tf.data can take GPU memory from JAX
        show_logs(verbosity)
        config_dict = load_config(config)
        for name, value in overrides.items():
            _set_field(config_dict, name, value)
        self._trainer = loop.Trainer(config_dict, workdir)  # validates, then builds or resumes
        self._samplers: dict[tuple[Any, ...], Any] = {}  # compiled chains, by what shapes them
        self._evaluators: dict[int, Any] = {}

    @property
    def config(self) -> RunConfig:
        """The typed run config (read-only; build a new Run to change it)."""
        return self._trainer.run

    @property
    def experiment(self):
        """The schedule, model, mesh and sampler settings built from the config."""
        return self._trainer.experiment

    @property
    def state(self):
        """The train state on the devices (params, EMA params, optimizer state, step)."""
        return self._trainer.state

    @property
    def step(self) -> int:
        return self._trainer.step

    @property
    def history(self) -> list[dict[str, float]]:
        """Every summary logged by this Run's train calls: {"step", "loss", ...} per entry."""
        return list(self._trainer.history)

    def train(self, num_steps: int | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Trains `num_steps` more steps (default: up to num_train_steps); the summaries logged.

        A summary is logged every log_every_steps and at the last step of the call. Steps past
        num_train_steps are allowed (the learning-rate schedule stays at its end value)."""
        trainer = self._trainer
        target = trainer.run.num_train_steps if num_steps is None else trainer.step + num_steps
        if num_steps is not None and num_steps < 0:
            raise ValueError(f"num_steps={num_steps} must be >= 0.")
        if target <= trainer.step:
            logging.info(
                "At step %d of num_train_steps=%d; nothing to do (train(num_steps=N) trains N "
                "more)",
                trainer.step,
                trainer.run.num_train_steps,
            )
            return []
        logging.info("Training steps %d to %d", trainer.step + 1, target)
        bar = _progress_bar(trainer.step, target) if progress else None

        def on_step(step: int, summary: dict[str, float] | None) -> None:
            bar.update(1)
            if summary is not None:
                bar.set_postfix(loss=f"{summary['loss']:.4f}")

        try:
            return trainer.train_to(target, on_step=on_step if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
            trainer.close()  # checkpoints written whole, scalars flushed: safe to stop here

    def sample(
        self,
        sampler: str | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        prompts: str | Sequence[str] | None = None,
        negative_prompt: str | None = None,
        class_labels: str | Sequence[int] | None = None,
        num_samples: int | None = None,
        params: str = "ema",
        seed: int | None = None,
        **sampler_fields: Any,
    ) -> np.ndarray:
        """Samples [N, H, W, C] images in [-1, 1] from the EMA (`params="ema"`) or current
        parameters; every argument left None takes the config's `sampler.*` value.

        One compile per (sampler, settings that change the program, image count): sweeping
        `guidance_scale`, the prompts at an equal count, or `num_steps` up to
        `sampler.max_steps` reuses it (see `compile_count`)."""
        fields = dict(sampler_fields)
        for name, value in (
            ("name", sampler),
            ("num_steps", num_steps),
            ("guidance_scale", guidance_scale),
            ("negative_prompt", negative_prompt),
            ("num_samples", num_samples),
        ):
            if value is not None:
                fields[name] = value
        if prompts is not None:
            fields["prompts"] = prompts if isinstance(prompts, str) else ";".join(prompts)
        if class_labels is not None:
            labels = class_labels if isinstance(class_labels, str) else map(str, class_labels)
            fields["class_labels"] = labels if isinstance(labels, str) else ",".join(labels)
        kind = self.config.conditioning.kind
        conditioning_fields = ("prompts", "negative_prompt", "class_labels")
        asked = [name for name in conditioning_fields if fields.get(name)]
        if kind == "none" and asked:
            raise ConfigError(
                f"{', '.join(asked)} given, but conditioning.kind='none': this model is "
                "unconditional (no prompts or class labels to follow)."
            )
        settings = self._sampler_settings(fields)
        if params not in ("ema", "current"):
            raise ValueError(f'params={params!r} must be "ema" or "current".')
        experiment = self.experiment
        if experiment.step_config.autoencoder is not None:
            raise ConfigError(
                "Run.sample draws from diffusion models; this run trains an autoencoder "
                "(its grids show reconstructions)."
            )
        conditions = make_sample_conditions(
            self.config, settings, experiment.num_classes, experiment.text_encoder
        )
        sample_fn = self._sample_fn(settings, conditions)
        chosen = self.state.ema_params if params == "ema" else self.state.params
        key = jax.random.key(self.config.seed if seed is None else seed)
        samples = sample_fn(chosen, key, settings.num_steps, settings.guidance_scale, conditions)
        self._last_conditions = conditions
        return samples

    @property
    def compile_count(self) -> int:
        """Sampling chains compiled by this Run so far (each (sampler, shape) compiles once)."""
        return sum(fn.chain._cache_size() for fn in self._samplers.values())

    def grid(
        self, samples: np.ndarray, rows: int | None = None, labels: Sequence[str] | None = None
    ) -> Image.Image:
        """`samples` as one picture (cells about 64 px, nearest neighbour); rows default to one
        per prompt / class of the last `sample` call, labelled with it."""
        conditions = getattr(self, "_last_conditions", None)
        if rows is None and labels is None and conditions is not None:
            if len(conditions.prompt_ids) == len(samples):
                rows, labels = len(conditions.prompts), conditions.prompts
        picture = images.sample_grid(samples, num_rows=rows, labels=labels)
        return Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)

    def evaluate(self, num_samples: int | None = None, params: str = "ema") -> dict[str, float]:
        """Metrics (FID and friends, eval.*) of `num_samples` samples (default
        eval.in_loop_num_samples) drawn with the config's sampler."""
        from training.evaluator import InLoopEvaluator  # noqa: PLC0415 (heavy; on demand)

        count = num_samples or self.config.eval.in_loop_num_samples
        if count not in self._evaluators:
            run = self.config
            evaluation = dataclasses.replace(run.eval, in_loop_num_samples=count)
            experiment = dataclasses.replace(
                self.experiment, run=dataclasses.replace(run, eval=evaluation)
            )
            self._evaluators[count] = InLoopEvaluator(
                experiment, self._trainer.shardings.ema_params
            )
        chosen = self.state.ema_params if params == "ema" else self.state.params
        return self._evaluators[count](chosen)

    def save(self) -> int:
        """Checkpoints the current state to the workdir (waits for it); returns the step."""
        self._trainer.save(force=True)
        self._trainer.close()
        logging.info("Saved step %d to %s", self.step, self._trainer.manager.directory)
        return self.step

    def _sampler_settings(self, fields: dict[str, Any]) -> SamplerConfig:
        """The config's sampler with `fields` changed, checked like a config (ConfigError)."""
        config = self.config.to_configdict()
        for name, value in fields.items():
            if name not in config.sampler:
                raise ConfigError(
                    f"sampler.{name}: no such field; fields: {', '.join(sorted(config.sampler))}."
                )
            config.sampler[name] = value
        return RunConfig.from_configdict(config, jax.device_count(), jax.process_count()).sampler

    def _sample_fn(self, settings: SamplerConfig, conditions):
        """The cached sample function for `settings` (compiled on its first call)."""
        # Traced at call time (no new program): the guidance scale and the conditions. The step
        # count sets the grid's length, so jit compiles per count unless sampler.max_steps pads.
        step_independent = {"guidance_scale": 0.0, "prompts": "", "negative_prompt": ""}
        step_independent.update(class_labels="", num_steps=1)
        rows = None if conditions is None else len(conditions.prompt_ids)
        key = (dataclasses.replace(settings, **step_independent), rows)
        if key not in self._samplers:
            experiment = dataclasses.replace(
                self.experiment,
                run=dataclasses.replace(self.config, sampler=settings),
                sample_conditions=conditions,
            )
            self._samplers[key] = loop.experiment_sample_fn(
                experiment, self._trainer.shardings.ema_params
            )
        return self._samplers[key]


def _set_field(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
    """Sets a dotted field ('sampler.max_steps'); unknown names are refused by RunConfig."""
    *parents, leaf = name.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ConfigError(f"{name}: no section {part!r} in the config.")
        node = node[part]
    with node.ignore_type():
        node[leaf] = value


def _progress_bar(start: int, target: int):
    """A tqdm bar over steps start+1..target (a notebook widget when ipywidgets is there)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=target - start, desc=f"steps {start + 1}-{target}", unit="step")
