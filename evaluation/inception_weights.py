"""FID Inception weights: a one-time converter from pytorch-fid's .pth, and the runtime reader.

    python -m evaluation.inception_weights \\
        --torch_weights=PATH/pt_inception-2015-12-05-6726825d.pth \\
        --out=PATH/pt_inception-2015-12-05.safetensors

The safetensors file keeps pytorch-fid's tensor names and layouts (conv weights [O, I, kh, kw],
fc.weight [1008, 2048]); the `num_batches_tracked` counters of its batch norms are dropped (they
are training bookkeeping). The reader maps each tensor onto our parameter path and layout:
`Mixed_5b.branch1x1.conv.weight` -> Mixed_5b/branch1x1/conv/kernel as [kh, kw, I, O];
`*.bn.weight / bias / running_mean / running_var` -> bn/scale / bias / mean / var;
`fc.weight` -> fc/kernel as [2048, 1008].

Torch is imported only inside the converter; the runtime reads safetensors with
`safetensors.numpy` and never unpickles anything.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from flax import traverse_util
from safetensors import SafetensorError

import paths

Params = dict[str, Any]

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
CONVERT_COMMAND = (
    "python -m evaluation.inception_weights "
    "--torch_weights=PATH/pt_inception-2015-12-05-6726825d.pth "
    "--out=PATH/pt_inception-2015-12-05.safetensors"
)
HOW_TO_GET = (
    f"Download pytorch-fid's Inception weights from {FID_WEIGHTS_URL} and convert them once "
    f"with `{CONVERT_COMMAND}`."
)
# Our leaf name -> pytorch-fid's.
_TORCH_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
_IGNORED_SUFFIX = ".num_batches_tracked"  # BatchNorm2d's step counter, not a weight
_MAX_LISTED = 8  # names shown per kind of mismatch before "... and N more"


def torch_name(path: tuple[str, ...]) -> str:
    """pytorch-fid's state-dict name of our parameter at `path` (e.g. ("fc", "kernel"))."""
    return ".".join([*path[:-1], _TORCH_LEAF[path[-1]]])


def to_torch_layout(array: np.ndarray) -> np.ndarray:
    """Our layout -> torch's: conv [kh, kw, I, O] -> [O, I, kh, kw]; dense [I, O] -> [O, I]."""
    return np.transpose(array, (3, 2, 0, 1)) if array.ndim == 4 else np.transpose(array)


def from_torch_layout(array: np.ndarray) -> np.ndarray:
    """The inverse of `to_torch_layout`."""
    return np.transpose(array, (2, 3, 1, 0)) if array.ndim == 4 else np.transpose(array)


def torch_shapes(abstract_params: Params) -> dict[str, tuple[int, ...]]:
    """pytorch-fid's tensor name -> shape for every parameter of the network."""
    flat = traverse_util.flatten_dict(abstract_params)
    return {torch_name(path): _torch_shape(tuple(leaf.shape)) for path, leaf in flat.items()}


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]


def check_tensors(
    shapes: Mapping[str, Sequence[int]], abstract_params: Params, source: str | os.PathLike
) -> None:
    """Raises a ValueError naming `source` unless `shapes` are exactly pytorch-fid's tensors."""
    expected = torch_shapes(abstract_params)
    given = {name: tuple(shape) for name, shape in shapes.items()}
    problems = []
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        f"{name} {given[name]} (expected {expected[name]})"
        for name in set(expected) & set(given)
        if given[name] != expected[name]
    )
    for kind, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            listed = ", ".join(names[:_MAX_LISTED])
            more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
            problems.append(f"{len(names)} {kind}: {listed}{more}")
    if problems:
        example, shape = next(iter(expected.items()))
        raise ValueError(
            f"{str(source)!r} does not hold pytorch-fid's FID Inception weights (expected "
            f"{len(expected)} tensors named as in its state dict, e.g. {example!r} {shape}); "
            f"{'; '.join(problems)}. {HOW_TO_GET}"
        )


def read_params(path: str | os.PathLike, abstract_params: Params) -> Params:
    """Our params dict (float32 jax arrays) from a converted .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights {str(path)!r} not found. {HOW_TO_GET}")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"FID Inception weights {str(path)!r} are not a .safetensors file; pickled torch "
            f"checkpoints (.pth) are never read at runtime. {HOW_TO_GET}"
        )
    try:
        tensors = paths.read_safetensors(path)
    except SafetensorError as error:
        raise ValueError(
            f"{str(path)!r} could not be read as safetensors ({error}). {HOW_TO_GET}"
        ) from error
    check_tensors({name: t.shape for name, t in tensors.items()}, abstract_params, path)
    flat = {
        path_: jnp.asarray(from_torch_layout(tensors[torch_name(path_)]), jnp.float32)
        for path_ in traverse_util.flatten_dict(abstract_params)
    }
    return traverse_util.unflatten_dict(flat)


def convert(
    torch_weights: str | os.PathLike, out: str | os.PathLike, abstract_params: Params
) -> None:
    """Writes pytorch-fid's .pth state dict as safetensors, after checking every tensor."""
    import torch  # noqa: PLC0415 (the converter alone needs torch)

    torch_weights = Path(torch_weights)
    if not torch_weights.is_file():
        raise FileNotFoundError(f"{str(torch_weights)!r} not found. {HOW_TO_GET}")
    state_dict = torch.load(torch_weights, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{str(torch_weights)!r} holds a {type(state_dict).__name__}, not a state dict. "
            f"{HOW_TO_GET}"
        )
    tensors = {
        name: tensor.detach().to(torch.float32).numpy()
        for name, tensor in state_dict.items()
        if not name.endswith(_IGNORED_SUFFIX)
    }
    check_tensors({name: t.shape for name, t in tensors.items()}, abstract_params, torch_weights)
    if not paths.is_remote(out):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    paths.save_safetensors({name: np.ascontiguousarray(t) for name, t in tensors.items()}, out)


def main(argv: Sequence[str] | None = None) -> None:
    """The converter's command line."""
    from evaluation import inception  # noqa: PLC0415 (inception imports this module)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch_weights", required=True, help=f"pytorch-fid's {FID_WEIGHTS_URL}")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    convert(args.torch_weights, args.out, inception.inception_model().abstract_params)
    network = inception.load_inception(args.out)
    print(f"wrote {args.out} ({network.weights_id})")


if __name__ == "__main__":
    main()
