import pytest

import schema
from configs import cifar_ddpm, digits_ddpm
from errors import ConfigError
from input_pipeline import pipeline


def test_shipped_configs_are_valid():
    for module in (digits_ddpm, cifar_ddpm):
        schema.build(pipeline.DataConfig, module.get_config().data, "data")
    digits = pipeline.DataConfig(name="digits")
    cifar = pipeline.DataConfig(name="cifar10", channels=3, image_size=32)
    assert pipeline.num_classes(digits) == pipeline.num_classes(cifar) == 10
    labelled = dict(name="tfds", tfds_name="imagenet2012", channels=3, image_size=256)
    assert pipeline.num_classes(pipeline.DataConfig(**labelled)) == 0
    imagenet = pipeline.DataConfig(**labelled, label_key="label", num_classes=1000)
    assert pipeline.num_classes(imagenet) == 1000


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"name": "mnist"}, r"data\.name='mnist' is not known; allowed: digits, cifar10"),
        ({"image_size": 12}, r"data\.image_size=12 .*use 8 or a multiple"),
        ({"channels": 2}, r"data\.channels=2 does not match digits, which has 1 .*or 3"),
        ({"shuffle_buffer": 0}, r"data\.shuffle_buffer=0"),
        ({"label_key": "label"}, r"data\.label_key='label' is for data.name='tfds'"),
        (
            {"name": "tfds", "tfds_name": "x", "label_key": "label"},
            r"data\.num_classes=0 must be >= 2 with data.label_key='label'",
        ),
        (
            {"name": "tfds", "tfds_name": "x", "num_classes": 10},
            r"data\.num_classes=10 is for labelled tfds data",
        ),
    ],
)
def test_bad_fields_are_named(changes, match):
    with pytest.raises(ValueError, match=match):
        pipeline.DataConfig(**changes).validate()


def test_dispatch_yields_digits_batches():
    it = pipeline.create_train_iterator(
        pipeline.DataConfig(), per_process_batch_size=4, seed=0, process_index=0, process_count=1
    )
    assert next(it)["image"].shape == (4, 8, 8, 1)


def test_a_missing_tfds_dataset_is_a_config_error_naming_the_data_dir(tmp_path):
    cifar = schema.build(pipeline.DataConfig, cifar_ddpm.get_config().data, "data")
    cifar = pipeline.DataConfig(**{**cifar.__dict__, "data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="data.data_dir=") as error:
        pipeline.require_data(cifar)
    assert str(tmp_path) in str(error.value) and "download_and_prepare" in str(error.value)
    unknown = pipeline.DataConfig(**{**cifar.__dict__, "name": "tfds", "tfds_name": "no_such_ds"})
    with pytest.raises(ConfigError, match="no_such_ds"):
        pipeline.require_data(unknown)
    digits = schema.build(pipeline.DataConfig, digits_ddpm.get_config().data, "data")
    pipeline.require_data(digits)  # shipped with scikit-learn: nothing to check on disk
