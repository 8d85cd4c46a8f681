import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from training import images


def test_range_maps_to_uint8_endpoints():
    out = images.to_uint8(np.array([-1.5, -1.0, 0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(out, [0, 0, 128, 255, 255])


def test_grid_places_each_image_in_its_cell(tmp_path):
    batch = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0, 1.0, -1.0)])
    grid = images.make_grid(batch, padding=1)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1)  # 5 images -> 3 rows x 2 cols
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 128 and grid[4, 1, 0] == 255
    assert grid[0].max() == 0  # padding
    path = tmp_path / "g.png"
    images.save_png(grid, str(path))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid[..., 0])


def _digits(count: int) -> np.ndarray:
    """The first `count` 8x8 digits in [-1, 1], [N, 8, 8, 1]."""
    return (load_digits().images[:count] / 8.0 - 1.0).astype(np.float32)[..., None]


def test_a_digits_grid_has_cells_of_64_pixels(tmp_path):
    """64 digits of 8x8 were a 73x73 TensorBoard image and a 219x219 PNG; now each cell is 64 px
    (8x nearest-neighbour) with 1 px between: 8 * 65 + 1 = 521."""
    assert [images.grid_upscale(side) for side in (8, 28, 32, 64, 256)] == [8, 2, 2, 1, 1]
    picture = images.sample_grid(_digits(64))
    assert picture.shape == (521, 521, 1)
    assert picture[1:65, 1:65].std() > 0 and picture[65].max() == 0  # a cell, then padding
    images.save_png(picture, str(tmp_path / "digits.png"))
    assert Image.open(tmp_path / "digits.png").size == (521, 521)


def test_upscaling_repeats_each_pixel_exactly():
    batch = np.random.default_rng(0).uniform(-1, 1, (5, 3, 4, 3)).astype(np.float32)
    grid = images.make_grid(batch, num_rows=2, padding=2, upscale=3)
    assert grid.shape == (2 * (9 + 2) + 2, 3 * (12 + 2) + 2, 3)
    for index, image in enumerate(images.to_uint8(batch)):
        row, col = divmod(index, 3)
        top, left = 2 + row * 11, 2 + col * 14
        cell = grid[top : top + 9, left : left + 12]
        np.testing.assert_array_equal(cell, image.repeat(3, axis=0).repeat(3, axis=1))


def test_row_labels_widen_the_picture_and_leave_the_cells_alone():
    digits = _digits(40)  # 4 rows of 10, as 4 prompts with 10 samples each
    plain = images.sample_grid(digits, num_rows=4)
    prompts = ("0", "a handwritten seven drawn in thick white strokes on black", "x" * 200, "")
    labelled = images.sample_grid(digits, num_rows=4, labels=prompts)
    width = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and 0 < width <= images.LABEL_WIDTH + 8
    np.testing.assert_array_equal(labelled[:, width:], plain)
    column = labelled[:, :width, 0]
    bands = [column[1 + row * 65 : 65 + row * 65] for row in range(4)]
    assert [band.max() > 0 for band in bands] == [True, True, True, False]  # "" draws nothing
    assert column[0].max() == 0 and column[65].max() == 0  # nothing in the padding lines
    # The class label "0" is one short word; the long prompt wraps onto more lines than it.
    lines = [np.flatnonzero(band.max(axis=1)) for band in bands[:2]]
    assert np.ptp(lines[1]) > np.ptp(lines[0])
    rgb = images.sample_grid(np.repeat(digits, 3, axis=-1), num_rows=4, labels=prompts)
    np.testing.assert_array_equal(rgb[..., 1], labelled[..., 0])
    with pytest.raises(ValueError, match="3 labels for a grid of 4 rows"):
        images.sample_grid(digits, num_rows=4, labels=prompts[:3])


def test_init_images_are_cropped_resized_and_scaled(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255  # the centred square is white
    Image.fromarray(wide).save(tmp_path / "wide.png")
    pixels = images.load_image(str(tmp_path / "wide.png"), 10, 3)
    assert pixels.shape == (10, 10, 3) and np.allclose(pixels, 1.0, atol=1e-2)
    grey = images.load_image(str(tmp_path / "wide.png"), 20, 1)
    assert grey.shape == (20, 20, 1) and grey.max() == 1.0


def test_masks_are_binarised_at_half_grey(tmp_path):
    mask = np.array([[0, 127, 128, 255]], np.uint8).repeat(4, axis=0)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    loaded = images.load_mask(str(tmp_path / "mask.png"), 4)
    np.testing.assert_array_equal(loaded[0, :, 0], [0, 0, 1, 1])
