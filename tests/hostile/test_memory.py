"""Issue 19, item 3 and the memory cases found after it: full-size scores are built a
band of rows at a time (equal to one band up to the last bit), and images above the pixel limit
are refused in one line, from the file header, before the model loads."""
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from toy import PointwiseModel, fake_text
from vocabseg import limits
from vocabseg.api import Segmenter
from vocabseg.cli import main
from vocabseg.engine import inference
from vocabseg.engine.inference import image as engine_image
from vocabseg.engine.inference.tta import tta_map
from vocabseg.errors import ImageError, UserError, VocabularyError
from vocabseg.layers import mask_semantic
from vocabseg.registry import all_specs, get_spec
from vocabseg.vocab import Vocabulary

TINY = [n for n, s in all_specs(include_test=True).items() if s.test_only]
VOCAB = "sky; road, street; cat; dog, puppy; grass"


def _array(h, w, seed=0):
    g = np.random.default_rng(seed)
    small = (g.random((h // 8 + 1, w // 8 + 1, 3)) * 255).astype(np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))[:h, :w]


def _png_header(path, width, height):
    """A PNG whose header says width x height and whose pixel data is cut short:
    opening it is cheap, decoding it fails."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _bands(monkeypatch, small: bool):
    """Small: several bands of full-size rows and of upsampled masks; else one each."""
    monkeypatch.setattr(engine_image, "BAND_FLOATS", 3000 if small else 1 << 40)
    monkeypatch.setattr(mask_semantic, "CHUNK_FLOATS", 500 if small else 1 << 40)


def _agree(banded, whole):
    """Banded against one-band results (``semantic`` tuples or results): scores and
    confidence equal to float rounding, labels equal wherever the one-band winner leads by
    more than that rounding."""
    s_b, s_w = banded.scores, whole.scores
    assert torch.allclose(s_b, s_w, rtol=1e-5, atol=1e-6)
    assert torch.allclose(banded.confidence, whole.confidence, rtol=1e-5, atol=1e-6)
    top2 = s_w.topk(2, dim=0).values if s_w.shape[0] > 1 else None
    clear = torch.ones_like(whole.labels, dtype=torch.bool) if top2 is None else (top2[0] - top2[1]) > 1e-5
    assert clear.float().mean() > 0.9 and torch.equal(banded.labels[clear], whole.labels[clear])


@pytest.fixture(scope="module")
def segmenters():
    torch.manual_seed(0)
    return {name: Segmenter(get_spec(name).build(), max_pixels=None) for name in TINY}


def _semantic(seg, image, vocab, monkeypatch, small, **kw):
    _bands(monkeypatch, small)
    r = seg(image, vocab, return_scores=True, **kw)
    plain = seg(image, vocab, **kw)
    assert torch.equal(plain.labels, r.labels) and torch.equal(plain.confidence, r.confidence)
    return r


@pytest.mark.parametrize("name", TINY)
def test_banded_scores_equal_one_band_on_every_tiny_preset(name, segmenters, monkeypatch):
    seg = segmenters[name]
    image = _array(45, 70)
    banded = _semantic(seg, image, VOCAB, monkeypatch, True)
    whole = _semantic(seg, image, VOCAB, monkeypatch, False)
    assert banded.labels.shape == (45, 70) and banded.scores.shape == (5, 45, 70)
    _agree(banded, whole)


def test_sclip_area_filter_counts_the_whole_image_across_bands(monkeypatch):
    """SCLIP's VOC-21 area filter needs per-class areas over the whole image: summed over bands."""
    torch.manual_seed(0)
    model = get_spec("sclip-tiny").build()
    model.set_dataset("voc21")
    seg = Segmenter(model, max_pixels=None)
    image = _array(40, 64, seed=2)
    banded = _semantic(seg, image, "voc21:tf", monkeypatch, True)
    whole = _semantic(seg, image, "voc21:tf", monkeypatch, False)
    _agree(banded, whole)
    with torch.no_grad():                                     # and both are the straightforward full-map finalize
        feats = inference.encode(model, torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        vocab = Vocabulary.resolve("voc21:tf")
        text = seg.text(vocab)
        m = inference.score_map(model, feats, text, vocab)
        raw = torch.cat([m.raw(r, r + 1) for r in range(40)], 2)
        assert torch.allclose(model.finalize(raw, vocab)[0], whole.scores, atol=1e-6)


@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_fcclip_panoptic_and_instance_on_a_banded_engine(task, segmenters, monkeypatch):
    seg = segmenters["fcclip-tiny"]
    _bands(monkeypatch, True)
    a = seg(_array(45, 70), VOCAB, task=task)
    _bands(monkeypatch, False)
    b = seg(_array(45, 70), VOCAB, task=task)
    if task == "panoptic":
        assert torch.equal(a.pan_seg, b.pan_seg) and a.segments == b.segments
    else:
        assert torch.equal(a.masks, b.masks) and torch.equal(a.scores, b.scores)


def test_tta_banded_equals_one_band(segmenters, monkeypatch):
    seg = segmenters["san-tiny"]
    image = torch.from_numpy(_array(40, 56)).permute(2, 0, 1).float() / 255
    vocab = Vocabulary.parse(VOCAB)
    text = seg.text(vocab)
    out = []
    for small in (True, False):
        _bands(monkeypatch, small)
        out.append(inference.semantic(tta_map(seg.model, image, text, vocab, sizes=(32, 48)), keep_scores=True))
    names = ("labels", "confidence", "scores")
    _agree(*(SimpleNamespace(**dict(zip(names, o))) for o in out))


def test_batch_of_very_different_sizes_equals_one_by_one(segmenters, monkeypatch):
    seg = segmenters["maskclip-tiny"]
    _bands(monkeypatch, True)
    images = [_array(12, 300), _array(300, 12, seed=1), _array(64, 64, seed=2)]
    batch = seg.predict_batch(images, VOCAB, batch_size=1)
    for im, r in zip(images, batch):
        one = seg(im, VOCAB)
        assert r.labels.shape == im.shape[:2]
        assert torch.equal(r.labels, one.labels) and torch.equal(r.confidence, one.confidence)


# sclip-tiny / naclip-tiny: a 7 x 2048 resize of a 1 x 300 image has windows shorter than a patch, where the
# published code fails; they are padded to one patch
@pytest.mark.parametrize("name", TINY)
def test_one_by_n_and_n_by_one_images_through_every_task(name, segmenters):
    seg = segmenters[name]
    for shape in [(1, 300, 3), (300, 1, 3), (1, 1, 3)]:
        for task in seg.tasks:
            r = seg(_array(*shape[:2]), "sky; road", task=task)
            out = r.labels if task == "semantic" else (r.pan_seg if task == "panoptic" else r.masks[0])
            assert tuple(out.shape[-2:]) == shape[:2]


def test_header_of_a_144_megapixel_png_is_refused_without_decoding(tmp_path):
    path = _png_header(tmp_path / "big.png", 12000, 12000)
    seg = Segmenter(PointwiseModel())
    with pytest.raises(ImageError) as e:
        seg(path, "sky; road")
    assert str(e.value) == (f"{path} is 12000x12000 pixels (144.0 MP), above the limit of 40,000,000 pixels; "
                            f"downscale it or raise the limit (--max-pixels / max_pixels=)")


def test_cli_refuses_an_oversized_image_before_the_model_loads(tmp_path, capsys):
    path = _png_header(tmp_path / "big.png", 12000, 12000)
    rc = main(["segment", str(path), "--model", "no-such-model", "--labels", "a; b", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 2
    assert err[0].startswith(f"vocabseg segment: error: {path} is 12000x12000 pixels (144.0 MP), above the limit")
    assert err[1] == "vocabseg segment: none of the 1 images can be segmented; nothing written"
    assert not any((tmp_path / "o").iterdir()) if (tmp_path / "o").exists() else True


def test_cli_max_pixels_flag_sets_the_limit(tmp_path, capsys):
    Image.fromarray(_array(40, 50)).save(tmp_path / "a.png")
    rc = main(["segment", str(tmp_path / "a.png"), "--model", "no-such-model", "--labels", "a; b",
               "--max-pixels", "1999"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "a.png is 50x40 pixels (0.0 MP), above the limit of 1,999 pixels" in err.splitlines()[0]
    assert err.splitlines()[1:] == ["vocabseg segment: none of the 1 images can be segmented; nothing written"]


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "abc", "", "inf", "nan"])
def test_cli_max_pixels_zero_negative_fraction_or_text_is_one_line(value, tmp_path, capsys):
    Image.fromarray(_array(8, 8)).save(tmp_path / "a.png")
    rc = main(["segment", str(tmp_path / "a.png"), "--labels", "a; b", "--max-pixels", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("vocabseg segment: error: --max-pixels must be a whole number of pixels")


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "40000000", float("nan"), float("inf")])
def test_api_max_pixels_zero_negative_fraction_bool_or_text_is_refused(value):
    with pytest.raises(UserError, match=r"^max_pixels must be a whole number of pixels, at least 1 "
                                        r"\(or None for no limit\), got "):
        Segmenter(PointwiseModel(), max_pixels=value)


def test_api_max_pixels_whole_float_and_none_are_accepted():
    assert Segmenter(PointwiseModel(), max_pixels=40e6).max_pixels == 40_000_000
    assert Segmenter(PointwiseModel(), max_pixels=None).max_pixels is None


def test_image_exactly_at_the_limit_is_segmented_one_pixel_more_is_refused(monkeypatch):
    seg = Segmenter(PointwiseModel(), max_pixels=50 * 40)
    monkeypatch.setattr(seg, "text", lambda vocab, templates=None: fake_text(vocab))
    r = seg(_array(40, 50), "sky; road")
    assert r.labels.shape == (40, 50)
    with pytest.raises(ImageError, match=r"^the image is 51x40 pixels \(0.0 MP\), above the limit of 2,000 pixels"):
        seg(_array(40, 51), "sky; road")


def test_arrays_pil_images_tensors_and_batches_are_checked_too(monkeypatch):
    seg = Segmenter(PointwiseModel(), max_pixels=100)
    monkeypatch.setattr(seg, "text", lambda vocab, templates=None: fake_text(vocab))
    for image in (_array(11, 10), Image.fromarray(_array(11, 10)), torch.zeros(3, 11, 10),
                  torch.zeros(11, 10, 3, dtype=torch.uint8)):
        with pytest.raises(ImageError, match="is 10x11 pixels"):
            seg(image, "sky; road")
    with pytest.raises(ImageError, match="is 10x11 pixels"):
        seg.predict_batch([_array(5, 5), _array(11, 10)], "sky; road")
    assert seg(_array(10, 10), "sky; road").labels.shape == (10, 10)


def test_an_image_pillow_calls_a_decompression_bomb_is_refused_in_one_line(tmp_path):
    path = _png_header(tmp_path / "bomb.png", 20000, 20000)       # 400 MP: Pillow refuses to open it
    with pytest.raises(ImageError, match=r"bomb.png is 400000000 pixels \(400.0 MP\), above the limit"):
        Segmenter(PointwiseModel())(path, "sky")


def test_the_demo_fits_uploads_with_the_shared_pixel_function():
    from vocabseg.demo import callbacks
    assert callbacks.fit_pixels is limits.fit_pixels
    assert limits.fit_pixels(12000, 12000, 1 << 20) == (1024, 1024)


def test_many_classes_use_one_row_bands_not_a_full_score_map(monkeypatch):
    """10 000 classes on a 300-pixel-wide image: the engine asks for bands of a few rows,
    never the [C, H, W] map (H x W x C x 4 bytes = 7 GB at 640 x 300)."""
    seg = Segmenter(PointwiseModel(), max_pixels=None)
    monkeypatch.setattr(seg, "text", lambda vocab, templates=None: fake_text(vocab))
    asked = []
    real = engine_image.ScoreMap.rows
    monkeypatch.setattr(engine_image.ScoreMap, "rows", lambda self, r0, r1: asked.append(r1 - r0) or real(self, r0, r1))
    vocab = Vocabulary.parse("; ".join(f"c{i}" for i in range(10000)))
    r = seg(_array(60, 300), vocab)
    assert r.labels.shape == (60, 300) and r.scores is None
    band = engine_image.BAND_FLOATS // (10000 * 300)
    assert band < 60 and asked == [band] * (60 // band) + ([60 % band] if 60 % band else [])


def test_panoptic_merge_reads_the_masks_row_by_row_as_from_the_full_stack():
    """FC-CLIP's panoptic merge on a big image: the Q upsampled masks are read a row at a
    time (twice) instead of held at full size; same segments as from the full stack."""
    from vocabseg.methods.fcclip import postprocess as post
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 4, generator=g) * 3
    full = torch.randn(6, 30, 41, generator=g) * 3
    asked = []
    rows = lambda r0, r1: asked.append(r1 - r0) or full[:, r0:r1]   # noqa: E731
    a = post.panoptic_inference(logits, rows, [True, False, True], object_threshold=0.1, size=(30, 41))
    b = post.panoptic_inference(logits, full, [True, False, True], object_threshold=0.1)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and len(a[1]) > 0
    assert set(asked) == {1} and len(asked) == 2 * 30
