"""Published SAN checkpoints: a state dict with exactly the published key names
and shapes (written here from the spec and the reference code's module
structure, not from convert/san.py) loads with zero missing / unexpected keys,
and the round trip reproduces every tensor."""
import pytest
import torch

from vocabseg.api import load_model
from vocabseg.methods.san import convert as conv
from vocabseg.errors import UserError
from vocabseg.registry import get_spec
from vocabseg.vocab import Vocabulary

from layouts import clip_block, timm_block

# (CLIP width, layers, patch, grid, embed dim, text width, text layers, split,
#  side width, side depth, side patch, side grid, queries, fusion layers, decoder channels, bias heads)
LAYOUTS = {
    "san-vit-b16": (768, 12, 16, 14, 512, 512, 12, 9, 240, 8, 16, 40, 100, 4, 256, 12),
    "san-vit-l14": (1024, 24, 14, 24, 768, 768, 12, 18, 240, 8, 16, 40, 100, 4, 256, 16),
    "san-tiny": (48, 4, 16, 4, 32, 32, 2, 2, 32, 3, 8, 8, 8, 3, 24, 3),
}
# Key counts of the reference model's state_dict (MendelXu/SAN built with open_clip 2.16).
REFERENCE_KEYS = {"san-vit-b16": 442, "san-vit-l14": 586}


def mlp(prefix, dims, conv):
    out = {}
    for j, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
        out[f"{prefix}.layers.{j}.weight"] = (o, i, 1, 1) if conv else (o, i)
        out[f"{prefix}.layers.{j}.bias"] = (o,)
    return out


def published_layout(name):
    cw, layers, patch, grid, emb, tw, tl, split, sw, sd, sp, sg, q, nf, dec, heads = LAYOUTS[name]
    t = {"clip_visual_extractor.class_embedding": (cw,),
         "clip_visual_extractor.positional_embedding": (grid * grid + 1, cw),
         "clip_visual_extractor.conv1.weight": (cw, 3, patch, patch),
         "clip_visual_extractor.ln_pre.weight": (cw,), "clip_visual_extractor.ln_pre.bias": (cw,)}
    for i in range(split):
        t.update(clip_block(f"clip_visual_extractor.resblocks.{i}", cw))
    for i in range(layers - split):
        t.update(clip_block(f"clip_rec_head.resblocks.{i}", cw))
    t.update({"clip_rec_head.ln_post.weight": (cw,), "clip_rec_head.ln_post.bias": (cw,),
              "clip_rec_head.proj": (cw, emb)})
    s = "side_adapter_network."
    t.update({s + "query_embed": (1, q, sw), s + "query_pos_embed": (1, q, sw),
              s + "vit_model.pos_embed": (1, sg * sg, sw),
              s + "vit_model.patch_embed.proj.weight": (sw, 3, sp, sp), s + "vit_model.patch_embed.proj.bias": (sw,)})
    for i in range(sd):
        t.update(timm_block(f"{s}vit_model.blocks.{i}", sw))
    for i in range(nf):
        f = f"{s}fusion_layers.layer_{i}.input_proj"
        t.update({f + ".0.weight": (cw,), f + ".0.bias": (cw,), f + ".1.weight": (sw, cw, 1, 1), f + ".1.bias": (sw,)})
    d = s + "mask_decoder."
    t.update(mlp(d + "query_mlp", [sw, dec, dec, dec], False))
    t.update(mlp(d + "pix_mlp", [sw, dec, dec, dec], True))
    t.update(mlp(d + "attn_mlp", [sw, dec, dec, dec * heads], True))
    t.update({d + "bias_scaling.weight": (1, 1), d + "bias_scaling.bias": (1,)})
    o = "ov_classifier."
    t.update({o + "positional_embedding": (77, tw), o + "text_projection": (tw, emb), o + "logit_scale": (),
              o + "bg_embed": (1, emb), o + "attn_mask": (77, 77), o + "token_embedding.weight": (49408, tw),
              o + "ln_final.weight": (tw,), o + "ln_final.bias": (tw,)})
    for i in range(tl):
        t.update(clip_block(f"{o}transformer.resblocks.{i}", tw))
    t["criterion.empty_weight"] = (172,)
    return t


def fake_checkpoint(name, device="cpu", seed=0):
    """Random tensors in the published layout (constants with their real values)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in published_layout(name).items():
        if k == "ov_classifier.attn_mask":
            sd[k] = torch.full((77, 77), float("-inf")).triu(1)
        elif k == "criterion.empty_weight":
            sd[k] = torch.cat([torch.ones(171), torch.tensor([0.1])])
        elif device == "meta":
            sd[k] = torch.empty(shape, device="meta")
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    return sd


@pytest.mark.parametrize("name", ["san-vit-b16", "san-vit-l14"])
def test_published_layout_fits_the_model_exactly(name):
    sd = fake_checkpoint(name, device="meta")
    assert len(sd) == REFERENCE_KEYS[name]
    with torch.device("meta"):
        model = get_spec(name).build()
    ours = conv.to_ours({"model": sd})
    expected = model.state_dict()
    assert set(ours) == set(expected)
    assert all(tuple(ours[k].shape) == tuple(v.shape) for k, v in expected.items())
    conv.load_state_dict(model, {"model": sd})          # zero missing, zero unexpected, shapes checked
    back = conv.from_ours(ours)
    assert set(back) == set(sd)
    for k, v in sd.items():
        if v.device.type == "meta":
            assert back[k] is v, k                          # the same tensor, under its published name
        else:
            assert torch.equal(back[k], v), k
    assert conv.detect({"model": sd}) and conv.detect(sd)


def test_tiny_checkpoint_file_loads_and_round_trips(tmp_path):
    sd = fake_checkpoint("san-tiny")
    path = tmp_path / "san_tiny.pth"
    torch.save({"model": sd, "iteration": 60000}, path)
    model = get_spec("san-tiny").build()
    vocab = Vocabulary.parse("cat; dog")
    before = model.text_encoder()(vocab)
    conv.load_published(model, path)
    mine = model.state_dict()
    # spot checks, by hand
    assert torch.equal(mine["clip.visual.transformer.resblocks.2.ln_1.weight"], sd["clip_rec_head.resblocks.0.ln_1.weight"])
    assert torch.equal(mine["clip.visual.transformer.resblocks.1.mlp.c_fc.bias"],
                       sd["clip_visual_extractor.resblocks.1.mlp.c_fc.bias"])
    assert torch.equal(mine["clip.visual.proj"], sd["clip_rec_head.proj"])
    assert torch.equal(mine["clip.token_embedding.weight"], sd["ov_classifier.token_embedding.weight"])
    assert torch.equal(mine["clip.logit_scale"], sd["ov_classifier.logit_scale"])
    assert torch.equal(mine["bg_embed"], sd["ov_classifier.bg_embed"])
    assert torch.equal(mine["side.mask_decoder.attn_mlp.layers.2.weight"],
                       sd["side_adapter_network.mask_decoder.attn_mlp.layers.2.weight"])
    back = conv.from_ours(mine, split=2)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    # the text tower came from the file: the cached embeddings were dropped
    after = model.text_encoder()(vocab)
    assert not torch.allclose(before, after, atol=1e-3)
    bare = tmp_path / "bare.pth"
    torch.save(sd, bare)
    conv.load_published(get_spec("san-tiny").build(), bare)


def test_api_loads_the_published_file_as_it_is(tmp_path):
    sd = fake_checkpoint("san-tiny", seed=3)
    path = tmp_path / "san_tiny.pth"
    torch.save({"model": sd}, path)
    model = load_model("san-tiny", weights=path)
    assert not model.training
    assert torch.equal(model.side.query_embed, sd["side_adapter_network.query_embed"])
    assert torch.equal(model.clip.text_projection, sd["ov_classifier.text_projection"])
    with pytest.raises(UserError, match="holds its own CLIP"):
        load_model("san-tiny", weights=path, clip_weights="openai")
    with pytest.raises(UserError, match="cannot be loaded as san-vit-b16.*splits CLIP after block 2"):
        load_model("san-vit-b16", weights=path)


def test_unexplained_keys_are_errors(tmp_path):
    model = get_spec("san-tiny").build()
    sd = fake_checkpoint("san-tiny")
    with pytest.raises(ValueError, match=r"unexpected \(1\): side_adapter_network.extra \(ours: side.extra\)"):
        conv.load_state_dict(model, {**sd, "side_adapter_network.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="SAN does not define; unexpected \\(1\\): pixel_mean"):
        conv.load_state_dict(model, {**sd, "pixel_mean": torch.zeros(3)})
    missing = {k: v for k, v in sd.items() if k != "side_adapter_network.query_pos_embed"}
    with pytest.raises(ValueError, match=r"missing \(1\): side.query_pos_embed"):
        conv.load_state_dict(model, missing)
    wrong = dict(sd, **{"ov_classifier.bg_embed": torch.zeros(1, 7)})
    with pytest.raises(ValueError, match="wrong shape.*bg_embed"):
        conv.load_state_dict(model, wrong)
    bad_weight = dict(sd, **{"criterion.empty_weight": torch.ones(172)})
    with pytest.raises(ValueError, match="empty_weight"):
        conv.load_state_dict(model, bad_weight)
    bad_mask = dict(sd, **{"ov_classifier.attn_mask": torch.zeros(77, 77)})
    with pytest.raises(ValueError, match="attn_mask"):
        conv.load_state_dict(model, bad_mask)
    # blocks of the extractor moved to the recognition head: a different split
    resplit = {}
    for k, v in sd.items():
        if k.startswith("clip_visual_extractor.resblocks.1."):
            k = k.replace("clip_visual_extractor.resblocks.1.", "clip_rec_head.resblocks.0.")
        elif k.startswith("clip_rec_head.resblocks."):
            i = int(k.split(".")[2])
            k = k.replace(f"clip_rec_head.resblocks.{i}.", f"clip_rec_head.resblocks.{i + 1}.")
        resplit[k] = v
    with pytest.raises(ValueError, match="after block 1, the model after 2"):
        conv.load_state_dict(model, resplit)
    other = tmp_path / "other.pth"
    torch.save({"model": {"clip.visual.proj": torch.zeros(2, 2)}}, other)
    with pytest.raises(ValueError, match="not a published SAN checkpoint"):
        conv.load_published(model, other)
    assert not conv.detect({"clip.visual.transformer.semantic_layer2.x": 0})
    with pytest.raises(FileNotFoundError):
        conv.load_published(model, tmp_path / "absent.pth")
