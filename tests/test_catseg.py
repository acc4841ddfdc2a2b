"""CAT-Seg: the published architecture numbers, its formulas against independent
computations (linear attention, shifted-window mask, top-k class truncation,
sliding-window folding, the dense last block), inference through ``Segmenter``,
the converter on a state dict with the published names and shapes, a checkpoint
round trip and one training step."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vocabseg import speed
from vocabseg.api import Segmenter, load_model
from vocabseg.checkpoint import save_checkpoint
from vocabseg.methods.catseg import convert as conv
from vocabseg.methods.catseg.aggregator import Aggregator, linear_attention, shifted_window_mask
from vocabseg.methods.catseg.model import TEMPLATE, dense_block, split_qkv
from vocabseg.methods.catseg.sliding import fold_views, slide_views
from vocabseg.registry import get_spec, load_checkpoint
from vocabseg.vocab import Vocabulary


pytestmark = pytest.mark.usefixtures("one_thread")     # conftest.py


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = get_spec("catseg-tiny").build().eval()
    with torch.no_grad():       # nothing trivially zero: padding tokens and biases perturbed
        for name, p in model.named_parameters():
            if p.ndim <= 1 or "padding" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model


def image(h=70, w=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)


# --- published numbers -------------------------------------------------------------
def test_published_architecture_numbers():
    with torch.device("meta"):
        b16, l14 = get_spec("catseg-vit-b16").build(), get_spec("catseg-vit-l14").build()
    for m, size, taps, width, dim in ((b16, 384, (3, 7), 768, 512), (l14, 336, (7, 15), 1024, 768)):
        assert (m.clip_size, m.guidance_layers, m.kernel, m.stride, m.out_res) == (size, taps, 384, 256, 640)
        assert m.template_set == ("A photo of a {} in the scene",) and m.sliding
        assert (m.test_pooling, m.train_pooling) == ((1, 1), (2, 2))
        assert (m.protocol.short_side, m.protocol.max_side, m.protocol.resize) == (640, 2560, "pil")
        a = m.aggregator
        assert a.conv1.weight.shape == (128, 1, 7, 7) and len(a.layers) == 2 and a.pad_len == 256
        assert a.guidance_projection[0].weight.shape == (128, dim, 3, 3)
        assert a.text_guidance_projection[0].weight.shape == (128, dim)
        assert [p[0].weight.shape for p in a.decoder_guidance_projection] == [(32, 256, 3, 3), (16, 128, 3, 3)]
        blk = a.layers[0].swin_block
        assert (blk.block_1.window, blk.block_1.shift, blk.block_2.shift) == (12, 0, 6)
        assert blk.block_2.attn_mask.shape == (4, 144, 144) and blk.block_1.attn_mask is None
        assert a.layers[1].attention.padding_tokens.shape == (1, 1, 128)
        assert a.decoder1.up.weight.shape == (128, 96, 2, 2) and a.head.weight.shape == (1, 32, 3, 3)
        assert m.upsample1.weight.shape == (width, 256, 2, 2) and m.upsample2.weight.shape == (width, 128, 4, 4)
        trainable = {n for n, p in m.clip.named_parameters() if p.requires_grad}
        assert trainable and all(n.endswith(("q_proj_weight", "v_proj_weight")) for n in trainable)
        assert len(trainable) == 2 * (len(m.clip.visual.transformer.resblocks) + len(m.clip.transformer.resblocks))
    total = sum(p.numel() for p in b16.parameters())
    assert abs(total - 154e6) / 154e6 < 0.02, total     # spec: about 154M (B) and 434M (L)
    total = sum(p.numel() for p in l14.parameters())
    assert abs(total - 434e6) / 434e6 < 0.02, total


# --- formulas ----------------------------------------------------------------------
def test_linear_attention_against_the_formula():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 2, 4).unbind(0)
    out = linear_attention(q, k, v)
    phi = lambda x: F.elu(x) + 1    # noqa: E731
    want = torch.zeros_like(out)
    for n in range(2):
        for h in range(2):
            for i in range(5):
                num = sum(phi(q[n, i, h]) @ phi(k[n, j, h]) * v[n, j, h] for j in range(5))
                den = sum(phi(q[n, i, h]) @ phi(k[n, j, h]) for j in range(5))
                want[n, i, h] = num / (den + 1e-6)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_shifted_window_mask_by_brute_force():
    size, window, shift = 8, 4, 2
    mask = shifted_window_mask((size, size), window, shift)
    # after rolling by -shift, pixel (y, x) came from ((y + shift) % H, ...): windows that wrap are masked apart
    def region(c):
        return 0 if c < size - window else 1 if c < size - shift else 2
    n = 0
    for wy in range(size // window):
        for wx in range(size // window):
            cells = [(wy * window + i, wx * window + j) for i in range(window) for j in range(window)]
            for a, (ya, xa) in enumerate(cells):
                for b, (yb, xb) in enumerate(cells):
                    same = region(ya) == region(yb) and region(xa) == region(xb)
                    assert mask[n, a, b] == (0.0 if same else -100.0)
            n += 1
    assert n == mask.shape[0] == 4


def test_dense_block_and_split_attention():
    torch.manual_seed(0)
    model = get_spec("catseg-tiny").build()
    block = model.clip.visual.transformer.resblocks[-1]
    x = torch.randn(2, 5, 48)
    attn = block.attn
    w = torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight])
    v = F.linear(block.ln_1(x), w, attn.in_proj_bias)[..., 96:]
    v = F.linear(v, attn.out_proj.weight, attn.out_proj.bias) + x[:, :1]
    torch.testing.assert_close(dense_block(block, x), v + block.mlp(block.ln_2(v)), atol=1e-6, rtol=0)
    # splitting q / k / v leaves a block's output unchanged
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    y = torch.randn(2, 5, 16)
    before = mha(y, y, y, need_weights=False)[0]
    split_qkv(mha)
    assert mha.in_proj_weight is None and mha.q_proj_weight.shape == (16, 16)
    assert [n for n, _ in mha.named_parameters()][:4] == ["q_proj_weight", "k_proj_weight", "v_proj_weight",
                                                          "in_proj_bias"]
    torch.testing.assert_close(mha(y, y, y, need_weights=False)[0], before, atol=1e-6, rtol=0)


def test_sliding_views_fold_like_unfold_and_fold():
    torch.manual_seed(0)
    img = torch.randn(1, 3, 50, 70)
    views = slide_views(img, 160, 96, 64)
    assert views.shape == (1, 5, 3, 96, 96)
    big = F.interpolate(img, size=(160, 160), mode="bilinear", align_corners=False)
    unfold = nn.Unfold(96, stride=64)
    crops = unfold(big[0]).T.reshape(4, 3, 96, 96)
    torch.testing.assert_close(views[0, :4], crops, atol=0, rtol=0)
    prob = torch.rand(1, 5, 3, 96, 96)
    fold = nn.Fold((160, 160), 96, stride=64)
    crops_mean = fold(prob[0, :4].flatten(1).T) / fold(unfold(torch.ones(1, 160, 160)))
    whole = F.interpolate(prob[:, 4], size=(160, 160), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fold_views(prob, 160, 64), (crops_mean + whole) / 2, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="do not tile"):
        slide_views(img, 160, 96, 50)


def small_aggregator(pad_len):
    torch.manual_seed(0)
    agg = Aggregator(text_dim=16, appearance_dim=16, hidden=32, text_proj=8, appearance_proj=8, decoder_dims=(32, 16),
                     decoder_guidance_dims=(16, 16), decoder_guidance_proj=(8, 8), num_layers=1, heads=2,
                     size=(4, 4), window=2, pad_len=pad_len).eval()
    with torch.no_grad():
        for p in agg.parameters():
            if p.ndim <= 1 or p.shape[:2] == (1, 1):
                p.add_(0.1 * torch.randn_like(p))
    return agg


def test_top_k_class_truncation():
    agg = small_aggregator(pad_len=4)
    torch.manual_seed(1)
    dense = torch.randn(2, 16, 4, 4)
    text = F.normalize(torch.randn(2, 7, 1, 16), dim=-1)
    guide = agg.project_guidance(dense, [torch.randn(2, 16, 8, 8), torch.randn(2, 16, 16, 16)])
    with torch.no_grad():
        out = agg(dense, text, guide)
    assert out.shape == (2, 7, 16, 16)
    cos = torch.einsum("bchw,btc->bthw", F.normalize(dense, dim=1), text[:, :, 0])
    for b in range(2):
        keep = sorted(cos[b].flatten(1).max(1).values.topk(4).indices.tolist())
        dropped = [t for t in range(7) if t not in keep]
        assert (out[b, dropped] == -100).all() and not (out[b, keep] == -100).any()
        # the kept classes are aggregated as if they were the whole vocabulary (exactly pad_len: no padding)
        one = {"appearance": guide["appearance"][b:b + 1], "decoder": [g[b:b + 1] for g in guide["decoder"]]}
        with torch.no_grad():
            alone = agg(dense[b:b + 1], text[b:b + 1, keep], one)
        torch.testing.assert_close(out[b, keep], alone[0], atol=1e-5, rtol=1e-5)


def test_class_padding_tokens_take_part():
    agg = small_aggregator(pad_len=6)
    torch.manual_seed(2)
    dense, text = torch.randn(1, 16, 4, 4), F.normalize(torch.randn(1, 3, 1, 16), dim=-1)
    guide = agg.project_guidance(dense, [torch.randn(1, 16, 8, 8), torch.randn(1, 16, 16, 16)])
    with torch.no_grad():
        out = agg(dense, text, guide)
        agg.layers[0].attention.padding_tokens.add_(torch.randn(1, 1, 32))   # not a constant: LayerNorm removes that
        changed = agg(dense, text, guide)
    assert out.shape == (1, 3, 16, 16) and not torch.allclose(out, changed)


# --- inference -----------------------------------------------------------------------
def test_segmenter_shapes_and_cached_image_features(tiny, monkeypatch):
    seg = Segmenter(tiny)
    r = seg(image(), "sky; tree, bush; road", return_scores=True)
    assert r.labels.shape == (70, 90) and r.scores.shape == (3, 70, 90)
    assert 0 <= float(r.scores.min()) and float(r.scores.max()) <= 1
    calls = []
    orig = tiny.encode_image
    monkeypatch.setattr(tiny, "encode_image", lambda x: calls.append(1) or orig(x))
    r2 = seg.predict("cat; dog; sky; grass", return_scores=True)
    assert calls == [] and r2.scores.shape == (4, 70, 90)
    # the features hold the five views (4 crops + global); a class is scored by its first synonym only
    f = seg.features.features[0]
    assert f["dense"].shape[:2] == (1, 5)
    text = tiny.text_encoder()(Vocabulary.parse("tree; sky"))
    a = tiny.classify_at(f, text, Vocabulary.parse("tree; sky"), size=(70, 90))
    b = tiny.classify_at(f, tiny.text_encoder()(Vocabulary.parse("tree, bush; sky, heaven")),
                         Vocabulary.parse("tree, bush; sky, heaven"), size=(70, 90))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert tiny.text_encoder().templates == [TEMPLATE]


def test_sliding_probabilities_against_an_independent_fold(tiny):
    x = torch.randn(1, 3, 60, 80)
    vocab = Vocabulary.parse("a; b; c")
    text = tiny.text_encoder()(vocab)
    with torch.no_grad():
        f = tiny.encode_image(x)
        logits = tiny.view_logits(f, text)                       # [1, 5, 3, 32, 32]
        out = tiny.classify_at(f, text, vocab, size=(45, 50))
    prob = F.interpolate(logits[0], size=(96, 96), mode="bilinear", align_corners=False).sigmoid()
    unfold, fold = nn.Unfold(96, stride=64), nn.Fold((160, 160), 96, stride=64)
    crops = fold(prob[:4].flatten(1).T) / fold(unfold(torch.ones(1, 160, 160)))
    whole = F.interpolate(prob[4:], size=(160, 160), mode="bilinear", align_corners=False)[0]
    want = F.interpolate(((crops + whole) / 2)[None], size=(45, 50), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)


def test_whole_image_mode_and_set_dataset():
    model = get_spec("catseg-tiny").build(sliding=False).eval()
    assert model.protocol.size_divisibility == 32 and model.protocol.mode == "whole"
    model.set_dataset("ade150")
    assert model.protocol.size_divisibility == 32
    seg = Segmenter(model)
    r = seg(image(50, 110), "sky; road", return_scores=True)
    assert r.scores.shape == (2, 50, 110)
    f = seg.features.features[0]
    assert f["dense"].shape[:2] == (1, 1) and f["size"] == (640, 1408)    # short side 640, padded to a multiple of 32


# --- converter -------------------------------------------------------------------------
# (CLIP width, layers, patch, grid, embed dim, text width, text layers, hidden, guidance dims, pad_len, window, grid)
LAYOUTS = {"catseg-vit-b16": (768, 12, 16, 14, 512, 512, 12, 128, (256, 128), (32, 16), (64, 32), 24, 12),
           "catseg-vit-l14": (1024, 24, 14, 24, 768, 768, 12, 128, (256, 128), (32, 16), (64, 32), 24, 12),
           "catseg-tiny": (48, 4, 16, 4, 32, 32, 2, 32, (32, 16), (8, 8), (32, 16), 8, 4)}


def clip_block(prefix, w):
    """CAT-Seg's CLIP block (model_vpt.py: q / k / v weights apart, one packed bias)."""
    return {f"{prefix}.attn.q_proj_weight": (w, w), f"{prefix}.attn.k_proj_weight": (w, w),
            f"{prefix}.attn.v_proj_weight": (w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
            f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
            f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,), f"{prefix}.ln_2.weight": (w,),
            f"{prefix}.ln_2.bias": (w,), f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,),
            f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,)}


def published_layout(name):
    """Key -> shape of the published CATSeg state dict, from the reference module structure."""
    cw, layers, patch, grid, emb, tw, tl, hid, gd, gp, dd, fg, win = LAYOUTS[name]
    c = "sem_seg_head.predictor.clip_model."
    t = {c + "visual.class_embedding": (cw,), c + "visual.positional_embedding": (grid * grid + 1, cw),
         c + "visual.conv1.weight": (cw, 3, patch, patch), c + "visual.ln_pre.weight": (cw,),
         c + "visual.ln_pre.bias": (cw,), c + "visual.ln_post.weight": (cw,), c + "visual.ln_post.bias": (cw,),
         c + "visual.proj": (cw, emb), c + "positional_embedding": (77, tw), c + "text_projection": (tw, emb),
         c + "logit_scale": (), c + "token_embedding.weight": (49408, tw), c + "ln_final.weight": (tw,),
         c + "ln_final.bias": (tw,)}
    for i in range(layers):
        t.update(clip_block(f"{c}visual.transformer.resblocks.{i}", cw))
    for i in range(tl):
        t.update(clip_block(f"{c}transformer.resblocks.{i}", tw))
    a = "sem_seg_head.predictor.transformer."
    t.update({a + "conv1.weight": (hid, 1, 7, 7), a + "conv1.bias": (hid,)})
    g = 16 if name == "catseg-tiny" else 128        # projected appearance / text guidance width
    t.update({a + "guidance_projection.0.weight": (g, emb, 3, 3), a + "guidance_projection.0.bias": (g,),
              a + "text_guidance_projection.0.weight": (g, emb), a + "text_guidance_projection.0.bias": (g,)})
    for i, (d, p) in enumerate(zip(gd, gp)):
        t.update({f"{a}decoder_guidance_projection.{i}.0.weight": (p, d, 3, 3),
                  f"{a}decoder_guidance_projection.{i}.0.bias": (p,)})
    for i in range(2):
        L = f"{a}layers.{i}."
        for blk in ("block_1", "block_2"):
            s = f"{L}swin_block.{blk}."
            t.update({s + "norm1.weight": (hid,), s + "norm1.bias": (hid,), s + "norm2.weight": (hid,),
                      s + "norm2.bias": (hid,), s + "attn.q.weight": (hid, hid + g), s + "attn.q.bias": (hid,),
                      s + "attn.k.weight": (hid, hid + g), s + "attn.k.bias": (hid,),
                      s + "attn.v.weight": (hid, hid), s + "attn.v.bias": (hid,), s + "attn.proj.weight": (hid, hid),
                      s + "attn.proj.bias": (hid,), s + "mlp.fc1.weight": (4 * hid, hid),
                      s + "mlp.fc1.bias": (4 * hid,), s + "mlp.fc2.weight": (hid, 4 * hid), s + "mlp.fc2.bias": (hid,)})
        n = (fg // win) ** 2
        t[f"{L}swin_block.block_2.attn_mask"] = (n, win * win, win * win)
        t.update({f"{L}swin_block.guidance_norm.weight": (g,), f"{L}swin_block.guidance_norm.bias": (g,)})
        s = f"{L}attention."
        t.update({s + "attention.q.weight": (hid, hid + g), s + "attention.q.bias": (hid,),
                  s + "attention.k.weight": (hid, hid + g), s + "attention.k.bias": (hid,),
                  s + "attention.v.weight": (hid, hid), s + "attention.v.bias": (hid,),
                  s + "MLP.0.weight": (4 * hid, hid), s + "MLP.0.bias": (4 * hid,), s + "MLP.2.weight": (hid, 4 * hid),
                  s + "MLP.2.bias": (hid,), s + "norm1.weight": (hid,), s + "norm1.bias": (hid,),
                  s + "norm2.weight": (hid,), s + "norm2.bias": (hid,), s + "padding_tokens": (1, 1, hid),
                  s + "padding_guidance": (1, 1, g)})
    for i, (cin, cout, gproj) in enumerate(((hid, dd[0], gp[0]), (dd[0], dd[1], gp[1]))):
        d = f"{a}decoder{i + 1}."
        t.update({d + "up.weight": (cin, cin - gproj, 2, 2), d + "up.bias": (cin - gproj,),
                  d + "conv.double_conv.0.weight": (cout, cin, 3, 3), d + "conv.double_conv.1.weight": (cout,),
                  d + "conv.double_conv.1.bias": (cout,), d + "conv.double_conv.3.weight": (cout, cout, 3, 3),
                  d + "conv.double_conv.4.weight": (cout,), d + "conv.double_conv.4.bias": (cout,)})
    t.update({a + "head.weight": (1, dd[1], 3, 3), a + "head.bias": (1,),
              "upsample1.weight": (cw, gd[0], 2, 2), "upsample1.bias": (gd[0],),
              "upsample2.weight": (cw, gd[1], 4, 4), "upsample2.bias": (gd[1],)})
    return t


def fake_checkpoint(name, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) for k, s in published_layout(name).items()}
    for i, layer in enumerate(model.aggregator.layers):     # the buffer holds the real mask
        sd[f"{conv.AGG}layers.{i}.swin_block.block_2.attn_mask"] = layer.swin_block.block_2.attn_mask.clone()
    return sd


@pytest.mark.parametrize("name", ["catseg-vit-b16", "catseg-vit-l14", "catseg-tiny"])
def test_published_layout_fits_the_model_exactly(name):
    with torch.device("meta"):
        model = get_spec(name).build()
    layout = published_layout(name)
    sd = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    ours = conv.to_ours(sd)                                  # masks dropped unchecked without a model
    expected = model.state_dict()
    assert set(ours) == set(expected), (set(ours) ^ set(expected))
    assert all(tuple(ours[k].shape) == tuple(v.shape) for k, v in expected.items())
    back = conv.from_ours(model)
    assert set(back) == set(layout)


def test_tiny_checkpoint_loads_round_trips_and_errors(tmp_path):
    model = get_spec("catseg-tiny").build()
    sd = fake_checkpoint("catseg-tiny", model)
    path = tmp_path / "model_tiny.pth"
    torch.save({"model": sd, "iteration": 80000}, path)
    vocab = Vocabulary.parse("cat; dog")
    before = model.text_encoder()(vocab)
    conv.load_published(model, path)
    mine = model.state_dict()
    c = conv.CLIP
    assert torch.equal(mine["clip.visual.transformer.resblocks.3.attn.q_proj_weight"],
                       sd[c + "visual.transformer.resblocks.3.attn.q_proj_weight"])
    assert torch.equal(mine["clip.transformer.resblocks.1.attn.in_proj_bias"],
                       sd[c + "transformer.resblocks.1.attn.in_proj_bias"])
    assert torch.equal(mine["aggregator.layers.1.attention.padding_tokens"],
                       sd[conv.AGG + "layers.1.attention.padding_tokens"])
    assert torch.equal(mine["upsample2.weight"], sd["upsample2.weight"])
    back = conv.from_ours(model)
    assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())
    assert not torch.allclose(before, model.text_encoder()(vocab), atol=1e-3)    # text cache reset
    loaded = load_model("catseg-tiny", weights=path)
    assert torch.equal(loaded.aggregator.head.weight, sd[conv.AGG + "head.weight"])
    with pytest.raises(ValueError, match=r"unexpected \(1\): sem_seg_head.extra"):
        conv.load_state_dict(model, {**sd, "sem_seg_head.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected \(1\): aggregator.extra"):
        conv.load_state_dict(model, {**sd, conv.AGG + "extra": torch.zeros(1)})
    missing = {k: v for k, v in sd.items() if k != "upsample1.bias"}
    with pytest.raises(ValueError, match=r"missing \(1\): upsample1.bias"):
        conv.load_state_dict(model, missing)
    wrong = dict(sd, **{conv.AGG + "head.bias": torch.zeros(2)})
    with pytest.raises(ValueError, match="wrong shape.*aggregator.head.bias"):
        conv.load_state_dict(model, wrong)
    bad_mask = dict(sd, **{conv.AGG + "layers.0.swin_block.block_2.attn_mask": torch.zeros(4, 16, 16)})
    with pytest.raises(ValueError, match="layers.0.swin_block.block_2.attn_mask is not the shifted-window mask"):
        conv.load_state_dict(model, bad_mask)


def test_checkpoint_round_trip(tiny, tmp_path):
    x = torch.randn(1, 3, 64, 64)
    vocab = Vocabulary.parse("a; b; c")
    with torch.no_grad(), speed.plain_paths():      # Segmenter may have given ``tiny`` oneDNN linears (1e-7 apart)
        text = tiny.text_encoder().plain_prompt_features([TEMPLATE.format(n) for n in vocab.prompts], lambda n: None)
        want = tiny.predict(x, vocab, F.normalize(text, dim=-1))
        folder = save_checkpoint(tiny, tmp_path / "ckpt")
        back = load_checkpoint(folder)
        text_back = back.text_encoder().plain_prompt_features([TEMPLATE.format(n) for n in vocab.prompts], lambda n: None)
        got = back.predict(x, vocab, F.normalize(text_back, dim=-1))
    torch.testing.assert_close(text_back, text, atol=0, rtol=0)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


# --- training ----------------------------------------------------------------------------
def test_one_training_step():
    torch.manual_seed(0)
    model = get_spec("catseg-tiny").build().train()
    vocab = Vocabulary.parse("red; green; blue")
    item = {"image": torch.rand(3, 96, 96), "sem_seg": torch.randint(0, 3, (96, 96))}
    item["sem_seg"][:10] = 255
    losses = model.forward_train([item, item], vocab)
    assert set(losses) == {"loss_sem_seg"}
    # the loss: BCE-with-logits of the logits resized to the targets against one-hot (ignore: all zeros)
    seen = {}
    orig = model.aggregator.forward
    model.aggregator.forward = lambda *a: seen.setdefault("logits", orig(*a))
    torch.manual_seed(0)
    loss = model.forward_train([item], vocab)["loss_sem_seg"]
    del model.aggregator.forward
    logits = F.interpolate(seen["logits"], size=(96, 96), mode="bilinear", align_corners=False)[0]
    target = torch.stack([(item["sem_seg"] == c).float() for c in range(3)])
    want = (F.softplus(logits) - logits * target).mean()
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-5)
    # gradients reach q / v of both towers, not k; the optimiser groups follow the recipe
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "clip.visual.transformer.resblocks.0.attn.q_proj_weight" in grads
    assert "clip.transformer.resblocks.1.attn.v_proj_weight" in grads
    assert not any(n.endswith("k_proj_weight") or "ln_" in n for n in grads if n.startswith("clip."))
    assert "aggregator.layers.0.attention.padding_tokens" in grads and "upsample1.weight" in grads
    groups = {g["name"]: g for g in model.param_groups({"optim": {"lr": 2e-4, "weight_decay": 1e-4}})}
    assert set(groups) == {"default", "norm", "clip_default"}
    assert math.isclose(groups["clip_default"]["lr"], 2e-6) and groups["norm"]["weight_decay"] == 0.0
    assert groups["default"]["lr"] == 2e-4 and groups["default"]["weight_decay"] == 1e-4
    k = model.clip.visual.transformer.resblocks[0].attn.k_proj_weight.clone()
    q = model.clip.visual.transformer.resblocks[0].attn.q_proj_weight.clone()
    opt = torch.optim.AdamW(list(groups.values()))
    opt.step()
    assert torch.equal(model.clip.visual.transformer.resblocks[0].attn.k_proj_weight, k)
    assert not torch.equal(model.clip.visual.transformer.resblocks[0].attn.q_proj_weight, q)


def test_train_transform_is_the_published_recipe():
    model = get_spec("catseg-tiny").build()
    aug = model.train_transform({"data": {"transform": {}}})
    item = {"image": (torch.rand(3, 300, 500) * 255).to(torch.uint8), "sem_seg": torch.zeros(300, 500, dtype=torch.long)}
    out = aug(item)
    assert out["image"].shape == (3, 384, 384) and out["image"].dtype == torch.float32
    assert out["sem_seg"].shape == (384, 384)
    with pytest.raises(ValueError, match="unknown CAT-Seg transform keys"):
        model.train_transform({"data": {"transform": {"crop": 1}}})


def test_published_recipe_config():
    from pathlib import Path
    from vocabseg.engine.training.config import load_config
    cfg = load_config(Path(__file__).parents[1] / "configs" / "catseg-vit-b16.yaml")
    assert cfg["optim"]["lr"] == 2e-4 and cfg["optim"]["clip_grad_norm"] == 0.01
    assert cfg["schedule"]["name"] == "warmup_cosine" and cfg["schedule"]["iterations"] == 80000
    assert cfg["train"]["batch_size"] == 4 and cfg["data"]["vocabulary"] == "coco-stuff:catseg"
    assert len(Vocabulary.from_dataset("coco-stuff", "catseg")) == 171
    with torch.device("meta"):
        model = get_spec("catseg-vit-b16").build(train_pooling=tuple(cfg["model"]["train_pooling"]))
    groups = {g["name"]: g for g in model.param_groups(cfg)}
    assert math.isclose(groups["clip_default"]["lr"], 2e-6) and groups["default"]["weight_decay"] == 1e-4
    names = {id(p): n for n, p in model.named_parameters()}
    clip = [names[id(p)] for p in groups["clip_default"]["params"]]
    assert len(clip) == 2 * (12 + 12) and all(n.endswith(("q_proj_weight", "v_proj_weight")) for n in clip)
    assert all(isinstance(p, torch.nn.Parameter) for p in groups["norm"]["params"])
    out = model.train_transform(cfg)({"image": (torch.rand(3, 400, 600) * 255).to(torch.uint8),
                                      "sem_seg": torch.zeros(400, 600, dtype=torch.long)})
    assert out["image"].shape == (3, 384, 384)
