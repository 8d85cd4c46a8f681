"""Paths that may be local or in Cloud Storage ("gs://bucket/dir"): the one place that tells them
apart.

Everything a run reads or writes by a configured path (workdir, data.data_dir, eval.stats_dir,
weights directories) goes through these helpers or through etils' `epath`, which Orbax and tfds
use as well. Local paths behave as they always did (`~` expanded, made absolute where a directory
is recorded, files written beside and renamed into place); remote ones go through `epath`, whose
backend for gs:// is TensorFlow's gfile, or fsspec's gcsfs when EPATH_USE_TF=false (what the tests
use to reach a local Cloud Storage server; docs/scaling.md lists the variables).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator, Mapping

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """True for a URL-style path ("gs://bucket/run", "s3://..."), False for a local one."""
    return "://" in os.fspath(path)


def absolute(path: PathLike) -> str:
    """`path` as a string: a local one with `~` expanded and made absolute (Orbax needs that), a
    remote one unchanged (os.path.abspath would turn "gs://b/x" into "<cwd>/gs:/b/x")."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def as_path(path: PathLike) -> epath.Path:
    """An `epath.Path`: pathlib's API for local and remote paths alike."""
    return epath.Path(path)


def write_bytes(path: PathLike, data: bytes) -> None:
    """Writes the file `path` (its local parent directories made first); never half a file.

    Locally the bytes go to a file beside it that is renamed into place; a Cloud Storage object
    appears only once its upload has completed, so no rename is needed (or cheap) there.
    """
    path = os.fspath(path)
    if is_remote(path):
        epath.Path(path).write_bytes(data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: PathLike, text: str) -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def readable(path: PathLike) -> str | io.BytesIO:
    """What Pillow's Image.open and np.load take: a local path as it is, a remote file's bytes
    read in one request (not the many small ranged reads a decoder makes)."""
    path = os.fspath(path)
    return io.BytesIO(epath.Path(path).read_bytes()) if is_remote(path) else path


@contextlib.contextmanager
def local_file(path: PathLike) -> Iterator[str]:
    """A local file name holding `path`'s bytes, for readers that take only file names (e.g.
    tokenizers): `path` itself when local, a temporary copy (removed on exit) when remote."""
    path = os.fspath(path)
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="remote_") as folder:
        copy = os.path.join(folder, os.path.basename(path.rstrip("/")))
        with open(copy, "wb") as file:
            file.write(epath.Path(path).read_bytes())
        yield copy


def walk(root: PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
    """(folder relative to `root`, '/'-separated ("" for root), sub-folder names, file names),
    top down, like os.walk: prune by editing the sub-folder list in place. Local walks follow
    symbolic links."""
    root = os.fspath(root)
    if not is_remote(root):
        for folder, subfolders, names in os.walk(root, followlinks=True):
            relative = os.path.relpath(folder, root).replace(os.sep, "/")
            yield ("" if relative == "." else relative), subfolders, names
        return
    top = None  # epath's gcsfs walk drops the "gs://" prefix: paths are made relative to its first
    for folder, subfolders, names in epath.Path(root).walk():
        folder = os.fspath(folder)
        top = folder if top is None else top
        yield folder[len(top) :].strip("/"), subfolders, names


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
    """A .safetensors file's tensors as numpy arrays (a local file memory-mapped as it is read)."""
    from safetensors.numpy import load, load_file  # noqa: PLC0415

    path = os.fspath(path)
    return load(epath.Path(path).read_bytes()) if is_remote(path) else load_file(path)


def save_safetensors(
    tensors: Mapping[str, np.ndarray], path: PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Writes `tensors` as a .safetensors file (remote: serialised in memory, then uploaded)."""
    from safetensors.numpy import save, save_file  # noqa: PLC0415

    path = os.fspath(path)
    if is_remote(path):
        epath.Path(path).write_bytes(save(dict(tensors), metadata=metadata))
    else:
        save_file(dict(tensors), path, metadata=metadata)


def mirror_tree(local_dir: str, remote_dir: PathLike, sent: dict[str, tuple[int, int]]) -> int:
    """Copies the files under `local_dir` that are new or changed since `sent` recorded them
    (by size and modification time) to the same relative paths under `remote_dir`; `sent` is
    updated. Returns how many files were copied."""
    copied = 0
    for folder, _, names in os.walk(local_dir):
        for name in sorted(names):
            local = os.path.join(folder, name)
            stat = os.stat(local)  # before reading: a file growing meanwhile is sent again
            key = os.path.relpath(local, local_dir).replace(os.sep, "/")
            if sent.get(key) == (stat.st_size, stat.st_mtime_ns):
                continue
            with open(local, "rb") as file:
                data = file.read()
            write_bytes(os.path.join(os.fspath(remote_dir), key), data)
            sent[key] = (stat.st_size, stat.st_mtime_ns)
            copied += 1
    return copied
