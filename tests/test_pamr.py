"""PAMR (vocabseg.layers.pamr) against a per-pixel loop written from the paper's formula."""
import math

import pytest
import torch
import torch.nn.functional as F

import vocabseg
from vocabseg import registry
from vocabseg.engine import inference
from vocabseg.engine.inference.refine import parse_refine
from vocabseg.errors import UserError
from vocabseg.layers.pamr import pamr
from vocabseg.protocol import preprocess


def loop_pamr(image, mask, iters, dilations):
    """Plain Python PAMR on one image [3, H, W] and a mask already at its size [K, H, W]."""
    _, h, w = image.shape
    at = lambda t, y, x: t[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]   # replicate border
    weights = {}
    for y in range(h):
        for x in range(w):
            samples, nbrs = [], []
            for d in dilations:
                for dy in (-d, 0, d):
                    for dx in (-d, 0, d):
                        samples.append(at(image, y + dy, x + dx))
                        if (dy, dx) != (0, 0):
                            nbrs.append((y + dy, x + dx))
            s = torch.stack(samples).double()                        # [9·n_d, 3]
            mean = s.mean(0)
            std = (((s - mean) ** 2).sum(0) / (len(samples) - 1)).sqrt()
            logits = [float((-(image[:, y, x].double() - at(image, ny, nx).double()).abs()
                             / (1e-8 + 0.1 * std)).mean()) for ny, nx in nbrs]
            z = sum(math.exp(v) for v in logits)
            weights[y, x] = [(math.exp(v) / z, n) for v, n in zip(logits, nbrs)]
    m = mask.double()
    for _ in range(iters):
        new = torch.zeros_like(m)
        for (y, x), ws in weights.items():
            for a, (ny, nx) in ws:
                new[:, y, x] += a * at(m, ny, nx)
        m = new
    return m


@pytest.mark.parametrize("dilations", [(1,), (1, 2), (2, 3)])
def test_pamr_matches_the_per_pixel_formula(dilations):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 7, 9, generator=g)
    mask = torch.rand(1, 4, 7, 9, generator=g)
    out = pamr(image, mask, iters=3, dilations=dilations)
    ref = loop_pamr(image[0], mask[0], 3, dilations)
    assert out.shape == (1, 4, 7, 9)
    assert torch.allclose(out[0].double(), ref, atol=1e-6)


def test_pamr_on_a_two_colour_image_keeps_labels_inside_their_region():
    """Left half black, right half white; a mask that is one-hot by half plus noise on the
    edge: the colour edge stops the diffusion (a neighbour across it weighs ~exp(-10/σ))."""
    image = torch.zeros(1, 3, 6, 8)
    image[..., 4:] = 1.0
    mask = torch.zeros(1, 2, 6, 8)
    mask[:, 0, :, :4] = 1.0
    mask[:, 1, :, 4:] = 1.0
    out = pamr(image, mask, iters=5, dilations=(1,))
    assert torch.allclose(out, mask, atol=1e-6)
    # a constant image: every neighbour weighs 1/8, so one step averages the 8 (replicated) neighbours
    flat = torch.zeros(1, 3, 3, 3)
    m = torch.arange(9.0).view(1, 1, 3, 3)
    one = pamr(flat, m, iters=1, dilations=(1,))
    assert one[0, 0, 1, 1].item() == pytest.approx((36 - 4) / 8)          # all but the centre
    assert one[0, 0, 0, 0].item() == pytest.approx((0 + 0 + 1 + 0 + 1 + 3 + 3 + 4) / 8)


def test_pamr_resizes_the_mask_with_align_corners_and_ignores_image_normalisation():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 12, 16, generator=g)
    mask = torch.rand(1, 3, 3, 4, generator=g)
    zero = pamr(image, mask, iters=0)
    assert torch.allclose(zero, torch.nn.functional.interpolate(mask, size=(12, 16), mode="bilinear",
                                                                 align_corners=True))
    scale, shift = torch.tensor([2.0, 0.5, 4.0]).view(1, 3, 1, 1), torch.tensor([-1.0, 3.0, 0.2]).view(1, 3, 1, 1)
    a = pamr(image, mask, iters=4, dilations=(1, 2))
    b = pamr(image * scale + shift, mask, iters=4, dilations=(1, 2))
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="dilations"):
        pamr(image, mask, dilations=())


def test_refine_pamr_through_the_segmenter_and_batches():
    """``refine="pamr"``: PAMR (10, (8, 16)) on the model's original-size scores with its resized
    input resized back, then finalize; the same through predict_batch; the cache is kept."""
    torch.manual_seed(0)
    model = registry.build("naclip-tiny")
    img = (torch.rand(3, 30, 44) * 255).byte()
    plain = vocabseg.Segmenter(model)
    refined = vocabseg.Segmenter(model, refine="pamr")
    got = refined(img, "cat; dog, puppy; tree", return_scores=True)
    vocab = vocabseg.Vocabulary.resolve("cat; dog, puppy; tree")
    text = plain.text(vocab)
    plain.set_image(img)
    raw = inference.score_map(model, plain.features, text, vocab).raw(0, 30)
    x = F.interpolate(preprocess(img.float() / 255, model.protocol), size=(30, 44), mode="bilinear",
                      align_corners=False)
    want = model.finalize(pamr(x, raw, 10, (8, 16)), vocab)[0]
    assert torch.allclose(got.scores, want, atol=1e-5)
    assert not torch.allclose(got.scores, plain.predict(vocab, return_scores=True).scores, atol=1e-3)
    batch = refined.predict_batch([img, img.flip(-1)], vocab, return_scores=True)
    assert torch.allclose(batch[0].scores, got.scores, atol=1e-5)
    assert parse_refine("pamr:50:1,2,4,8,12,24") == (50, (1, 2, 4, 8, 12, 24))
    for bad in ("pamr:0:1", "pamr:3", "crf", "pamr:2:a"):
        with pytest.raises(UserError, match="unknown refinement"):
            parse_refine(bad)
    with pytest.raises(UserError, match="test-time augmentation"):
        refined.predict(vocab, tta=True)


def test_evaluate_with_refine_scores_the_refined_labels(tmp_path):
    from vocabseg.data import get_dataset
    from vocabseg.engine.evaluation.evaluate import evaluate
    from vocabseg.engine.evaluation.metrics import ConfusionMatrix, semantic_metrics
    from vocabseg.testing.synthetic import write_benchmark
    write_benchmark("voc21", tmp_path, num_images=2)
    ds = get_dataset("voc21", root=tmp_path)
    torch.manual_seed(0)
    model = registry.build("naclip-tiny")
    result = evaluate(model, ds, vocab=ds.vocabulary, batch_size=2, workers=0, progress=False, refine="pamr")
    seg = vocabseg.Segmenter(model, refine="pamr")
    conf = ConfusionMatrix(ds.num_classes, ds.ignore_index)
    for i in range(2):
        conf.update(seg(ds[i]["image"], ds.vocabulary).labels, ds[i]["sem_seg"])
    assert result["refine"] == "pamr"
    assert semantic_metrics(conf.mat, ds.vocabulary.names)["miou_gt"] == pytest.approx(result["miou_gt"])


def test_demo_refuses_a_bad_refine_spec_before_loading(capsys):
    from vocabseg.cli import main
    assert main(["demo", "--model", "naclip-tiny", "--refine", "pamr:ten:8"]) == 2
    err = capsys.readouterr().err
    assert "unknown refinement 'pamr:ten:8'" in err and "Traceback" not in err
