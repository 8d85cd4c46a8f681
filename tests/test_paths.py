"""paths: local vs remote paths, atomic writes, walks and mirrors (remote ones in test_gcs.py)."""

import os

import numpy as np
import pytest

import paths


def test_remote_paths_are_told_apart_and_only_local_ones_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.is_remote("gs://bucket/run") and paths.is_remote("s3://b/x")
    assert not paths.is_remote("runs/a") and not paths.is_remote(tmp_path)
    assert paths.absolute("gs://bucket/run") == "gs://bucket/run"  # not <cwd>/gs:/bucket/run
    assert paths.absolute("runs/a") == str(tmp_path / "runs" / "a")
    assert paths.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert (
        os.fspath(paths.as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    )


def test_write_bytes_makes_parents_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    paths.write_bytes(str(target), b"first")
    paths.write_text(target, "second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["file.bin"]
    with pytest.raises(IsADirectoryError):
        paths.write_bytes(tmp_path / "a", b"x")  # the rename fails: nothing is left behind
    assert sorted(os.listdir(tmp_path)) == ["a"] and os.listdir(tmp_path / "a") == ["b"]


def test_walk_gives_relative_folders_top_down_and_can_be_pruned(tmp_path):
    for name in ("top.png", "a/1.png", "a/b/2.png", ".hidden/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    seen = []
    for folder, subfolders, names in paths.walk(tmp_path):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        seen.append((folder, sorted(names)))
    assert seen == [("", ["top.png"]), ("a", ["1.png"]), ("a/b", ["2.png"])]


def test_local_files_are_read_where_they_are(tmp_path):
    path = tmp_path / "weights.safetensors"
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    paths.save_safetensors(tensors, path, metadata={"format": "pt"})
    np.testing.assert_array_equal(paths.read_safetensors(path)["w"], tensors["w"])
    assert paths.readable(path) == str(path)
    with paths.local_file(path) as name:
        assert name == str(path)


def test_mirror_copies_new_and_changed_files_once(tmp_path):
    local, remote = tmp_path / "staging", tmp_path / "remote"
    (local / "sub").mkdir(parents=True)
    (local / "events").write_bytes(b"one")
    (local / "sub" / "more").write_bytes(b"x")
    sent = {}
    assert paths.mirror_tree(str(local), str(remote), sent) == 2
    assert paths.mirror_tree(str(local), str(remote), sent) == 0  # nothing changed
    with open(local / "events", "ab") as file:
        file.write(b" two")
    assert paths.mirror_tree(str(local), str(remote), sent) == 1
    assert (remote / "events").read_bytes() == b"one two"
    assert (remote / "sub" / "more").read_bytes() == b"x"
