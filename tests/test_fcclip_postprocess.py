"""FC-CLIP's ensemble, void rescaling and post-processings against hand computations."""
import numpy as np
import pytest
import torch

from vocabseg.methods.fcclip import postprocess as post
from vocabseg.methods.fcclip.model import thing_flags
from vocabseg.methods.fcclip.presets import PRESETS
from vocabseg.vocab import Vocabulary


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_ensemble_and_void_rescaling_match_a_float64_computation():
    g = torch.Generator().manual_seed(0)
    q, c = 5, 4
    a_in = torch.randn(2, q, c + 1, generator=g) * 3
    a_out = torch.randn(2, q, c + 1, generator=g) * 3
    seen = torch.tensor([True, False, True, False])
    got = post.ensemble_logits(a_in, a_out, seen, alpha=0.4, beta=0.8).softmax(-1)
    i, o = a_in.double().numpy(), a_out.double().numpy()
    p_in, p_out = softmax(i[..., :c]), softmax(o[..., :c])
    expo = np.where(seen.numpy(), 0.4, 0.8)
    geo = p_in ** (1 - expo) * p_out ** expo
    geo = geo / geo.sum(-1, keepdims=True)
    void = softmax(i)[..., c:]
    want = np.concatenate([geo * (1 - void), void], -1)
    want = (want + 1e-8) / (want + 1e-8).sum(-1, keepdims=True)
    assert np.allclose(got.numpy(), want, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(2, q))


def test_ensemble_survives_underflow_where_the_published_formula_gives_nan():
    a_in = torch.tensor([[[0.0, 200.0, 0.0]]])
    a_out = torch.tensor([[[200.0, 0.0, 0.0]]])
    got = post.ensemble_logits(a_in, a_out, torch.tensor([True, False])).softmax(-1)
    assert torch.isfinite(got).all()
    # log-space: class 0 -> 0.6 * -200 + 0.4 * 0 = -120, class 1 -> 0.2 * 0 + 0.8 * -200 = -160
    void = float(a_in.softmax(-1)[0, 0, 2])
    want = torch.tensor([1.0, float(np.exp(-40.0)), 0.0]) * torch.tensor([1 - void, 1 - void, 1.0])
    want[2] = void
    want = (want + 1e-8) / (want + 1e-8).sum()
    assert torch.allclose(got[0, 0], want, atol=1e-7)


def test_semantic_inference_is_a_probability_weighted_mask_sum():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, generator=g)
    masks = torch.randn(3, 2, 5, generator=g)
    got = post.semantic_inference(logits, masks)
    p = logits.softmax(-1)[:, :3]
    want = torch.zeros(3, 2, 5)
    for qq in range(3):
        for cc in range(3):
            want[cc] += p[qq, cc] * masks[qq].sigmoid()
    assert torch.allclose(got, want, atol=1e-6)


def one_hot_logits(classes, num_classes, strength=10.0):
    """Query logits peaked on ``classes`` (num_classes = void)."""
    x = torch.zeros(len(classes), num_classes + 1)
    x[torch.arange(len(classes)), torch.tensor(classes)] = strength
    return x


def test_panoptic_overlap_stuff_merging_and_void():
    h, w = 6, 8
    big = -10.0
    m = torch.full((6, h, w), big)
    m[0, :, :4] = 10.0            # q0 thing class 0, left half
    m[1, :, 4:] = 10.0            # q1 stuff class 2, right half, top ...
    m[1, 3:, 4:] = big
    m[2, 3:, 4:] = 10.0           # q2 stuff class 2 again, bottom right -> merged into q1's segment
    m[3] = 10.0                   # q3 void query everywhere -> dropped
    m[4, :3, :2] = 9.0            # q4 thing class 1, inside q0 region with a lower score -> loses its pixels
    m[5, 0, 7] = 10.0             # q5 thing 1, one pixel inside q1 with lower score -> dropped (overlap)
    logits = one_hot_logits([0, 2, 2, 3, 1, 1], 3)
    logits[3] = torch.tensor([0.0, 0.0, 0.0, 10.0])          # void
    logits[4] = torch.tensor([0.0, 3.0, 0.0, 0.0])           # weaker
    logits[5] = torch.tensor([0.0, 3.0, 0.0, 0.0])
    isthing = [True, True, False]
    pan, segs = post.panoptic_inference(logits, m, isthing)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segs] == [(1, 0, True), (2, 2, False)]
    want = torch.zeros(h, w, dtype=torch.int32)
    want[:, :4] = 1
    want[:, 4:] = 2
    assert torch.equal(pan, want)
    assert [s["area"] for s in segs] == [24, 24]
    assert segs[0]["score"] == pytest.approx(float(logits[0].softmax(-1)[0]))
    # as things, the two class-2 queries stay separate segments
    pan2, segs2 = post.panoptic_inference(logits, m, [True, True, True])
    assert [s["category_id"] for s in segs2] == [0, 2, 2] and int(pan2.max()) == 3
    # an object threshold above every score leaves only void
    pan3, segs3 = post.panoptic_inference(logits, m, isthing, object_threshold=0.9999)
    assert segs3 == [] and int(pan3.abs().sum()) == 0


def test_instances_topk_things_only_and_mask_scores():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 4, generator=g) * 2
    masks = torch.randn(4, 3, 3, generator=g) * 3
    out = post.instance_inference(logits, masks, isthing=[True, False, True], topk=5)
    probs = logits.softmax(-1)[:, :3]
    flat = [(float(probs[qq, c]), qq, c) for qq in range(4) for c in range(3)]
    top = sorted(flat, reverse=True)[:5]
    expect = []
    for p, qq, c in top:
        if c == 1:
            continue
        mask = masks[qq] > 0
        ms = float((masks[qq].sigmoid() * mask).sum() / (mask.sum() + 1e-6))
        expect.append((p * ms, c, mask))
    expect.sort(key=lambda t: -t[0])
    assert out["labels"].tolist() == [c for _, c, _ in expect]
    assert torch.allclose(out["scores"], torch.tensor([s for s, _, _ in expect]), atol=1e-6)
    for got, (_, _, mask) in zip(out["masks"], expect):
        assert torch.equal(got, mask)


def test_resize_masks_crops_then_resizes():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6)
    out = post.resize_masks(x, (2, 3), (4, 6))
    want = torch.nn.functional.interpolate(x[None, :, :2, :3], size=(4, 6), mode="bilinear", align_corners=False)[0]
    assert torch.equal(out, want)


def test_thing_flags():
    v = Vocabulary.parse("a; b; c")
    assert thing_flags(v) == [True, True, True]
    assert thing_flags(v, [0, 2]) == [True, False, True]
    assert thing_flags(v, torch.tensor([False, True, False])) == [False, True, False]
    with pytest.raises(ValueError, match="2 thing flags for a vocabulary of 3"):
        thing_flags(v, [True, False])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        thing_flags(v, [5])
    # a benchmark's own names: its panoptic thing / stuff split
    coco = thing_flags(Vocabulary.from_dataset("coco-panoptic:fcclip"))
    assert sum(coco) == 80 and coco[0] and not coco[-1]
    city = Vocabulary.from_dataset("cityscapes")
    flags = thing_flags(city)
    assert [n for n, t in zip(city.names, flags) if t] == ["person", "rider", "car", "truck", "bus", "train",
                                                          "motorcycle", "bicycle"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PRESETS["fcclip-tiny"].build().eval()


def test_model_logits_equal_an_independent_computation(tiny):
    torch.manual_seed(4)
    feats = tiny.encode_image(torch.randn(1, 3, 64, 64))
    vocab = Vocabulary.parse("person, man; sky; xyzzy, plugh")
    text = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    got = tiny.class_logits(feats, text, vocab).softmax(-1)
    void = torch.nn.functional.normalize(tiny.void_embedding.weight, dim=-1)
    cls = torch.cat([text, void])
    def per_class(sim):
        return torch.stack([sim[..., :2].max(-1).values, sim[..., 2], sim[..., 3:5].max(-1).values, sim[..., 5]], -1)
    e_in = torch.nn.functional.normalize(feats["class_emb"], dim=-1) @ cls.T
    e_out = torch.nn.functional.normalize(feats["clip_emb"], dim=-1) @ cls.T
    a_in = per_class(tiny.decoder.logit_scale.exp().clamp(max=100) * e_in)
    a_out = per_class(tiny.clip.logit_scale.exp().clamp(max=100) * e_out)
    seen = torch.tensor([True, True, False])             # "person" and "sky" are COCO-panoptic synonyms
    assert torch.equal(tiny.seen(vocab), seen)
    want = post.ensemble_logits(a_in, a_out, seen).softmax(-1)
    assert torch.allclose(got, want, atol=1e-6)


def test_a_class_listed_twice_under_different_synonyms_changes_nothing(tiny):
    torch.manual_seed(5)
    feats = tiny.encode_image(torch.randn(1, 3, 64, 96))
    a = Vocabulary.parse("cat; road; blorp")
    b = Vocabulary.parse("cat, feline; road; blorp, blorp2")
    t = torch.nn.functional.normalize(torch.randn(3, 32), dim=-1)
    tb = torch.stack([t[0], t[0], t[1], t[2], t[2]])     # the added synonyms embed like the first ones
    assert torch.allclose(tiny.classify(feats, t, a), tiny.classify(feats, tb, b), atol=1e-6)
    pa = tiny.panoptic(feats, t, a, (64, 90), (80, 100))
    pb = tiny.panoptic(feats, tb, b, (64, 90), (80, 100))
    assert torch.equal(pa["pan_seg"], pb["pan_seg"]) and pa["segments"] == pb["segments"]


def test_panoptic_and_instance_exports_read_back(tmp_path):
    """Hand-built predictions on the COCO-panoptic vocabulary -> PanopticResult PNG + JSON
    written as a COCO-panoptic split and read by the dataset reader; instances' RLE
    decoded by pycocotools."""
    import json

    from PIL import Image
    from pycocotools import mask as mask_util

    from vocabseg.data import get_dataset
    from vocabseg.results import InstanceResult, PanopticResult

    vocab = Vocabulary.from_dataset("coco-panoptic:fcclip")
    flags = thing_flags(vocab)
    h, w = 12, 16
    m = torch.full((4, h, w), -10.0)
    m[0, :, :8] = 10.0                 # person (thing)
    m[1, :6, 8:] = 10.0                # sky (stuff) ...
    m[2, 6:, 8:] = 10.0                # ... twice: one segment
    m[3, :3, :3] = 9.0                 # dog inside the person, weaker: dropped
    sky, dog = vocab.names.index("sky"), vocab.names.index("dog")
    logits = one_hot_logits([0, sky, sky, dog], len(vocab))
    pan, segs = post.panoptic_inference(logits, m, flags)
    assert [(s["category_id"], s["isthing"], s["area"]) for s in segs] == [(0, True, 96), (sky, False, 96)]
    result = PanopticResult(pan, segs, vocab, torch.zeros(3, h, w, dtype=torch.uint8), "fcclip-test")
    paths = result.save(tmp_path / "out", "000000000139")
    record = json.loads(paths["summary"].read_text())
    root = tmp_path / "ds"
    (root / "coco/val2017").mkdir(parents=True)
    (root / "coco/panoptic_val2017").mkdir(parents=True)
    (root / "coco/annotations").mkdir(parents=True)
    Image.new("RGB", (w, h)).save(root / "coco/val2017/000000000139.jpg")
    paths["panoptic"].rename(root / "coco/panoptic_val2017/000000000139.png")
    cats = [{"id": i, "name": n, "isthing": int(t)} for i, (n, t) in enumerate(zip(vocab.names, flags))]
    ann = {"image_id": 139, "file_name": "000000000139.png", "segments_info": record["segments_info"]}
    (root / "coco/annotations/panoptic_val2017.json").write_text(json.dumps(
        {"images": [{"id": 139, "file_name": "000000000139.jpg", "height": h, "width": w}],
         "annotations": [ann], "categories": cats}))
    item = get_dataset("coco-panoptic", split="val", root=root)[0]
    assert torch.equal(item["pan_seg"], pan.long())
    assert [(s["id"], s["category_id"], s["isthing"]) for s in item["segments_info"]] == \
        [(s["id"], s["category_id"], s["isthing"]) for s in segs]

    inst = post.instance_inference(logits, m, flags, topk=10)
    res = InstanceResult(inst["masks"], inst["labels"], inst["scores"], vocab)
    out = json.loads(res.save(tmp_path / "out", "inst")["instances"].read_text())["instances"]
    assert len(out) == len(inst["labels"]) and {o["category_id"] for o in out} <= {i for i, t in enumerate(flags) if t}
    for mask, rec in zip(inst["masks"], out):
        rle = dict(rec["segmentation"], counts=rec["segmentation"]["counts"].encode())
        assert np.array_equal(mask_util.decode(rle).astype(bool), mask.numpy())
