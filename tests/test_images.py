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


# --- property-based: whatever the bytes, one-line ImageError or a correct HxWx3 uint8 image ---------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP",
         b"P6\n", b"P5\n"]
LOSSLESS = ["PNG", "BMP", "TIFF", "PPM"]


def _load_or_error(path):
    """The loaded image, or None when it raised a one-line ImageError naming the file."""
    try:
        return load_image(path)
    except ImageError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return None


def _encoded(fmt, h, w, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


@PROPS
@given(head=st.sampled_from(MAGIC), body=st.binary(max_size=400))
def test_random_bytes_never_give_a_traceback(tmp_path, head, body):
    path = tmp_path / "r.img"
    path.write_bytes(head + body)
    out = _load_or_error(path)
    assert out is None or (out.dtype == torch.uint8 and out.ndim == 3 and out.shape[0] == 3 and out.numel() > 0)


@PROPS
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"]), h=st.integers(1, 40),
       w=st.integers(1, 40), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_files_are_an_error_or_the_whole_image(tmp_path, fmt, h, w, cut):
    data = _encoded(fmt, h, w)
    path = tmp_path / "t.img"
    path.write_bytes(data[:int(len(data) * cut)])
    out = _load_or_error(path)
    if out is not None:
        assert out.shape == (3, h, w) and out.dtype == torch.uint8
        if fmt in LOSSLESS:
            path.write_bytes(data)
            assert torch.equal(out, load_image(path))


@PROPS
@given(mode=st.sampled_from(["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr", "LAB", "HSV"]),
       h=st.integers(1, 12), w=st.integers(1, 12), value=st.integers(0, 255), fmt=st.sampled_from(["PNG", "TIFF", "PIL"]))
def test_every_mode_and_size_gives_hxwx3_uint8(tmp_path, mode, h, w, value, fmt):
    im = Image.new(mode, (w, h), value if mode not in ("F", "I", "I;16") else float(value) if mode == "F" else value)
    if fmt == "PIL":
        src = im
    else:
        src = tmp_path / f"m.{fmt.lower()}"
        try:
            im.save(src, format=fmt)
        except (OSError, KeyError, ValueError):
            return          # a mode this format cannot store: nothing to read back
        try:
            with Image.open(src) as back:
                back.load()
        except OSError:     # Pillow writes some (YCbCr TIFF) that it cannot read back: must be an ImageError
            assert _load_or_error(src) is None
            return
    out = load_image(src)
    assert out.shape == (3, h, w) and out.dtype == torch.uint8
    assert (out == out[:, :1, :1]).all()        # a constant image stays constant


@PROPS
@given(h=st.integers(1, 3), w=st.integers(1, 3000))
def test_thin_images_keep_their_size(tmp_path, h, w):
    Image.new("RGB", (w, h), (1, 2, 3)).save(tmp_path / "thin.png")
    out = load_image(tmp_path / "thin.png")
    assert out.shape == (3, h, w) and out[:, 0, 0].tolist() == [1, 2, 3]


def _png_header_only(w, h):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w,h", [(0, 5), (5, 0), (0, 0)])
def test_zero_size_png_is_an_error(tmp_path, w, h):
    (tmp_path / "z.png").write_bytes(_png_header_only(w, h))
    with pytest.raises(ImageError, match="cannot read image .*z.png"):
        load_image(tmp_path / "z.png")


@pytest.mark.parametrize("w,h", [(0, 4), (4, 0)])
def test_zero_size_pil_image_is_an_error(w, h):
    with pytest.raises(ImageError, match=f"the image is empty \\({w}x{h} pixels\\)"):
        load_image(Image.new("RGB", (w, h)))


@pytest.mark.parametrize("shape", [(0, 5, 3), (3, 0, 5), (5, 0)])
def test_zero_size_arrays_and_tensors_are_an_error(shape):
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros(shape, np.uint8))
    with pytest.raises(ImageError, match="empty"):
        load_image(torch.zeros(shape, dtype=torch.uint8))
