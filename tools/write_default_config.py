"""Writes configs/default.py from the typed run config (training/run_config.py and the section
classes it names), so the schema is written once: `python -m tools.write_default_config`.

tests/tools/test_write_default_config.py fails when the committed file is not what this renders.
"""

from __future__ import annotations

import pathlib
import sys
import textwrap
import types
import typing
from typing import Any

import schema
from models.autoencoder import AutoencoderConfig
from models.dit import DiTConfig
from models.registry import DATA_FIELDS
from models.unet import UNetConfig
from training import run_config

PATH = pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.py"
WIDTH = 100
HEADER = '''"""Every field of a run config with its default and what it does.

Experiment files import this and override what differs; any field can also be set with
--config.<path>=<value>.

GENERATED from the typed sections (training/run_config.py and the classes it names) by
`python -m tools.write_default_config`; edit those classes, not this file.
"""

import ml_collections
'''
BACKBONES = {
    "unet": (UNetConfig, "models/unet.py"),
    "dit": (DiTConfig, "models/dit.py"),
    "autoencoder": (AutoencoderConfig, "models/autoencoder.py"),
}


def _literal(value: Any, hint: Any) -> str:
    """Python source for a default; None of an optional str / int becomes a typed placeholder
    (so --config.x=... can still set it)."""
    if value is None:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(inner) == 1:
            return f"ml_collections.config_dict.placeholder({inner[0].__name__})"
        return "None"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _assignments(target: str, cls: type, values: dict[str, Any], indent: str) -> list[str]:
    """`target.field = default  # doc` lines (the doc above the line when it does not fit)."""
    hints = typing.get_type_hints(cls)
    lines = []
    for name, value in values.items():
        code = f"{indent}{target}.{name} = {_literal(value, hints.get(name, str))}"
        doc = schema.doc(cls, name) if name in hints else ""
        if doc and len(code) + len(doc) + 4 <= WIDTH:
            lines.append(f"{code}  # {doc}")
            continue
        if doc:
            wrap = WIDTH - len(indent) - 2
            lines += [f"{indent}# {part}" for part in textwrap.wrap(doc, wrap)]
        lines.append(code)
    return lines


def _section_comment(title: str, indent: str = "    ") -> str:
    head = f"{indent}# --- {title} "
    return head + "-" * (WIDTH - len(head))


def render() -> str:
    """The text of configs/default.py."""
    run = run_config.RunConfig()
    lines = [HEADER, "", "def get_config() -> ml_collections.ConfigDict:"]
    lines.append('    """The default run config; each field is used somewhere in the code base."""')
    lines.append("    config = ml_collections.ConfigDict()")
    lines += ["", _section_comment("Run length and cadence")]
    top = schema.to_dict(run, run_config.SECTIONS)
    lines += _assignments("config", run_config.RunConfig, top, "    ")
    for name, cls in run_config.SECTIONS.items():
        title = schema.doc(run_config.RunConfig, name)
        lines += ["", _section_comment(f"{title}: {name}.*")]
        if name == "model":
            lines.append("    config.model = unet_model()  # or dit_model(), autoencoder_model()")
            continue
        lines.append(f"    config.{name} = ml_collections.ConfigDict()")
        lines += _assignments(f"config.{name}", cls, schema.to_dict(getattr(run, name)), "    ")
    lines += ["    return config"]
    for backbone, (cls, where) in BACKBONES.items():
        lines += ["", "", f"def {backbone}_model() -> ml_collections.ConfigDict:"]
        lines.append(f'    """config.model for model.name = "{backbone}" ({where})."""')
        lines.append("    model = ml_collections.ConfigDict()")
        lines.append(f'    model.name = "{backbone}"  # The backbone (models/registry.py).')
        lines += _assignments("model", cls, schema.to_dict(cls(), DATA_FIELDS), "    ")
        lines.append("    return model")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        current = PATH.read_text() if PATH.exists() else ""
        print("configs/default.py is current" if current == text else "configs/default.py is stale")
        return 0 if current == text else 1
    PATH.write_text(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
