"""Every odd input image: a correct conversion or one clear error."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from smartedit.image_io import MAX_PIXELS, ImageInputError, load_image, load_mask, to_unit_tensor


def _save(tmp_path, image, name, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_rgba_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 3), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 128))
    out = np.asarray(load_image(_save(tmp_path, rgba, "a.png")))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]
    assert np.abs(out[0, 1].astype(int) - [127, 127, 255]).max() <= 1  # half-transparent blue over white


def test_grayscale_and_cmyk(tmp_path):
    gray = load_image(_save(tmp_path, Image.new("L", (5, 4), 77), "g.png"))
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [77, 77, 77]
    cmyk = load_image(_save(tmp_path, Image.new("CMYK", (5, 4), (0, 255, 255, 0)), "c.jpg", quality=100))
    r, g, b = np.asarray(cmyk)[2, 2].tolist()
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_png_rescaled(tmp_path):
    arr = np.full((4, 6), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    arr[1, 1] = 32896  # ~ 128 in 8 bit
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_image(path))
    assert out[0, 0].tolist() == [0, 0, 0] and out[2, 2].tolist() == [255, 255, 255]
    assert abs(int(out[1, 1, 0]) - 128) <= 1
    u16 = np.asarray(load_image(np.full((3, 3, 3), 65535, dtype=np.uint16)))
    assert u16.max() == 255


def test_exif_rotation_applied(tmp_path):
    image = Image.new("RGB", (6, 2), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (2, 6)


@pytest.mark.parametrize("content, msg", [
    (b"", "zero-byte"),
    (b"not an image at all", "not an image"),
])
def test_unreadable_files(tmp_path, content, msg):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageInputError, match=msg):
        load_image(path)


def test_truncated_and_missing(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageInputError, match="truncated"):
        load_image(path)
    with pytest.raises(ImageInputError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageInputError, match="folder"):
        load_image(tmp_path)


def test_absurdly_large_rejected_before_decoding(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 16
    path = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(path)  # tiny file, huge canvas
    with pytest.raises(ImageInputError, match="downscale"):
        load_image(path)


def test_arrays_and_tensors():
    with pytest.raises(ImageInputError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 2.0, dtype=np.float32))
    with pytest.raises(ImageInputError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, dtype=np.float32))
    with pytest.raises(ImageInputError, match="shape"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    t = load_image(torch.ones(3, 5, 7))
    assert t.size == (7, 5) and np.asarray(t).min() == 255
    unit = to_unit_tensor(Image.new("RGB", (2, 2), (255, 0, 51)))
    assert unit[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_masks():
    m = Image.new("L", (8, 6), 0)
    m.paste(255, (0, 0, 4, 6))
    t = load_mask(m, (8, 6))
    assert t.shape == (1, 6, 8) and t[0, :, :4].min() == 1 and t[0, :, 4:].max() == 0
    with pytest.raises(ImageInputError, match="8x6 but the image is 16x12"):
        load_mask(m, (16, 12))
    rgb = load_mask(Image.new("RGB", (8, 6), (255, 255, 255)), (8, 6))
    assert rgb.min() == 1
