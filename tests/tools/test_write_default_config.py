"""configs/default.py is generated from the typed run config: one schema, never out of date."""

import ml_collections

from configs import default
from tools import write_default_config
from training import run_config
from training.run_config import RunConfig


def test_committed_default_config_is_what_the_schema_renders():
    """Fails when a section class changed without `python -m tools.write_default_config`."""
    assert write_default_config.PATH.read_text() == write_default_config.render()


def test_default_config_holds_every_field_with_the_schemas_default():
    assert default.get_config().to_dict() == RunConfig().to_configdict().to_dict()
    config = default.get_config()
    for name in run_config.SECTIONS:
        assert isinstance(config[name], ml_collections.ConfigDict), name


def test_dit_section_holds_every_dit_field():
    config = default.get_config()
    config.model = default.dit_model()
    run = RunConfig.from_configdict(config, 8, 1)
    assert type(run.model).__name__ == "DiTConfig"
    assert run.to_configdict().model.to_dict() == default.dit_model().to_dict()


def test_every_line_has_a_doc():
    """Each assignment carries a comment (inline or just above)."""
    lines = write_default_config.render().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("config.", "model.")) and " = " in stripped:
            if "ConfigDict()" in stripped or "_model()" in stripped:
                continue
            assert "  # " in line or lines[index - 1].strip().startswith("#"), line
