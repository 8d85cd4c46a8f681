"""The run's metric writer: clu's default (log lines + TensorBoard events in the workdir), with
the events of a remote workdir ("gs://...") written locally and mirrored there.

clu writes events through tf.io.gfile, which reaches Cloud Storage only at its public endpoint.
Staging them locally and copying each new or grown file through `paths` (etils' epath) sends them
wherever every other file of the run goes, a local Cloud Storage server included. Events appear
in the bucket on each flush / close and, while the run writes, at most every `mirror_every_secs`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping
from typing import Any

from absl import logging
from clu import metric_writers

import paths

MIRROR_EVERY_SECS = 60.0  # while metrics are written: how stale the remote events may get


def create_writer(
    workdir: str, just_logging: bool, asynchronous: bool
) -> metric_writers.MetricWriter:
    """clu's `create_default_writer(workdir, ...)`; for a remote workdir, a MirroredWriter over
    one writing to a local staging directory (`just_logging`: log lines only, nothing staged)."""
    if just_logging or not paths.is_remote(workdir):
        return metric_writers.create_default_writer(
            workdir, just_logging=just_logging, asynchronous=asynchronous
        )
    staging = tempfile.mkdtemp(prefix="tensorboard_")
    writer = metric_writers.create_default_writer(staging, asynchronous=asynchronous)
    return MirroredWriter(writer, staging, workdir)


class MirroredWriter(metric_writers.MetricWriter):
    """Forwards to `writer` (events under `staging`), then copies new or changed files from
    `staging` to `remote_dir`: on flush and close, and on writes every `mirror_every_secs`."""

    def __init__(
        self,
        writer: metric_writers.MetricWriter,
        staging: str,
        remote_dir: str,
        mirror_every_secs: float = MIRROR_EVERY_SECS,
    ):
        self.writer, self.staging, self.remote_dir = writer, staging, remote_dir
        self.mirror_every_secs = mirror_every_secs
        self._sent: dict[str, tuple[int, int]] = {}  # staged file -> (size, mtime) last copied
        self._last_mirror = time.monotonic()
        # The staging directory goes with the writer (or at exit) when close() is never called.
        weakref.finalize(self, shutil.rmtree, staging, ignore_errors=True)

    def write_summaries(self, step: int, values: Mapping[str, Any], metadata=None):
        self.writer.write_summaries(step, values, metadata)
        self._maybe_mirror()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        self.writer.write_scalars(step, scalars)
        self._maybe_mirror()

    def write_images(self, step: int, images: Mapping[str, Any]):
        self.writer.write_images(step, images)
        self._maybe_mirror()

    def write_videos(self, step: int, videos: Mapping[str, Any]):
        self.writer.write_videos(step, videos)
        self._maybe_mirror()

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
        self.writer.write_audios(step, audios, sample_rate=sample_rate)
        self._maybe_mirror()

    def write_texts(self, step: int, texts: Mapping[str, str]):
        self.writer.write_texts(step, texts)
        self._maybe_mirror()

    def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None):
        self.writer.write_histograms(step, arrays, num_buckets)
        self._maybe_mirror()

    def write_hparams(self, hparams: Mapping[str, Any]):
        self.writer.write_hparams(hparams)
        self._maybe_mirror()

    def flush(self):
        """Flushes the events to the staging directory and copies what changed."""
        self.writer.flush()
        self.mirror()

    def close(self):
        """Closes the writer, copies the final events and removes the staging directory."""
        self.writer.close()
        self.mirror()
        shutil.rmtree(self.staging, ignore_errors=True)

    def mirror(self) -> int:
        """Copies the staged files that are new or changed since the last copy; how many."""
        copied = paths.mirror_tree(self.staging, self.remote_dir, self._sent)
        self._last_mirror = time.monotonic()
        if copied:
            logging.debug("Copied %d TensorBoard file(s) to %s", copied, self.remote_dir)
        return copied

    def _maybe_mirror(self) -> None:
        if time.monotonic() - self._last_mirror >= self.mirror_every_secs:
            self.flush()
