"""SegCLIP model: published checkpoint layout, inference rules, any input size."""
import pytest
import torch
import torch.nn.functional as F

from vocabseg.methods.segclip import convert as conv
from vocabseg.engine.inference.image import infer
from vocabseg.registry import get_spec
from vocabseg.methods.segclip.model import BG_THRESH, SegCLIPFeatures
from vocabseg.vocab import Vocabulary

from layouts import clip_block, ln, timm_block


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return get_spec("segclip-tiny").build()


@pytest.fixture
def target():
    """A model of the converter tests' own: they load random published weights into it
    (N(0, 1) everywhere), which must not reach the shared ``model`` of the other tests."""
    return get_spec("segclip-tiny").build()


def published_layout(W=48, heads=3, layers=4, split=2, T=32, text_layers=2, D=32, vocab=49408, ctx=77,
                     patch=16, grid=4, centers=8):
    """Key -> shape of ArrowLuo/SegCLIP's ``SegCLIP.state_dict()`` (written from its module structure)."""
    k = {"clip.positional_embedding": [ctx, T], "clip.text_projection": [T, D], "clip.logit_scale": [],
         "clip.token_embedding.weight": [vocab, T], **ln("clip.ln_final", T),
         "clip.visual.class_embedding": [W], "clip.visual.positional_embedding": [grid * grid + 1, W],
         "clip.visual.conv1.weight": [W, 3, patch, patch], **ln("clip.visual.ln_pre", W),
         **ln("clip.visual.ln_post", W), "clip.visual.proj": [W, D]}
    for i in range(text_layers):
        k.update(clip_block(f"clip.transformer.resblocks.{i}", T))
    vt = "clip.visual.transformer"
    for i in range(split):
        k.update(clip_block(f"{vt}.layers0.{i}", W))
    for i in range(layers - split):
        k.update(clip_block(f"{vt}.layers2.{i}", W))
        k.update(clip_block(f"{vt}.layers_mae2.{i}", W))
    s = f"{vt}.semantic_layer2"
    k.update({**ln(f"{s}.norm", W), f"{s}.semantic_center": [centers, W], **ln(f"{s}.cross_ln", W),
              f"{s}.k_conv.weight": [W, W // heads, 1], **ln(f"{s}.k_ln", W), f"{s}.v_conv.weight": [W, W // heads, 1],
              **ln(f"{s}.proj_o.ln", W), f"{s}.proj_o.mlp.fc1.weight": [4 * W, W], f"{s}.proj_o.mlp.fc1.bias": [4 * W],
              f"{s}.proj_o.mlp.fc2.weight": [W, 4 * W], f"{s}.proj_o.mlp.fc2.bias": [W]})
    for i in range(2):
        c = f"{s}.cross_att.{i}"
        k.update({f"{c}.attn.in_proj_weight": [3 * W, W], f"{c}.attn.in_proj_bias": [3 * W],
                  f"{c}.attn.out_proj.weight": [W, W], f"{c}.attn.out_proj.bias": [W], **ln(f"{c}.ln_x", W),
                  **ln(f"{c}.ln_k", W), **ln(f"{c}.ln_2", W), f"{c}.mlp.c_fc.weight": [4 * W, W],
                  f"{c}.mlp.c_fc.bias": [4 * W], f"{c}.mlp.c_proj.weight": [W, 4 * W], f"{c}.mlp.c_proj.bias": [W]})
    k.update({f"{vt}.reconstruct_layer2.rec_proj_a.a_fc.weight": [centers, centers],
              f"{vt}.reconstruct_layer2.rec_proj_a.a_fc.bias": [centers]})
    d = W // 2
    m = "vis_mae_decoder"
    k.update({f"{m}.decoder_embed.weight": [d, W], f"{m}.decoder_embed.bias": [d], f"{m}.mask_token": [1, 1, d],
              f"{m}.decoder_pos_embed": [1, grid * grid + 1, d], **ln(f"{m}.decoder_norm", d),
              f"{m}.decoder_pred.weight": [patch * patch * 3, d], f"{m}.decoder_pred.bias": [patch * patch * 3]})
    for i in range(3):
        b = f"{m}.decoder_blocks.{i}"
        k.update(timm_block(b, d))
    return k


def test_converter_maps_published_layout_both_ways(target):
    layout = published_layout()
    g = torch.Generator().manual_seed(1)
    published = {k: torch.randn(s, generator=g) for k, s in layout.items()}
    assert conv.detect({"model": published}) and not conv.detect(target.state_dict())
    ours = conv.to_ours(published)
    assert set(ours) == set(target.state_dict())                      # zero missing / unexpected
    conv.load_into(target, {"model": published})
    sd = target.state_dict()
    vt = "clip.visual.transformer"
    assert torch.equal(sd[f"{vt}.resblocks.3.mlp.c_fc.weight"], published[f"{vt}.layers2.1.mlp.c_fc.weight"])
    assert torch.equal(sd[f"{vt}.resblocks.1.attn.in_proj_weight"], published[f"{vt}.layers0.1.attn.in_proj_weight"])
    assert torch.equal(sd["mae_blocks.0.ln_1.bias"], published[f"{vt}.layers_mae2.0.ln_1.bias"])
    assert torch.equal(sd["group.k_conv.weight"], published[f"{vt}.semantic_layer2.k_conv.weight"])
    assert torch.equal(sd["reconstruct.weight"], published[f"{vt}.reconstruct_layer2.rec_proj_a.a_fc.weight"])
    back = conv.from_ours(sd)
    assert set(back) == set(layout)
    assert all(torch.equal(back[k], published[k]) for k in layout)


def test_converter_fills_clip_keys_and_reports_the_rest(target):
    published = {k: torch.randn(s) for k, s in published_layout().items()}
    clip_sd = {k[len("clip."):]: v.clone() for k, v in conv.to_ours(published).items() if k.startswith("clip.")}
    clip_sd["input_resolution"] = torch.tensor(64)
    partial = {k: v for k, v in published.items() if not k.startswith("clip.transformer.")}
    with pytest.raises(ValueError, match="missing.*clip.transformer.resblocks.0"):
        conv.load_into(target, partial)
    report = conv.load_into(target, partial, clip_state_dict=clip_sd)
    assert report["filled"] and all(k.startswith("clip.transformer.") for k in report["filled"])
    with pytest.raises(ValueError, match="unexpected.*extra.key"):
        conv.load_into(target, {**published, "extra.key": torch.zeros(1)})


def test_published_file_loads_as_is(target, tmp_path):
    published = {k: torch.randn(s) for k, s in published_layout().items()}
    torch.save({"model": published}, tmp_path / "segclip.bin")
    conv.load_published(target, str(tmp_path / "segclip.bin"))
    assert torch.equal(target.group.semantic_center, published["clip.visual.transformer.semantic_layer2.semantic_center"])
    clip_sd = {k[len("clip."):]: v for k, v in conv.to_ours(published).items() if k.startswith("clip.")}
    torch.save({k: v for k, v in published.items() if k != "clip.ln_final.weight"}, tmp_path / "partial.bin")
    report = conv.load_published(target, str(tmp_path / "partial.bin"), clip_state_dict=clip_sd)
    assert report["filled"] == ["clip.ln_final.weight"]


def test_cross_attention_is_per_image(model):
    x = torch.randn(3, 3, 64, 80)
    together = model.visual(x)
    alone = [model.visual(x[i:i + 1]) for i in range(3)]
    for j in (0, 1, 3):  # regions, image token, soft assignment
        assert torch.allclose(together[j], torch.cat([a[j] for a in alone]), atol=1e-5)


def _reference_pixel_scores(feats, text, scale, bg_thresh, topk=5, groups=None):
    """Published per-window formula (ViTSegInference.encode_decode) with a background
    channel first, written per image; ``groups`` lists the synonym rows of each class."""
    groups = groups or [[i] for i in range(text.shape[0])]
    out = []
    for b in range(feats.regions.shape[0]):
        g = torch.stack([(feats.regions[b] @ text[r].t()).max(-1).values for r in groups], -1) * scale
        avg = torch.stack([(feats.image[b] @ text[r].t()).max(-1).values for r in groups], -1) * scale
        pre, avg = g.softmax(-1), avg.softmax(-1)
        keep = torch.zeros_like(avg).scatter_(-1, avg.topk(min(topk, len(avg))).indices, 1.0).bool()
        aff = g.masked_fill(~keep, float("-inf")).softmax(-1) * pre
        onehot = F.one_hot(feats.assign[b], g.shape[0]).float()
        fg = (onehot @ aff).permute(2, 0, 1)
        bg = (fg.max(0).values < min(bg_thresh, aff.max().item())).float()
        out.append(torch.cat([bg[None], fg]))
    return torch.stack(out)


def test_classify_follows_published_rule(model):
    x = torch.randn(2, 3, 64, 64)
    feats = model.encode_image(x)
    vocab = Vocabulary.parse("background; a; b; c; d; e; f; g", background=0)
    text = F.normalize(torch.randn(8, 32), dim=-1)
    model.bg_thresh = BG_THRESH["voc21"]
    got = model.classify(feats, text, vocab)
    scale = model.clip.logit_scale.exp().clamp(max=100)
    want = _reference_pixel_scores(feats, text[1:], scale, 0.80)
    assert torch.allclose(got, want, atol=1e-6)
    assert (got[:, 1:] > 0).flatten(2).any(-1).sum(-1).le(5).all()   # at most top-5 classes survive per image


def test_vocabulary_permutation_invariance(model):
    feats = model.encode_image(torch.randn(1, 3, 64, 96))
    names = ["sky", "cat", "dog", "road", "tree", "car", "person"]
    vocab = Vocabulary.parse("; ".join(names), background=0)
    text = F.normalize(torch.randn(len(names), 32), dim=-1)
    perm = [3, 0, 6, 1, 5, 2, 4]
    pvocab = Vocabulary.parse("; ".join(names[p] for p in perm), background=perm.index(0))
    a = model.classify(feats, text, vocab)
    b = model.classify(feats, text[perm], pvocab)
    assert torch.allclose(a[:, perm], b, atol=1e-6)


def test_synonyms_take_the_max(model):
    feats = model.encode_image(torch.randn(1, 3, 64, 64))
    text = F.normalize(torch.randn(5, 32), dim=-1)       # background, a, a2, b, c
    got = model.classify(feats, text, Vocabulary.parse("background; a, a2; b; c", background=0))
    scale = model.clip.logit_scale.exp().clamp(max=100)
    want = _reference_pixel_scores(feats, text, scale, model.bg_thresh, groups=[[1, 2], [3], [4]])
    assert torch.allclose(got, want, atol=1e-6)


def test_any_input_size_through_shared_inference(model):
    image = torch.rand(3, 70, 150)
    vocab = Vocabulary.parse("background; red; green", background=0)
    text = model.text_encoder()(vocab)
    out = infer(model, image, text, vocab)
    assert out.shape == (3, 70, 150)
    assert out.min() >= 0 and out.max() <= 1
    feats = model.encode_image(torch.randn(1, 3, 80, 112))
    assert model.groups(feats).shape == (1, 80, 112) and feats.soft.shape == (1, 8, 5, 7)
    assert int(model.groups(feats).max()) < 8


def test_text_identity_follows_weights(model):
    before = model.text_tower()[2]
    saved = model.clip.ln_final.bias.detach().clone()
    with torch.no_grad():
        model.clip.ln_final.bias.add_(1.0)
    model.reset_text_cache()
    after = model.text_tower()[2]
    with torch.no_grad():
        model.clip.ln_final.bias.copy_(saved)
    model.reset_text_cache()
    assert before != after and model.text_tower()[2] == before


def test_param_groups_follow_the_published_recipe():
    m = get_spec("segclip-tiny").build()
    groups = m.param_groups({"optim": {"lr": 4e-3, "lower_lr": 4e-6, "weight_decay": 0.05}})
    names = {id(p): n for n, p in m.named_parameters()}
    by = {n: (g["lr"], g["weight_decay"]) for g in groups for n in (names[id(p)] for p in g["params"])}
    assert not m.clip.visual.conv1.weight.requires_grad and not m.clip.token_embedding.weight.requires_grad
    for frozen in ("clip.visual.conv1.weight", "clip.visual.positional_embedding", "clip.token_embedding.weight",
                   "clip.positional_embedding", "clip.visual.ln_pre.weight"):
        assert frozen not in by
    assert by["clip.visual.transformer.resblocks.0.attn.in_proj_weight"] == (4e-6, 0.05)
    assert by["clip.transformer.resblocks.1.mlp.c_fc.bias"] == (4e-6, 0.0)
    assert by["clip.visual.transformer.resblocks.2.attn.in_proj_weight"] == (4e-3, 0.05)
    assert by["clip.visual.proj"] == (4e-3, 0.05) and by["clip.logit_scale"] == (4e-6, 0.05)
    assert by["group.semantic_center"] == (4e-3, 0.05) and by["decoder.decoder_pred.bias"] == (4e-3, 0.0)
    assert by["group.norm.weight"] == (4e-3, 0.05)      # published: decay on everything but biases


def test_group_map_over_windows_and_image(model):
    from vocabseg.engine.inference.image import encode
    from vocabseg.methods.segclip.model import groups_image
    image = torch.rand(3, 70, 150)
    feats = encode(model, image)
    g = model.group_map(feats)
    assert g.shape == (70, 150) and 0 <= int(g.min()) and int(g.max()) < 8
    first = model.groups(feats.features[0])[0]           # window 0 covers the left 64x64 of the 64x137 image
    resized = torch.nn.functional.interpolate(g[None, None].float(), size=feats.resized, mode="nearest")[0, 0]
    assert (resized[:64, :64].long() == first[:64, :64]).float().mean() > 0.9
    img = groups_image(g, (image * 255).to(torch.uint8))
    assert img.size == (150, 70)


def test_config_matches_the_published_recipe():
    from pathlib import Path
    from vocabseg.engine.training.config import load_config
    path = Path(__file__).resolve().parents[1] / "configs" / "segclip-vit-b16.yaml"
    cfg = load_config(path)        # the engine's schema accepts it
    o = cfg["optim"]
    assert (o["lr"], o["lower_lr"], o["betas"], o["eps"], o["weight_decay"], o["clip_grad_norm"]) == \
        (4e-3, 4e-6, [0.9, 0.98], 1e-6, 0.05, 1.0)
    assert cfg["schedule"]["warmup_fraction"] == 0.15 and cfg["train"]["batch_size"] == 768
    assert cfg["eval"]["datasets"] == list(BG_THRESH) and cfg["data"]["vocabulary"] is None
    m = get_spec("segclip-tiny").build(loss_weights=cfg["model"]["loss_weights"])
    assert sorted(g["lr"] for g in m.param_groups(cfg)) == [4e-6, 4e-6, 4e-3, 4e-3]
    tf = m.train_transform(load_config(path, ["data.transform.size=64"]))
    item = tf({"image": torch.randint(0, 255, (3, 80, 90), dtype=torch.uint8), "caption": "x"})
    assert item["image"].shape == (3, 64, 64) and item["superpixels"].shape == (4, 4)
