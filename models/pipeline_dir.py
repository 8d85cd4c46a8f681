"""A diffusers-format Stable Diffusion pipeline directory: which folder holds which part.

`model_index.json` names each component's class; `unet/`, `vae/`, `text_encoder/`,
`tokenizer/` and `scheduler/` hold them (SD 1.x / 2.x: a UNet2DConditionModel, an
AutoencoderKL, a CLIPTextModel (OpenCLIP's text tower for SD 2.x, stored as one), a CLIP
tokenizer and a scheduler config). This module only checks the layout and says where things are;
models/unet_weights.py, models/autoencoder_weights.py and models/text_encoders read the parts.
The safety checker and feature extractor are not used.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from etils.epath import Path

from errors import ConfigError

INDEX_FILE = "model_index.json"
SCHEDULER_FILE = "scheduler_config.json"
PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
)
# component -> the classes it may be (library, class name as model_index.json writes them).
COMPONENTS = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any scheduler: scheduler_config.json is read for its settings
}
# Pipelines people will try whose parts this loader does not build, and why.
UNSUPPORTED = {
    "StableDiffusionXLPipeline": "SDXL has two text encoders and size / crop time ids",
    "StableDiffusionXLImg2ImgPipeline": "SDXL has two text encoders and size / crop time ids",
    "StableDiffusion3Pipeline": "SD3 is an MMDiT with three text encoders",
    "FluxPipeline": "Flux is a rectified-flow transformer with T5 and CLIP",
}


@dataclasses.dataclass(frozen=True)
class PipelineDir:
    """The checked layout of one pipeline directory."""

    root: Path
    pipeline_class: str
    scheduler_class: str

    @property
    def unet(self) -> Path:
        return self.root / "unet"

    @property
    def vae(self) -> Path:
        return self.root / "vae"

    @property
    def text_encoder(self) -> Path:
        return self.root / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def scheduler_config(self) -> dict[str, Any]:
        """The parsed scheduler/scheduler_config.json."""
        return _read_json(self.root / "scheduler" / SCHEDULER_FILE)

    def tokenizer_max_length(self, default: int = 77) -> int:
        """tokenizer_config.json's model_max_length (CLIP: 77), or `default`."""
        path = self.tokenizer / "tokenizer_config.json"
        if not path.is_file():
            return default
        length = _read_json(path).get("model_max_length", default)
        return int(length) if isinstance(length, int) and 0 < length < 10_000 else default


def read_pipeline_dir(path: str | os.PathLike) -> PipelineDir:
    """Checks `path` is a Stable Diffusion 1.x / 2.x pipeline directory; ConfigError naming the
    missing file, folder or unsupported class otherwise."""
    root = Path(path)
    index_path = root / INDEX_FILE
    if not index_path.is_file():
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else "no such directory"
        if isinstance(found, list) and any("lora" in name.lower() for name in found):
            raise ConfigError(
                f"pretrained.path={str(root)!r} holds LoRA weights only ({found}); LoRA is not "
                "supported: point it at a full pipeline directory (model_index.json, unet/, vae/, "
                "text_encoder/, tokenizer/, scheduler/)."
            )
        raise ConfigError(
            f"pretrained.path={str(root)!r} has no {INDEX_FILE}: expected a diffusers pipeline "
            f"directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/); "
            f"found {found}."
        )
    index = _read_json(index_path)
    pipeline_class = index.get("_class_name", "")
    if pipeline_class in UNSUPPORTED:
        raise ConfigError(
            f"{str(index_path)!r}: {pipeline_class} is not supported "
            f"({UNSUPPORTED[pipeline_class]}); supported: {', '.join(PIPELINES)}."
        )
    if pipeline_class not in PIPELINES:
        raise ConfigError(
            f"{str(index_path)!r}: _class_name={pipeline_class!r} is not a supported pipeline; "
            f"supported: {', '.join(PIPELINES)}."
        )
    scheduler_class = ""
    for component, classes in COMPONENTS.items():
        entry = index.get(component)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise ConfigError(f"{str(index_path)!r} names no {component!r} component.")
        if classes is not None and entry[1] not in classes:
            raise ConfigError(
                f"{str(index_path)!r}: {component} is a {entry[1]}; supported: "
                f"{', '.join(classes)}."
            )
        if component == "scheduler":
            scheduler_class = entry[1]
        folder = root / component
        if not folder.is_dir():
            raise ConfigError(f"pretrained.path={str(root)!r} is missing its {component}/ folder.")
    if not (root / "scheduler" / SCHEDULER_FILE).is_file():
        raise ConfigError(f"pretrained.path={str(root)!r}: scheduler/ has no {SCHEDULER_FILE}.")
    return PipelineDir(root, pipeline_class, scheduler_class)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ConfigError(f"{str(path)!r} holds a {type(value).__name__}, not a JSON object.")
    return value
