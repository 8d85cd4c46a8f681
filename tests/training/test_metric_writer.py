"""metric_writer: events of a remote workdir staged locally and mirrored there (here into a
local directory standing in for the bucket; tests/test_gcs.py mirrors into a Cloud Storage
server)."""

import os

import tensorflow as tf
from clu import metric_writers
from tensorboard.backend.event_processing import event_accumulator

from training import metric_writer


def _scalars(directory, tag):
    """[(step, value)] of scalar `tag` in the event files under `directory` (none: [])."""
    events = event_accumulator.EventAccumulator(str(directory), size_guidance={"tensors": 0})
    events.Reload()
    if tag not in events.Tags()["tensors"]:
        return []
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]


def test_events_reach_the_mirror_on_flush_and_close_and_staging_is_removed(tmp_path):
    staging, remote = tmp_path / "staging", tmp_path / "bucket_run"
    staging.mkdir()
    inner = metric_writers.create_default_writer(str(staging), asynchronous=True)
    writer = metric_writer.MirroredWriter(inner, str(staging), str(remote), mirror_every_secs=1e9)
    writer.write_scalars(1, {"loss": 0.5})
    assert not remote.exists()  # not due yet
    writer.flush()
    assert _scalars(remote, "loss") == [(1, 0.5)]
    writer.write_scalars(2, {"loss": 0.25})
    writer.close()
    assert _scalars(remote, "loss") == [(1, 0.5), (2, 0.25)]
    assert not staging.exists()


def test_writes_mirror_when_due(tmp_path):
    staging, remote = tmp_path / "staging", tmp_path / "bucket_run"
    staging.mkdir()
    inner = metric_writers.create_default_writer(str(staging), asynchronous=False)
    writer = metric_writer.MirroredWriter(inner, str(staging), str(remote), mirror_every_secs=0)
    writer.write_scalars(3, {"loss": 1.0})
    assert _scalars(remote, "loss") == [(3, 1.0)]


def test_a_local_workdir_gets_clus_writer_and_nothing_is_staged(tmp_path):
    writer = metric_writer.create_writer(str(tmp_path), just_logging=False, asynchronous=False)
    assert not isinstance(writer, metric_writer.MirroredWriter)
    writer.write_scalars(1, {"loss": 2.0})
    writer.close()
    assert _scalars(tmp_path, "loss") == [(1, 2.0)]
    logging_only = metric_writer.create_writer("gs://b/run", just_logging=True, asynchronous=False)
    assert not isinstance(logging_only, metric_writer.MirroredWriter)
    assert [name for name in os.listdir(tmp_path) if name.startswith("events")]
