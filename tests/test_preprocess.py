import numpy as np
import pytest
from PIL import Image

from tasks.evaluation.preprocess import (ImageError, PreprocessSpec, letterbox, list_images, load_rgb, to_letterbox,
                              to_original)


@pytest.mark.parametrize("w,h", [(640, 480), (333, 500), (320, 320), (1000, 200)])
def test_letterbox_round_trip_within_one_pixel(w, h):
    img = np.zeros((h, w, 3), np.uint8)
    x, lb = letterbox(img, (320, 320), PreprocessSpec())
    assert x.shape == (3, 320, 320) and x.dtype == np.float32
    boxes = np.array([[10.0, 20.0, w - 5.0, h - 7.0], [0, 0, w, h], [w / 3, h / 4, w / 2, h / 2]])
    back = to_original(to_letterbox(boxes, lb), lb)
    assert np.abs(back - boxes).max() <= 1.0


def test_letterbox_pads_centred_with_114_and_scales():
    img = np.full((100, 200, 3), 255, np.uint8)  # wide image: padding top and bottom
    x, lb = letterbox(img, (64, 64), PreprocessSpec())
    assert lb.pad_x == 0 and lb.pad_y == 16
    assert np.isclose(x[:, 0, 0], 114 / 255).all() and np.isclose(x[:, 63, 0], 114 / 255).all()
    assert np.isclose(x[:, 32, 32], 1.0).all()
    x2, lb2 = letterbox(img, (64, 64), PreprocessSpec(center=False, pad_value=0))
    assert lb2.pad_y == 0 and np.isclose(x2[:, 63, 0], 0).all()


def test_channel_order_bgr():
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = 255  # red
    rgb, _ = letterbox(img, (8, 8), PreprocessSpec())
    bgr, _ = letterbox(img, (8, 8), PreprocessSpec(channel_order="BGR"))
    assert rgb[0].mean() == 1.0 and bgr[2].mean() == 1.0 and bgr[0].mean() == 0.0


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA"])
def test_non_rgb_images_become_rgb(tmp_path, mode):
    im = Image.new("RGB", (20, 10), (200, 100, 50)).convert(mode)
    p = tmp_path / f"x.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
    im.save(p)
    a = load_rgb(p)
    assert a.shape == (10, 20, 3) and a.dtype == np.uint8


def test_grayscale_image_letterboxes(tmp_path):
    p = tmp_path / "g.jpg"
    Image.new("L", (40, 30), 128).save(p)
    x, _ = letterbox(load_rgb(p), (32, 32), PreprocessSpec())
    assert x.shape == (3, 32, 32)
    assert abs(float(x[:, 16, 16].mean()) - 128 / 255) < 0.02


def test_unreadable_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "zero.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageError, match="zero.jpg"):
        load_rgb(bad)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_rgb(tmp_path / "nope.jpg")


def test_empty_image_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_images(tmp_path)
