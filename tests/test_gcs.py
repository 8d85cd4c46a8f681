"""gs:// paths in this process against a Cloud Storage server on localhost (tests/gcs_server.py):
the path helpers, a remote workdir's probe, image folders, statistics, TensorBoard events, the
compilation cache, weights directories and a pipeline export, all read and written through gcsfs
(what etils' epath uses for gs:// with EPATH_USE_TF=false). tests/test_gcs_runs.py runs main.py
on a gs:// workdir.
"""

import jax
import numpy as np
import pytest
import tokenizers

import errors
import paths
from evaluation.statistics import FeatureStatistics
from input_pipeline import folder
from models import autoencoder_weights, unet_weights
from models.autoencoder import AutoencoderConfig, build_autoencoder
from models.functional import functionalize
from models.pipeline_dir import read_pipeline_dir
from models.text_encoders import tokenizer
from models.unet import UNet, UNetConfig
from tests import gcs_server
from tests.gcs_server import BUCKET, object_names
from training import checkpointing, compilation_cache, metric_writer, pipeline_export


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(server URL, the bucket): a fresh server, this process's environment pointed at it."""
    with gcs_server.serve(tmp_path_factory.mktemp("gcs_server") / "server.log") as served:
        yield served


def test_paths_write_read_walk_and_mirror_through_the_bucket(gcs, tmp_path):
    _, bucket = gcs
    root = f"gs://{BUCKET}/helpers"
    paths.write_text(f"{root}/a/b/note.txt", "hello")
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    paths.save_safetensors(tensors, f"{root}/w.safetensors", metadata={"format": "pt"})
    assert bucket.blob("helpers/a/b/note.txt").download_as_bytes() == b"hello"
    np.testing.assert_array_equal(
        paths.read_safetensors(f"{root}/w.safetensors")["w"], tensors["w"]
    )
    assert paths.readable(f"{root}/a/b/note.txt").read() == b"hello"
    with paths.local_file(f"{root}/a/b/note.txt") as name:
        assert not paths.is_remote(name) and paths.as_path(name).read_text() == "hello"
    assert [(d, sorted(f)) for d, _, f in paths.walk(root)] == [
        ("", ["w.safetensors"]),
        ("a", []),
        ("a/b", ["note.txt"]),
    ]
    (tmp_path / "events").write_bytes(b"123")
    assert paths.mirror_tree(str(tmp_path), f"{root}/mirror", {}) == 1
    assert bucket.blob("helpers/mirror/events").download_as_bytes() == b"123"


def test_a_remote_workdir_is_probed(gcs):
    _, bucket = gcs
    checkpointing.validate_workdir(f"gs://{BUCKET}/probed")
    assert object_names(bucket, "probed") == []  # the probe is deleted
    with pytest.raises(errors.ConfigError, match=r"--workdir='gs://no-such-bucket/run' cannot"):
        checkpointing.validate_workdir("gs://no-such-bucket/run")


def test_folder_statistics_and_events_in_the_bucket_match_local_ones(gcs, tmp_path):
    _, bucket = gcs
    files = gcs_server.digit_pngs(64)
    gcs_server.upload_and_write(files, bucket, "folder", tmp_path / "folder")
    remote = folder.scan_folder(f"gs://{BUCKET}/folder", num_classes=10)
    local = folder.scan_folder(str(tmp_path / "folder"), num_classes=10)
    assert remote.root == f"gs://{BUCKET}/folder" and remote.files == local.files
    np.testing.assert_array_equal(remote.labels, local.labels)
    images = [folder.FolderImages(i, 8, 1, cache_bytes=1 << 20).cache for i in (remote, local)]
    np.testing.assert_array_equal(*images)

    stats = FeatureStatistics.empty(3).update(np.random.default_rng(0).normal(size=(5, 3)))
    stats.save(f"gs://{BUCKET}/stats/s.npz")
    np.testing.assert_array_equal(
        FeatureStatistics.load(f"gs://{BUCKET}/stats/s.npz").sum, stats.sum
    )

    writer = metric_writer.create_writer(f"gs://{BUCKET}/tb", just_logging=False, asynchronous=True)
    writer.write_scalars(1, {"loss": 0.5})
    writer.close()
    assert [n for n in object_names(bucket, "tb/") if n.startswith("tb/events.out.tfevents")]


def _random_params(build) -> dict:
    """Random float32 values in the network's parameter shapes (no slow eager init)."""
    rng = np.random.default_rng(0)
    shapes = functionalize(build).abstract_params
    return jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), shapes)


def test_a_remote_compilation_cache_counts_its_entries(gcs):
    _, bucket = gcs
    for name in ("a-cache", "b-cache"):
        bucket.blob(f"jax_cache/{name}").upload_from_string(b"")
    options = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    options += ("jax_persistent_cache_min_entry_size_bytes",)
    previous = {name: getattr(jax.config, name) for name in options}
    try:  # (JAX itself reads and writes a gs:// cache through epath: seen working by hand)
        assert compilation_cache.enable_compilation_cache(f"gs://{BUCKET}/jax_cache") == 2
        assert compilation_cache.enable_compilation_cache(f"gs://{BUCKET}/no_cache") == 0
    finally:  # the rest of the session must not write a cache
        for name, value in previous.items():
            jax.config.update(name, value)


def test_weights_directories_round_trip_through_the_bucket(gcs):
    _, bucket = gcs
    config = AutoencoderConfig(
        in_channels=1,
        out_channels=1,
        latent_channels=2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
    )
    params = _random_params(build_autoencoder(config))
    directory = f"gs://{BUCKET}/vae"
    autoencoder_weights.save_autoencoder(directory, config, params)
    assert object_names(bucket, "vae/") == [
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    config_again, params_again = autoencoder_weights.load_autoencoder(directory)
    assert config_again == config
    for a, b in zip(jax.tree.leaves(params_again), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    vocab = {"[UNK]": 0, "a": 1, "digit": 2}
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    bucket.blob("tok/tokenizer.json").upload_from_string(words.to_str())
    read = tokenizer.read_tokenizer(paths.as_path(f"gs://{BUCKET}/tok"))  # via a local copy
    assert read.encode("a digit seven").ids == [1, 2, 0]


def test_a_pipeline_exports_from_and_into_the_bucket(gcs):
    _, bucket = gcs
    vae = AutoencoderConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    autoencoder_weights.save_autoencoder(
        f"gs://{BUCKET}/parts/vae", vae, _random_params(build_autoencoder(vae))
    )
    paths.write_text(f"gs://{BUCKET}/parts/text_encoder/config.json", "{}")
    paths.save_safetensors(
        {"w": np.zeros(2, np.float32)}, f"gs://{BUCKET}/parts/text_encoder/model.safetensors"
    )
    paths.write_text(f"gs://{BUCKET}/parts/tokenizer/tokenizer.json", "{}")
    from tests.models.sd_unet_checkpoint import SD1_TINY  # noqa: PLC0415 (imports torch)

    unet = UNetConfig.from_diffusers(SD1_TINY)
    params = _random_params(lambda rngs: UNet(unet, rngs=rngs))
    out = f"gs://{BUCKET}/exported"
    parts = {
        f"{name}_dir": f"gs://{BUCKET}/parts/{name}"
        for name in ("vae", "text_encoder", "tokenizer")
    }
    pipeline_export.write_pipeline(
        out,
        unet_config=unet,
        unet_params=params,
        **parts,
        scheduler=pipeline_export.scheduler_config(
            schedule="scaled_linear",
            num_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            prediction="eps",
            spacing="leading",
            steps_offset=1,
            set_alpha_to_one=False,
            clip_sample=False,
        ),
    )
    assert read_pipeline_dir(out).root == paths.as_path(out)
    for part in ("vae", "text_encoder", "tokenizer"):  # copied byte for byte
        for name in object_names(bucket, f"parts/{part}/"):
            copy = name.replace("parts/", "exported/", 1)
            assert bucket.blob(copy).download_as_bytes() == bucket.blob(name).download_as_bytes()
    _, read = unet_weights.load_unet(f"{out}/unet")
    for a, b in zip(jax.tree.leaves(read), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        pipeline_export.write_pipeline(
            out, unet_config=unet, unet_params=params, **parts, scheduler={}
        )
