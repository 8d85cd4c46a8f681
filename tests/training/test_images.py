import numpy as np
from PIL import Image

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
    images.save_png(grid, str(path), upscale=4)
    assert Image.open(path).size == (grid.shape[1] * 4, grid.shape[0] * 4)


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
