import io

import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg.errors import ImageError
from vocabseg.images import list_images, load_image


def _rgb(h=6, w=9):
    return (np.arange(h * w * 3).reshape(h, w, 3) % 251).astype(np.uint8)


def test_paths_pil_arrays_and_tensors_agree(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "a.png")
    ref = torch.from_numpy(a).permute(2, 0, 1)
    for src in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(a), a, ref, ref.float() / 255):
        out = load_image(src)
        assert out.dtype == torch.uint8 and torch.equal(out, ref), type(src)


def test_exif_orientation_is_applied(tmp_path):
    a = _rgb(4, 10)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6      # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (3, 10, 4)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "1", "CMYK"])
def test_modes_become_rgb(tmp_path, mode):
    im = Image.fromarray(_rgb()).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        im = Image.fromarray((np.asarray(im).astype(np.uint16) * 257))
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    out = load_image(path)
    assert out.shape == (3, 6, 9) and out.dtype == torch.uint8
    if mode in ("L", "I;16"):
        grey = np.asarray(Image.fromarray(_rgb()).convert("L"))
        assert np.array_equal(out[0].numpy(), grey) and torch.equal(out[0], out[2])
    if mode == "RGBA":
        assert np.array_equal(out.permute(1, 2, 0).numpy(), _rgb())


def test_sixteen_bit_array_and_float_array():
    a16 = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    out = load_image(a16)
    assert out[0, 2, 3] == round(55000 / 257)
    f = np.full((2, 2, 3), 0.5, np.float32)
    assert (load_image(f) == 128).all()


@pytest.mark.parametrize("data,msg", [(b"", "cannot read image"), (b"GIF89a broken", "cannot read image"),
                                      (None, "not found")])
def test_bad_files_are_one_line_errors(tmp_path, data, msg):
    path = tmp_path / "bad.jpg"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(ImageError, match=msg) as e:
        load_image(path)
    assert "\n" not in str(e.value) and "bad.jpg" in str(e.value)


def test_truncated_jpeg_is_an_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:200])
    with pytest.raises(ImageError, match="t.jpg"):
        load_image(tmp_path / "t.jpg")


def test_bad_arrays_and_types():
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((2, 2), np.nan))
    with pytest.raises(ImageError, match="cannot use a int"):
        load_image(3)


def test_list_images_expands_folders(tmp_path):
    for n in ("b.jpg", "a.PNG", "notes.txt"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images([tmp_path, tmp_path / "missing.jpg"])] == ["a.PNG", "b.jpg", "missing.jpg"]
