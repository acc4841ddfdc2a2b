"""Training-free family (MaskCLIP, SCLIP, ClearCLIP, NACLIP): last-block formulas
against plain-torch computations, the published inference rules, vocabulary
invariances, presets and settings."""
import math

import pytest
import torch
import torch.nn.functional as F

from vocabseg.engine.inference.image import infer
from vocabseg.registry import get_spec
from vocabseg.protocol import Protocol
from vocabseg.methods.trainingfree.model import TrainingFreeCLIP
from vocabseg.methods.trainingfree.presets import build
from vocabseg.text import templates
from vocabseg.vocab import Vocabulary

METHODS = ("maskclip", "sclip", "clearclip", "naclip")


@pytest.fixture(scope="module")
def models():
    out = {}
    for m in METHODS:
        torch.manual_seed(0)             # identical CLIP weights for every method
        out[m] = get_spec(f"{m}-tiny").build()
    return out


def _ln(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _gaussian_by_convolution(h, w, std):
    """NACLIP's construction: a (2h-1) x (2w-1) Gaussian window convolved over
    one-hot maps of every grid cell, class-token row / column zero."""
    ys = torch.arange(-(h - 1), h, dtype=torch.float32)
    xs = torch.arange(-(w - 1), w, dtype=torch.float32)
    window = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * std ** 2))
    onehot = torch.eye(h * w).view(h * w, 1, h, w)
    out = F.conv2d(onehot, window[None, None], padding=(h - 1, w - 1)).view(h * w, h * w)
    return F.pad(out, (1, 0, 1, 0))


def _reference_last_block(method, block, x, grid, std=5.0, residual=None):
    """The published last-block formulas written out on [B, N, C] tokens
    (``residual`` None: residual + FFN for SCLIP only)."""
    b, n, c = x.shape
    heads = block.attn.num_heads
    d = c // heads
    y = _ln(x, block.ln_1)
    qkv = y @ block.attn.in_proj_weight.t() + block.attn.in_proj_bias
    q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in qkv.split(c, dim=-1))
    scale = 1 / math.sqrt(d)
    if method == "maskclip":
        attn = torch.eye(n).expand(b, heads, n, n)
    elif method == "sclip":
        attn = torch.softmax(q @ q.transpose(2, 3) * scale, -1) + torch.softmax(k @ k.transpose(2, 3) * scale, -1)
    elif method == "clearclip":
        attn = torch.softmax(q @ q.transpose(2, 3) * scale, -1)
    else:
        attn = torch.softmax(k @ k.transpose(2, 3) * scale + _gaussian_by_convolution(*grid, std), -1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, c)
    out = out @ block.attn.out_proj.weight.t() + block.attn.out_proj.bias
    if not (method == "sclip" if residual is None else residual):
        return out
    x = x + out
    hidden = _ln(x, block.ln_2) @ block.mlp.c_fc.weight.t() + block.mlp.c_fc.bias
    hidden = F.gelu(hidden)   # tiny-vit uses GELU
    return x + hidden @ block.mlp.c_proj.weight.t() + block.mlp.c_proj.bias


@pytest.mark.parametrize("method", METHODS)
def test_last_block_matches_published_formula(models, method):
    model = models[method]
    vit = model.vit
    images = torch.randn(2, 3, 64, 96)                 # 4 x 6 grid: NACLIP's window must follow the shape
    with torch.no_grad():
        x, grid = vit.embed(images)
        x, _ = vit.forward_blocks(x, 0, vit.num_layers - 1)
        expected = _reference_last_block(method, vit.blocks[-1], x, grid)
        visual = model.clip.visual
        expected = _ln(expected, visual.ln_post) @ visual.proj
        got, got_grid = model.dense_tokens(images)
    assert got_grid == (4, 6)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_sclip_keeps_residual_and_ffn(models):
    """Zeroing the last block's FFN changes SCLIP only, and SCLIP's output is far
    from its attention branch alone (no residual, no FFN)."""
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = {m: models[m].dense_tokens(images)[0] for m in METHODS}
        sclip = models["sclip"]
        x, _ = sclip.vit.forward_blocks(sclip.vit.embed(images)[0], 0, sclip.vit.num_layers - 1)
        branch = _reference_last_block("sclip", sclip.vit.blocks[-1], x, (4, 4), residual=False)
        visual = sclip.clip.visual
        branch = _ln(branch, visual.ln_post) @ visual.proj
        saved = {m: {k: v.clone() for k, v in models[m].vit.blocks[-1].mlp.state_dict().items()} for m in METHODS}
        for m in METHODS:
            for p in models[m].vit.blocks[-1].mlp.parameters():
                p.zero_()
        after = {m: models[m].dense_tokens(images)[0] for m in METHODS}
        for m in METHODS:
            models[m].vit.blocks[-1].mlp.load_state_dict(saved[m])
    assert (before["sclip"] - after["sclip"]).abs().max() > 1e-2
    for m in ("maskclip", "clearclip", "naclip"):
        torch.testing.assert_close(before[m], after[m], atol=0, rtol=0)
    assert (before["sclip"] - branch).abs().max() > 1e-1


def _random_text(vocab, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(len(vocab.prompts), dim, generator=g), dim=-1)


@pytest.mark.parametrize("method", ["sclip", "clearclip"])
def test_one_window_covering_the_image_equals_whole_image(models, method):
    model = models[method]
    vocab = Vocabulary.parse("cat; dog, puppy; sky")
    text = _random_text(vocab)
    image = torch.rand(3, 48, 80)
    whole = Protocol(short_side=48, max_side=512, mode="whole", size_divisibility=1)
    for window in (80, 96):     # exactly the long side, and larger than the image
        slide = Protocol(short_side=48, max_side=512, mode="slide", window=window, stride=16, size_divisibility=1)
        torch.testing.assert_close(infer(model, image, text, vocab, slide), infer(model, image, text, vocab, whole),
                                   atol=0, rtol=0)


def test_padding(models):
    """ClearCLIP pads a window centred to a patch multiple and crops the map
    (equal to running the padded window and cropping); the other methods ignore
    the pixels past the last whole patch and stretch the map over the window;
    engine padding of an already aligned window changes nothing."""
    vocab = Vocabulary.parse("cat; dog; sky")
    text = _random_text(vocab)
    x = torch.randn(1, 3, 50, 70)
    clear = models["clearclip"]
    with torch.no_grad():
        padded = F.pad(x, (5, 5, 7, 7))                  # 64 x 80: ClearCLIP's split of 14 and 10 pixels
        expected = clear.classify(clear.encode_image(padded), text, vocab)[..., 7:57, 5:75]
        torch.testing.assert_close(clear.classify(clear.encode_image(x), text, vocab), expected, atol=1e-6, rtol=0)
        sclip = models["sclip"]
        changed = x.clone()
        changed[..., 48:, :] = 5.0
        changed[..., :, 64:] = -5.0
        feats = sclip.encode_image(x)
        torch.testing.assert_close(feats.features, sclip.encode_image(changed).features, atol=0, rtol=0)
        torch.testing.assert_close(feats.features, sclip.encode_image(x[..., :48, :64]).features, atol=0, rtol=0)
        cos = torch.einsum("bdhw,sd->bshw", feats.features, text)
        stretched = F.interpolate(cos, size=(50, 70), mode="bilinear", align_corners=False)
        torch.testing.assert_close(sclip.classify(feats, text, vocab), stretched, atol=1e-6, rtol=0)
    image = torch.rand(3, 64, 96)
    base = Protocol(short_side=64, max_side=512, mode="slide", window=32, stride=16, size_divisibility=1)
    aligned = Protocol(short_side=64, max_side=512, mode="slide", window=32, stride=16, size_divisibility=16)
    torch.testing.assert_close(infer(sclip, image, text, vocab, base), infer(sclip, image, text, vocab, aligned),
                               atol=0, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_vocabulary_permutation_permutes_scores(models, method):
    model = models[method]
    model.set_dataset("voc21")           # background threshold on: it must follow the background class too
    try:
        vocab = Vocabulary.parse("sky, wall; cat; dog, puppy; car", background=0)
        text = _random_text(vocab)
        order = [2, 0, 3, 1]
        permuted = Vocabulary(tuple(vocab.classes[i] for i in order), background=order.index(0))
        rows = {name: text[i] for i, name in enumerate(vocab.prompts)}
        ptext = torch.stack([rows[name] for name in permuted.prompts])
        image = torch.rand(3, 64, 80)
        a = infer(model, image, text, vocab)
        b = infer(model, image, ptext, permuted)
    finally:
        model.set_dataset(None)
    torch.testing.assert_close(b, a[order], atol=1e-6, rtol=1e-5)
    assert torch.equal(torch.tensor(order)[b.argmax(0)], a.argmax(0))


def test_class_repeated_as_its_own_synonym_keeps_the_argmax(models):
    model = models["naclip"]
    vocab = Vocabulary.parse("cat; dog; car")
    repeated = Vocabulary.parse("cat, kitty; dog; car")
    text = _random_text(vocab)
    text2 = torch.cat([text[:1], text[:1], text[1:]])      # "kitty" embeds exactly like "cat"
    image = torch.rand(3, 64, 80)
    a = infer(model, image, text, vocab)
    b = infer(model, image, text2, repeated)
    assert torch.equal(a.argmax(0), b.argmax(0))
    assert not torch.allclose(a, b)                         # the probabilities do change (softmax over synonyms)


def test_background_threshold_only_with_a_background_class(models):
    model = models["sclip"]
    scores = torch.randn(1, 4, 6, 7) * 0.05
    with_bg = Vocabulary.parse("sky, wall; cat; dog", background=0)
    without = Vocabulary.parse("sky, wall; cat; dog")
    model.logit_scale, model.prob_thd = 40.0, 0.6
    try:
        probs = torch.softmax(40.0 * scores, 1)
        probs = torch.cat([probs[:, :2].max(1, keepdim=True).values, probs[:, 2:]], 1)    # class max over synonyms
        low = probs.max(1).values < 0.6
        assert low.any() and (~low).any()
        expected_labels = torch.where(low, torch.zeros_like(low, dtype=torch.long), probs.argmax(1))
        got = model.finalize(scores.clone(), with_bg)
        assert torch.equal(got.argmax(1), expected_labels)
        torch.testing.assert_close(got[:, 1:], probs[:, 1:])
        plain = model.finalize(scores.clone(), without)
        torch.testing.assert_close(plain, probs)
        assert not torch.equal(plain.argmax(1), expected_labels)
    finally:
        model.set_dataset(None)


def test_sclip_area_filter(models):
    """Foreground classes winning at most area_thd of the foreground pixels are
    dropped (SCLIP, VOC21); their pixels fall to the next best class."""
    model = models["sclip"]
    model.set_dataset("voc21")
    try:
        vocab = Vocabulary.parse("sky; cat; dog; car", background=0)
        assert (model.logit_scale, model.prob_thd, model.area_thd) == (65.0, 0.1, 0.1)
        scores = torch.zeros(1, 4, 10, 10)
        scores[0, 1, :, :6] = 0.2            # cat wins 60 pixels
        scores[0, 2, :, 6:] = 0.2            # dog wins 40 pixels ...
        scores[0, 3, :1, 6:] = 0.3           # ... except 4 won by car (4 / 100 <= 0.1)
        scores[0, 0, :1, 6:] = 0.25          # background is the runner-up there
        got = model.finalize(scores, vocab)
    finally:
        model.set_dataset(None)
    labels = got.argmax(1)[0]
    assert (labels[:, :6] == 1).all() and (labels[1:, 6:] == 2).all() and (labels[:1, 6:] == 0).all()
    assert (got[0, 3] == 0).all()


def test_published_settings_per_dataset(models):
    sclip, naclip, clear, mask = (build(m, clip_arch="tiny-vit", clip_weights=None)
                                  for m in ("sclip", "naclip", "clearclip", "maskclip"))
    assert (sclip.protocol.short_side, sclip.protocol.window, sclip.protocol.stride, sclip.logit_scale) == \
        (336, 224, 112, 40.0)
    assert (clear.protocol.short_side, clear.protocol.window, clear.protocol.stride, clear.logit_scale) == \
        (448, 448, 224, 50.0)
    sclip.set_dataset("voc21")
    assert (sclip.logit_scale, sclip.prob_thd, sclip.area_thd) == (65.0, 0.1, 0.1)
    sclip.set_dataset("coco-stuff")
    assert sclip.protocol.short_side == 448 and sclip.prob_thd == 0.0 and sclip.area_thd is None
    naclip.set_dataset("voc21")
    assert naclip.protocol.mode == "whole" and naclip.prob_thd == 0.1 and naclip.logit_scale == 40.0
    naclip.set_dataset("cityscapes")
    assert (naclip.protocol.short_side, naclip.protocol.window, naclip.protocol.stride) == (560, 224, 112)
    clear.set_dataset("cityscapes")
    assert (clear.protocol.short_side, clear.protocol.window, clear.protocol.stride) == (448, 224, 224)
    clear.set_dataset("pc60")
    assert (clear.logit_scale, clear.prob_thd, clear.protocol.window) == (50.0, 0.15, 448)
    mask.set_dataset("cityscapes")
    assert (mask.protocol.short_side, mask.protocol.window, mask.logit_scale) == (560, 224, 40.0)
    sclip.set_dataset("pc459")               # evaluated by no paper: the defaults
    assert (sclip.protocol.short_side, sclip.logit_scale, sclip.prob_thd) == (336, 40.0, 0.0)
    with pytest.raises(ValueError, match="unknown benchmark 'pc4590'.*voc21"):
        sclip.set_dataset("pc4590")
    sclip.set_dataset(None)
    assert sclip.protocol.short_side == 336 and sclip.logit_scale == 40.0 and sclip.prob_thd == 0.0
    tiny = models["sclip"]                  # a preset's own defaults stay under a dataset's published changes
    tiny.set_dataset("voc21")
    try:
        assert tiny.protocol.window == 32 and tiny.logit_scale == 65.0
    finally:
        tiny.set_dataset(None)


def test_presets_config_and_any_vit():
    spec = get_spec("naclip-vit-b16")
    assert spec.family == "maskclip" and spec.clip == ("ViT-B-16", "openai") and not spec.test_only
    assert spec.published["voc21"] == 58.9 and spec.published["ade150"] == 17.4
    assert get_spec("sclip-vit-b16").published["cityscapes"] == 32.2
    assert get_spec("clearclip-tiny").test_only
    model = spec.build(clip_arch="tiny-vit", clip_weights=None, gaussian_std=3.0, dataset="pc60")
    assert isinstance(model, TrainingFreeCLIP) and model.method == "naclip" and model.gaussian_std == 3.0
    assert model.config == {"preset": "naclip-vit-b16", "clip_arch": "tiny-vit", "clip_weights": None,
                            "gaussian_std": 3.0, "dataset": "pc60"}
    assert model.prob_thd == 0.1 and model.protocol.short_side == 336
    model.set_dataset("voc20")
    assert model.config["dataset"] == "voc20" and model.protocol.mode == "whole"
    model.set_dataset(None)
    assert "dataset" not in model.config and model.protocol.mode == "slide"
    with pytest.raises(ValueError, match="unknown settings"):
        build("sclip", clip_arch="tiny-vit", clip_weights=None, windw=3)
    with pytest.raises(ValueError, match="open_clip ViT"):
        build("sclip", clip_arch="tiny-convnext", clip_weights=None)


def test_text_side_uses_imagenet_templates(models):
    model = models["clearclip"]
    clip, tokenizer, identity = model.text_tower()
    assert clip is model.clip and identity.startswith("tiny-vit:")
    assert len(templates(model.template_set)) == 80
    got = model.text_encoder()(Vocabulary.parse("cat; sofa, couch"))
    with torch.no_grad():
        expected = []
        for name in ("cat", "sofa", "couch"):
            feats = clip.encode_text(tokenizer([t.format(name) for t in templates("imagenet")]))
            expected.append(F.normalize(F.normalize(feats, dim=-1).mean(0), dim=-1))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-5)
    before = model.text_tower()[2]
    with torch.no_grad():
        model.clip.ln_final.bias.add_(0.1)
    model.reset_text_cache()
    try:
        assert model.text_tower()[2] != before        # loaded weights name the text cache by content
    finally:
        with torch.no_grad():
            model.clip.ln_final.bias.sub_(0.1)
        model.reset_text_cache()


def test_dino_style_position_resizing():
    """offset=0.1 samples at src = (dst + 0.5) / s - 0.5 with s = (g + 0.1) / side
    (checked with bilinear written out); the native grid is left untouched."""
    from vocabseg.backbones.vit import resize_pos_embed
    side, g = 4, (6, 5)
    pos = torch.randn(1 + side * side, 3)
    assert resize_pos_embed(pos, (side, side), offset=0.1) is pos
    got = resize_pos_embed(pos, g, mode="bilinear", offset=0.1)
    grid = pos[1:].view(side, side, 3)

    def coords(n):
        src = ((torch.arange(n, dtype=torch.float64) + 0.5) * side / (n + 0.1) - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=side - 1)
        return lo, (lo + 1).clamp(max=side - 1), (src - lo).float()
    (y0, y1, wy), (x0, x1, wx) = coords(g[0]), coords(g[1])
    top = grid[y0][:, x0] * (1 - wx)[None, :, None] + grid[y0][:, x1] * wx[None, :, None]
    bottom = grid[y1][:, x0] * (1 - wx)[None, :, None] + grid[y1][:, x1] * wx[None, :, None]
    expected = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    torch.testing.assert_close(got[0], pos[0])
    torch.testing.assert_close(got[1:], expected.reshape(-1, 3), atol=1e-6, rtol=1e-5)
    exact = resize_pos_embed(pos, g, mode="bilinear")
    assert (exact - got).abs().max() > 1e-3
