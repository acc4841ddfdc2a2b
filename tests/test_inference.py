import dataclasses

import pytest
import torch

from vocabseg.engine.inference.image import encode, infer, scores
from vocabseg.protocol import pad_to_multiple, window_boxes
from vocabseg.protocol import Protocol
from vocabseg.vocab import Vocabulary

from toy import PointwiseModel, fake_text

VOCAB = Vocabulary.parse("sky; tree, bush; road; car")


def _image(h=45, w=70, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("h,w,win,stride", [(10, 10, 4, 2), (7, 13, 5, 3), (3, 3, 5, 2), (224, 336, 224, 112)])
def test_window_boxes_cover_the_image_and_stay_inside(h, w, win, stride):
    cover = torch.zeros(h, w, dtype=torch.int32)
    for y0, x0, y1, x1 in window_boxes(h, w, win, stride):
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert y1 - y0 == min(win, h) and x1 - x0 == min(win, w)
        cover[y0:y1, x0:x1] += 1
    assert (cover > 0).all()


def test_slide_with_one_covering_window_equals_whole():
    model = PointwiseModel()
    text = fake_text(VOCAB)
    whole = infer(model, _image(), text, VOCAB)
    slide = dataclasses.replace(model.protocol, mode="slide", window=400, stride=100)
    assert torch.equal(infer(model, _image(), text, VOCAB, slide), whole)


@pytest.mark.parametrize("window,stride", [(16, 8), (32, 16), (24, 24)])
def test_overlapping_windows_average_to_the_pointwise_scores(window, stride):
    """For a pointwise model every window sees the same per-pixel scores, so the
    average over overlapping windows must equal the whole-image scores."""
    model = PointwiseModel()
    text = fake_text(VOCAB)
    whole = infer(model, _image(), text, VOCAB)
    slide = dataclasses.replace(model.protocol, mode="slide", window=window, stride=stride)
    assert torch.allclose(infer(model, _image(), text, VOCAB, slide), whole, atol=1e-6)


def test_padding_does_not_change_scores_inside_the_image():
    model = PointwiseModel()
    text = fake_text(VOCAB)
    base = infer(model, _image(), text, VOCAB, dataclasses.replace(model.protocol, size_divisibility=1))
    for div, value in [(16, 0.0), (32, 5.0), (64, -3.0)]:
        p = dataclasses.replace(model.protocol, size_divisibility=div, pad_value=value)
        assert torch.allclose(infer(model, _image(), text, VOCAB, p), base, atol=1e-6)


def test_pad_to_multiple_shapes_and_values():
    x = torch.ones(1, 3, 5, 7)
    y = pad_to_multiple(x, 4, value=2.0)
    assert y.shape == (1, 3, 8, 8)
    assert torch.equal(y[..., :5, :7], x) and (y[..., 5:, :] == 2).all() and (y[..., :, 7:] == 2).all()


def test_scores_come_back_at_the_original_size_and_rescore_without_encoding():
    model = PointwiseModel()
    img = _image(45, 70)
    feats = encode(model, img)
    assert model.encoded == 1
    s1 = scores(model, feats, fake_text(VOCAB), VOCAB)
    assert s1.shape == (len(VOCAB), 45, 70)
    other = Vocabulary.parse("water; grass")
    s2 = scores(model, feats, fake_text(other), other)
    assert s2.shape == (2, 45, 70) and model.encoded == 1


def test_permuting_the_vocabulary_permutes_the_scores():
    model = PointwiseModel()
    img = _image()
    perm = [2, 0, 3, 1]
    permuted = Vocabulary(tuple(VOCAB.classes[i] for i in perm))
    a = infer(model, img, fake_text(VOCAB), VOCAB)
    b = infer(model, img, fake_text(permuted), permuted)
    assert torch.allclose(b, a[perm], atol=1e-6)
    new_id = torch.tensor([perm.index(c) for c in range(len(perm))])   # old class id -> new id
    assert torch.equal(b.argmax(0), new_id[a.argmax(0)])


def test_resized_size_rules():
    from vocabseg.data.transforms import shortest_edge_size
    from vocabseg.protocol import resized_size
    assert resized_size(375, 500, 336, 2048) == (336, 448)                  # mmcv imrescale
    assert resized_size(375, 500, 640, 2560, "detectron2") == shortest_edge_size(375, 500, 640, 2560) == (640, 853)
    assert resized_size(100, 3000, 640, 2560, "detectron2") == (85, 2560)   # long side capped
    assert resized_size(100, 3000, 336, 2048) == (68, 2048)


def test_resize_backends_reproduce_pil_and_opencv_on_uint8():
    import cv2
    import numpy as np
    from PIL import Image
    from vocabseg.protocol import resize_short_side
    img = (torch.rand(3, 45, 70, generator=torch.Generator().manual_seed(1)) * 255).round() / 255
    u8 = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    for short in (30, 90):                                    # down- and up-sampling
        pil = resize_short_side(img[None], short, 1000, "pil")[0]
        h, w = pil.shape[-2:]
        ref = np.asarray(Image.fromarray(u8).resize((w, h), Image.BILINEAR))
        assert torch.equal((pil * 255).round().to(torch.uint8), torch.from_numpy(ref.copy()).permute(2, 0, 1))
        cv = resize_short_side(img[None], short, 1000, "cv2")[0]
        ref = cv2.resize(u8, (cv.shape[-1], cv.shape[-2]), interpolation=cv2.INTER_LINEAR)
        assert torch.equal((cv * 255).round().to(torch.uint8), torch.from_numpy(ref).permute(2, 0, 1))
        plain = resize_short_side(img[None], short, 1000, "torch")[0]
        if short > 45:    # upsampling: OpenCV's bilinear is the same formula, up to uint8 rounding
            assert (plain - cv).abs().max() <= 1.01 / 255
    with pytest.raises(ValueError, match="unknown resize backend"):
        resize_short_side(img[None], 30, 1000, "magic")
