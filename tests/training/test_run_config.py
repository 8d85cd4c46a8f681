"""RunConfig: one typed config, built once, refusing unknown keys the same way everywhere."""

import subprocess
import sys
import textwrap

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

import schema
from configs import digits_ddpm, digits_dit, digits_flow
from errors import ConfigError
from models import registry
from training import loop, run_config
from training.run_config import RunConfig

# One misspelt key per section (and the top level): (path of the typo, the field it misspells).
TYPOS = (
    [("num_train_step", "num_train_steps")]
    + [
        (f"{name}.{schema.user_fields(cls)[0].name}x", f"{name}.{schema.user_fields(cls)[0].name}")
        for name, cls in run_config.SECTIONS.items()
        if name != "model"
    ]
    + [("model.base_channel", "model.base_channels")]
)


def _set(config: ml_collections.ConfigDict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


@pytest.mark.parametrize("typo,meant", TYPOS)
def test_a_typo_in_a_python_configdict_is_refused_in_every_section(typo, meant):
    config = digits_ddpm.get_config()
    _set(config, typo, 3)
    with pytest.raises(ConfigError, match=rf"^{typo} is not a field .*Did you mean {meant}\?"):
        RunConfig.from_configdict(config, 8, 1)


def test_a_typo_in_a_notebook_dict_is_refused():
    with pytest.raises(ConfigError, match=r"diffusion\.predicton is not a field of diffusion"):
        RunConfig.from_configdict({"diffusion": {"predicton": "v"}}, 8, 1)
    run = RunConfig.from_configdict({"diffusion": {"prediction": "v"}, "batch_size": 16}, 8, 1)
    assert run.diffusion.prediction == "v" and run.batch_size == 16  # the rest: defaults


def _load_config_file(path: str, overrides: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """What main.py's --config flag gives for a file and overrides."""
    argv = ["main.py", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "",
        flag_values=values,
        lock_config=False,
        accept_new_attributes=True,
        sys_argv=argv,
    )
    values(argv)
    return values.config


@pytest.mark.parametrize("typo,meant", TYPOS)
def test_a_typo_in_a_config_file_is_refused_in_every_section(typo, meant, tmp_path):
    path = tmp_path / "typo_config.py"
    path.write_text(
        textwrap.dedent(
            f"""
            from configs import digits_ddpm

            def get_config():
                config = digits_ddpm.get_config()
                config.{typo} = 3
                return config
            """
        )
    )
    config = _load_config_file(str(path))
    with pytest.raises(ConfigError, match=rf"^{typo} is not a field .*Did you mean {meant}\?"):
        RunConfig.from_configdict(config, 8, 1)


@pytest.mark.parametrize("typo,meant", TYPOS)
def test_a_typo_in_a_flag_is_refused_in_every_section(typo, meant):
    config = _load_config_file(digits_ddpm.__file__, (f"--config.{typo}=3",))
    with pytest.raises(ConfigError, match=rf"^{typo} is not a field .*Did you mean {meant}\?"):
        RunConfig.from_configdict(config, 8, 1)


def test_a_flag_of_the_wrong_type_is_refused_naming_the_field():
    config = _load_config_file(digits_ddpm.__file__, ("--config.diffusion.prediction=v",))
    assert RunConfig.from_configdict(config, 8, 1).diffusion.prediction == "v"
    with pytest.raises(flags.IllegalFlagValueError, match="batch_size"):
        _load_config_file(digits_ddpm.__file__, ("--config.batch_size=many",))


@pytest.mark.slow
def test_main_refuses_a_typo_before_anything_runs(tmp_path):
    path = tmp_path / "typo_config.py"
    path.write_text(
        "from configs import digits_ddpm\n\n\ndef get_config():\n"
        "    config = digits_ddpm.get_config()\n    config.optimizer.learning_rat = 1.0\n"
        "    return config\n"
    )
    result = subprocess.run(
        [sys.executable, "main.py", f"--config={path}", f"--workdir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "optimizer.learning_rat is not a field of optimizer" in result.stderr
    assert "Did you mean optimizer.learning_rate?" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("module", [digits_ddpm, digits_dit, digits_flow])
def test_to_configdict_round_trips(module):
    run = RunConfig.from_configdict(module.get_config(), 8, 1)
    assert RunConfig.from_configdict(run.to_configdict(), 8, 1) == run
    assert run.to_configdict().to_dict() == module.get_config().to_dict()


def test_the_model_config_is_built_once_with_the_real_text_width():
    from configs import digits_text_unet

    run = RunConfig.from_configdict(digits_text_unet.get_config(), 8, 1)
    assert run.model.context_dim == run.model.pooled_dim == 384  # all-MiniLM-L6-v2's width


def test_a_run_builds_every_section_once(fast_loop_config, tmp_path, monkeypatch):
    """From the ConfigDict to the last step, each typed section is constructed exactly once."""
    built = []
    build = schema.build
    make_model_config = registry.make_model_config

    def counting_build(cls, values, path, fixed=None):
        built.append(cls.__name__)
        return build(cls, values, path, fixed)

    def counting_model(*args, **kwargs):
        built.append("model")
        return make_model_config(*args, **kwargs)

    monkeypatch.setattr(schema, "build", counting_build)
    monkeypatch.setattr(registry, "make_model_config", counting_model)
    loop.train_and_evaluate(fast_loop_config, str(tmp_path / "run"))
    sections = [cls.__name__ for name, cls in run_config.SECTIONS.items() if name != "model"]
    assert sorted(built) == sorted([*sections, "UNetConfig", "model", "RunConfig"]), built
