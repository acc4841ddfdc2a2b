"""ProxyCLIP: proxy attention, the last block, the VFM forward and converter, settings, the
Segmenter cache, checkpoints and error messages, on the tiny preset."""
import pytest
import torch
import torch.nn.functional as F

import vocabseg
from vocabseg import registry
from vocabseg.checkpoint import save_checkpoint
from vocabseg.errors import CheckpointError, UnknownModel, WeightsNotFound
from vocabseg.methods.trainingfree.presets import build_proxyclip
from vocabseg.methods.trainingfree.proxyclip import proxy_attention
from vocabseg.methods.trainingfree.vfm import create_vfm, load_vfm_state, vfm_patch_features


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return registry.build("proxyclip-tiny")


def loop_attention(feats, beta, gamma):
    """Proxy attention of one image [C, N], entry by entry in float64."""
    c, n = feats.shape
    f = feats.double() / feats.double().norm(dim=0, keepdim=True)
    s = [[float(f[:, i] @ f[:, j]) for j in range(n)] for i in range(n)]
    mean = sum(map(sum, s)) / (n * n)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        row = [gamma * (v - beta * mean) for v in s[i]]
        keep = [j for j in range(n) if row[j] >= 0]
        z = sum(torch.tensor(row[j]).exp() for j in keep)
        for j in keep:
            out[i, j] = torch.tensor(row[j]).exp() / z
    return out


def test_proxy_attention_matches_the_formula_per_image():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 12, generator=g)
    feats[1] += 0.6                                  # another image, another mean: the mean is per image
    a = proxy_attention(feats, 1.2, 3.0)
    for b in range(2):
        assert torch.allclose(a[b].double(), loop_attention(feats[b], 1.2, 3.0), atol=1e-6)
    assert (a == 0).any() and (a[1] > 0).sum() > 12   # some S' < 0 are masked, not all
    same = proxy_attention(torch.ones(1, 4, 6))      # all alike: every S' < 0, the token keeps itself
    assert torch.equal(same[0], torch.eye(6))
    low = feats.bfloat16()                           # the bf16 image side: computed in fp32 all the same
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = proxy_attention(low, 1.2, 3.0)
    assert inside.dtype == torch.float32 and torch.equal(inside, proxy_attention(low.float(), 1.2, 3.0))


def test_last_block_is_the_published_value_aggregation(model):
    """Independent: open_clip's own blocks, MultiheadAttention's weights by hand, per-head resize."""
    torch.manual_seed(1)
    images = torch.randn(1, 3, 32, 48)
    vfm_feats = torch.randn(1, 32, 4, 6)             # given VFM features on a 4 x 6 grid
    tokens, grid = model.dense_tokens(images, vfm_feats)
    visual = model.clip.visual
    x, _ = model.vit.embed(images)
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)
    last = visual.transformer.resblocks[-1]
    c, heads = x.shape[-1], last.attn.num_heads
    v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * c:], last.attn.in_proj_bias[2 * c:])[0, 1:]   # [6, C]
    v = v.view(2, 3, heads, c // heads).permute(2, 3, 0, 1)                                  # [heads, d, 2, 3]
    v = F.interpolate(v, size=(4, 6), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    a = loop_attention(vfm_feats[0].flatten(1), 1.2, 3.0).float()
    out = torch.cat([a @ v[h] for h in range(heads)], dim=-1)                               # [24, C]
    out = last.attn.out_proj(out)
    ref = visual.ln_post(out) @ visual.proj
    assert grid == (4, 6)
    assert torch.allclose(tokens[0], ref, atol=1e-4)


def _tiny_reg_vit():
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                             reg_tokens=2, no_embed_class=True, init_values=1e-5).eval()


@pytest.mark.parametrize("registers", [False, True])
def test_vfm_forward_equals_timm_at_its_own_size(registers):
    vit = _tiny_reg_vit() if registers else create_vfm("tiny-vfm", None)[0]
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.02 * torch.randn_like(p))
        x = torch.randn(2, 3, 32, 32)
        ours = vfm_patch_features(vit, x)
        ref = vit.forward_features(x)[:, vit.num_prefix_tokens:].transpose(1, 2).reshape(2, 32, 4, 4)
        assert torch.allclose(ours, ref, atol=1e-5)
        assert vfm_patch_features(vit, torch.randn(1, 3, 40, 56)).shape == (1, 32, 5, 7)   # position resized


def test_converter_reads_the_dinov2_hub_layout():
    """A DINOv2 torch.hub state dict (class position inside pos_embed, register_tokens, mask_token)
    loads into timm's layout with the same outputs; any stray key is named."""
    timm_vit = _tiny_reg_vit()
    with torch.no_grad():
        for p in timm_vit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    sd = dict(timm_vit.state_dict())
    pos0 = 0.1 * torch.randn(1, 1, 32)
    hub = {k: v for k, v in sd.items() if k not in ("cls_token", "pos_embed", "reg_token")}
    hub.update(cls_token=sd["cls_token"] - pos0, pos_embed=torch.cat([pos0, sd["pos_embed"]], 1),
               register_tokens=sd["reg_token"], mask_token=torch.zeros(1, 32))
    fresh = _tiny_reg_vit()
    load_vfm_state(fresh, hub)
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.allclose(vfm_patch_features(fresh, x), vfm_patch_features(timm_vit, x), atol=1e-6)
    with pytest.raises(CheckpointError, match="unexpected.*blocks.9.attn"):
        load_vfm_state(_tiny_reg_vit(), {**hub, "blocks.9.attn.qkv.weight": torch.zeros(1)})


def test_published_settings_per_benchmark(model):
    m = build_proxyclip(clip_arch="tiny-vit", clip_weights=None, vfm="tiny-vfm", vfm_weights=None)
    assert (m.protocol.short_side, m.protocol.window, m.protocol.stride, m.pad_multiple) == (336, 336, 112, 56)
    assert (m.logit_scale, m.beta, m.gamma) == (40.0, 1.2, 3.0)
    for name, want in {"voc21": (336, 336, 0.2), "pc60": (336, 336, 0.15), "coco-object": (336, 336, 0.25),
                       "ade150": (448, 336, 0.0), "cityscapes": (448, 224, 0.0), "pc59": (336, 336, 0.0),
                       "ade847": (448, 336, 0.0)}.items():
        m.set_dataset(name)
        assert (m.protocol.short_side, m.protocol.window, m.prob_thd) == want, name
    m.set_dataset(None)
    assert m.prob_thd == 0.0


def test_segmenter_cache_new_vocabulary_and_checkpoint_round_trip(model, tmp_path, monkeypatch):
    seg = vocabseg.Segmenter(model)
    img = (torch.rand(3, 50, 70) * 255).byte()
    calls = []
    encode = type(model).encode_image
    monkeypatch.setattr(type(model), "encode_image", lambda self, x: calls.append(1) or encode(self, x))
    a = seg(img, "cat; dog, puppy; tree", return_scores=True)
    n = len(calls)
    b = seg.predict("tree; cat; dog, puppy", return_scores=True)
    assert len(calls) == n > 1                     # several windows, encoded once
    assert torch.allclose(a.scores[[2, 0, 1]], b.scores, atol=1e-6)   # same image, permuted vocabulary
    save_checkpoint(model, tmp_path / "ckpt")
    again = registry.load_checkpoint(tmp_path / "ckpt")
    c = vocabseg.Segmenter(again)(img, "cat; dog, puppy; tree", return_scores=True)
    assert torch.equal(c.labels, a.labels) and torch.allclose(c.scores, a.scores, atol=1e-6)


def test_error_messages():
    with pytest.raises(UnknownModel, match="unknown VFM 'dino-vitz'; available: dino-vitb8"):
        create_vfm("dino-vitz")
    with pytest.raises(WeightsNotFound, match="VFM weights dino-vitb16 are not downloaded yet: offline mode.*"
                                              "huggingface.co/timm/vit_base_patch16_224.dino"):
        create_vfm("dino-vitb16", "hub")
    with pytest.raises(WeightsNotFound, match="VFM weights file not found: nowhere.pt"):
        create_vfm("tiny-vfm", "nowhere.pt")
    with pytest.raises(ValueError, match="unknown settings"):
        build_proxyclip(clip_arch="tiny-vit", clip_weights=None, vfm="tiny-vfm", vfm_weights=None, temp_thd=0.1)


def test_batched_windows_equal_one_at_a_time(model):
    from vocabseg.engine.inference import infer
    from vocabseg.engine.inference.batched import infer_batch
    vocab = vocabseg.Vocabulary.resolve("cat; dog; tree")
    text = model.text_encoder()(vocab)
    images = [torch.rand(3, 40, 60), torch.rand(3, 50, 40)]
    many = infer_batch(model, images, text, vocab, max_crops=4)
    for im, b in zip(images, many):
        assert torch.allclose(infer(model, im, text, vocab), b, atol=1e-5)


def test_vfm_position_resizing_follows_each_hub_model():
    """DINO / DINOv2 without registers: scale factor (grid + 0.1) / side (as ``backbones.vit``);
    DINOv2 with registers: to the grid size with antialiasing."""
    from vocabseg.backbones.vit import resize_pos_embed
    from vocabseg.methods.trainingfree.vfm import VFMS, resize_vfm_pos
    pos = torch.randn(1 + 37 * 37, 8)
    assert torch.equal(resize_vfm_pos(pos, (24, 30), 1, 0.1), resize_pos_embed(pos, (24, 30), offset=0.1))
    body = pos[1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    want = F.interpolate(body, size=(24, 30), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.allclose(resize_vfm_pos(pos, (24, 30), 1, 0.0, True)[1:], want)
    assert torch.equal(resize_vfm_pos(pos, (37, 37), 1, 0.0, True), pos)
    assert (VFMS["dinov2-vitb14-reg"].pos_offset, VFMS["dinov2-vitb14-reg"].pos_antialias) == (0.0, True)
    assert (VFMS["dino-vitb8"].pos_offset, VFMS["dinov2-vitl14"].pos_antialias) == (0.1, False)
