"""The published FC-CLIP layout (key names and shapes written here from the
reference module structure, not from the converter) loads into our model and back."""
import pytest
import torch

from vocabseg.methods.fcclip import convert as conv
from vocabseg.methods.fcclip.presets import PRESETS

# the tiny preset's sizes (models/fcclip.py _TINY); RES: convnext_atto res2..res5
TINY = dict(DIM=32, MASK_DIM=32, ENC=1, HEADS=4, POINTS=2, FFN_ENC=64, Q=12, DEC_LAYERS=3, FFN_DEC=64, EMBED=32,
            RES=(40, 80, 160, 320))
# the published model (fc-clip configs: MaskFormer CONVS_DIM / MASK_DIM 256, 6 deformable encoder layers of
# 8 heads x 4 points with FFN 1024, 250 queries, DEC_LAYERS 10 = 9 decoder layers with FFN 2048) around each
# open_clip ConvNeXt: res2..res5 channels, CLIP embedding width
PUBLISHED = dict(DIM=256, MASK_DIM=256, ENC=6, HEADS=8, POINTS=4, FFN_ENC=1024, Q=250, DEC_LAYERS=9, FFN_DEC=2048)
BACKBONES = {"convnext_base_w_320": ((128, 256, 512, 1024), 640),
             "convnext_large_d_320": ((192, 384, 768, 1536), 768),
             "convnext_xxlarge": ((384, 768, 1536, 3072), 1024)}
TEXT_ABSENT = ("token_embedding.", "transformer.", "ln_final.")


def published_layout(clip_sd: dict, sizes: dict = TINY) -> dict:
    """{published key: shape} of a detectron2 FC-CLIP model with these sizes, as
    fcclip_cocopan.pth stores it (text transformer left out)."""
    DIM, MASK_DIM, ENC, HEADS, POINTS, FFN_ENC = (sizes[k] for k in ("DIM", "MASK_DIM", "ENC", "HEADS", "POINTS",
                                                                     "FFN_ENC"))
    Q, DEC_LAYERS, FFN_DEC, EMBED, RES = (sizes[k] for k in ("Q", "DEC_LAYERS", "FFN_DEC", "EMBED", "RES"))
    shapes = {f"backbone.clip_model.{k}": tuple(v.shape) for k, v in clip_sd.items()
              if not k.startswith(TEXT_ABSENT)}
    pix = "sem_seg_head.pixel_decoder."
    for i, c in enumerate(reversed(RES[1:])):             # res5, res4, res3
        shapes.update({f"{pix}input_proj.{i}.0.weight": (DIM, c, 1, 1), f"{pix}input_proj.{i}.0.bias": (DIM,),
                       f"{pix}input_proj.{i}.1.weight": (DIM,), f"{pix}input_proj.{i}.1.bias": (DIM,)})
    shapes[f"{pix}transformer.level_embed"] = (3, DIM)
    for n in range(ENC):
        e = f"{pix}transformer.encoder.layers.{n}."
        shapes.update({
            e + "self_attn.sampling_offsets.weight": (HEADS * 3 * POINTS * 2, DIM),
            e + "self_attn.sampling_offsets.bias": (HEADS * 3 * POINTS * 2,),
            e + "self_attn.attention_weights.weight": (HEADS * 3 * POINTS, DIM),
            e + "self_attn.attention_weights.bias": (HEADS * 3 * POINTS,),
            e + "self_attn.value_proj.weight": (DIM, DIM), e + "self_attn.value_proj.bias": (DIM,),
            e + "self_attn.output_proj.weight": (DIM, DIM), e + "self_attn.output_proj.bias": (DIM,),
            e + "norm1.weight": (DIM,), e + "norm1.bias": (DIM,),
            e + "linear1.weight": (FFN_ENC, DIM), e + "linear1.bias": (FFN_ENC,),
            e + "linear2.weight": (DIM, FFN_ENC), e + "linear2.bias": (DIM,),
            e + "norm2.weight": (DIM,), e + "norm2.bias": (DIM,)})
    shapes.update({f"{pix}mask_features.weight": (MASK_DIM, DIM, 1, 1), f"{pix}mask_features.bias": (MASK_DIM,),
                   f"{pix}adapter_1.weight": (DIM, RES[0], 1, 1), f"{pix}adapter_1.norm.weight": (DIM,),
                   f"{pix}adapter_1.norm.bias": (DIM,), f"{pix}layer_1.weight": (DIM, DIM, 3, 3),
                   f"{pix}layer_1.norm.weight": (DIM,), f"{pix}layer_1.norm.bias": (DIM,)})
    pred = "sem_seg_head.predictor."
    for n in range(DEC_LAYERS):
        for group, attn in (("transformer_self_attention_layers", "self_attn"),
                            ("transformer_cross_attention_layers", "multihead_attn")):
            a = f"{pred}{group}.{n}."
            shapes.update({a + f"{attn}.in_proj_weight": (3 * DIM, DIM), a + f"{attn}.in_proj_bias": (3 * DIM,),
                           a + f"{attn}.out_proj.weight": (DIM, DIM), a + f"{attn}.out_proj.bias": (DIM,),
                           a + "norm.weight": (DIM,), a + "norm.bias": (DIM,)})
        f = f"{pred}transformer_ffn_layers.{n}."
        shapes.update({f + "linear1.weight": (FFN_DEC, DIM), f + "linear1.bias": (FFN_DEC,),
                       f + "linear2.weight": (DIM, FFN_DEC), f + "linear2.bias": (DIM,),
                       f + "norm.weight": (DIM,), f + "norm.bias": (DIM,)})
    shapes.update({f"{pred}decoder_norm.weight": (DIM,), f"{pred}decoder_norm.bias": (DIM,),
                   f"{pred}query_feat.weight": (Q, DIM), f"{pred}query_embed.weight": (Q, DIM),
                   f"{pred}level_embed.weight": (3, DIM), f"{pred}logit_scale": (),
                   f"{pred}_mask_pooling_proj.0.weight": (DIM,), f"{pred}_mask_pooling_proj.0.bias": (DIM,),
                   f"{pred}_mask_pooling_proj.1.weight": (DIM, DIM), f"{pred}_mask_pooling_proj.1.bias": (DIM,)})
    for i, (o, n_in) in enumerate([(DIM, DIM), (DIM, DIM), (MASK_DIM, DIM)]):
        shapes.update({f"{pred}mask_embed.layers.{i}.weight": (o, n_in), f"{pred}mask_embed.layers.{i}.bias": (o,)})
    for i, (o, n_in) in enumerate([(DIM, DIM), (DIM, DIM), (EMBED, DIM)]):
        shapes.update({f"{pred}class_embed.layers.{i}.weight": (o, n_in),
                       f"{pred}class_embed.layers.{i}.bias": (o,)})
    shapes["void_embedding.weight"] = (1, EMBED)
    shapes["criterion.empty_weight"] = (134,)
    return shapes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PRESETS["fcclip-tiny"].build()


def random_published(model) -> dict:
    clip_sd = model.clip.state_dict()
    g = torch.Generator().manual_seed(3)
    sd = {k: torch.randn(s, generator=g) for k, s in published_layout(clip_sd).items()}
    sd["criterion.empty_weight"] = torch.ones(134)
    sd["criterion.empty_weight"][-1] = 0.1
    return sd


def test_published_layout_loads_with_no_missing_or_unexpected_keys(model):
    sd = random_published(model)
    text = {k: torch.randn(v.shape) for k, v in model.clip.state_dict().items() if k.startswith(TEXT_ABSENT)}
    report = conv.load_into(model, {"model": sd}, clip_state_dict=text)
    assert sorted(report["filled"]) == sorted("clip." + k for k in text)
    ours = model.state_dict()
    pix, pred = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
    pairs = {  # a few placements checked by hand
        f"{pix}adapter_1.weight": "pixel_decoder.lateral.conv.weight",
        f"{pix}layer_1.norm.bias": "pixel_decoder.output.norm.bias",
        f"{pix}transformer.level_embed": "pixel_decoder.level_embed",
        f"{pix}transformer.encoder.layers.0.self_attn.sampling_offsets.weight":
            "pixel_decoder.encoder.layers.0.self_attn.sampling_offsets.weight",
        f"{pred}transformer_cross_attention_layers.2.multihead_attn.in_proj_weight":
            "decoder.layers.2.cross_attn.attn.in_proj_weight",
        f"{pred}transformer_self_attention_layers.1.norm.weight": "decoder.layers.1.self_attn.norm.weight",
        f"{pred}transformer_ffn_layers.0.linear2.weight": "decoder.layers.0.ffn.linear2.weight",
        f"{pred}_mask_pooling_proj.1.weight": "decoder.pool_proj.1.weight",
        f"{pred}decoder_norm.bias": "decoder.norm.bias",
        f"{pred}logit_scale": "decoder.logit_scale",
        "backbone.clip_model.visual.trunk.stages.3.blocks.0.conv_dw.weight":
            "clip.visual.trunk.stages.3.blocks.0.conv_dw.weight",
        "backbone.clip_model.logit_scale": "clip.logit_scale",
        "void_embedding.weight": "void_embedding.weight"}
    for theirs, mine in pairs.items():
        assert torch.equal(ours[mine], sd[theirs]), mine
    for k, v in text.items():
        assert torch.equal(ours["clip." + k], v)
    # and back: exactly the published keys, same tensors
    back = conv.from_ours(ours)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    assert set(conv.from_ours(ours, text_tower=True)) == set(sd) | {"backbone.clip_model." + k for k in text}


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_full_size_layout_around_each_convnext_clip(arch):
    """The published-size model (built on the meta device: shapes only) around the base,
    large and xxlarge ConvNeXt CLIPs has exactly the published keys and shapes."""
    from vocabseg.methods.fcclip.model import CLIP_VARIANTS, FCCLIP
    from vocabseg.methods.fcclip.presets import DECODER as _DECODER
    res, embed = BACKBONES[arch]
    assert arch in CLIP_VARIANTS
    with torch.device("meta"):
        full = FCCLIP(arch, decoder=_DECODER) if arch != "convnext_large_d_320" else \
            PRESETS["fcclip-convnext-l"].build()
    assert full.backbone.channels == res and full.backbone.embed_dim == embed
    ours = full.state_dict()
    expected = published_layout({k[len("clip."):]: v for k, v in ours.items() if k.startswith("clip.")},
                                {**PUBLISHED, "EMBED": embed, "RES": res})
    got = {k: tuple(v.shape) for k, v in conv.from_ours(ours).items()}
    assert got == expected


def test_detect():
    model = PRESETS["fcclip-tiny"].build()
    sd = random_published(model)
    assert conv.detect(sd) and conv.detect({"model": sd})
    assert not conv.detect({"side_adapter_network.x": torch.zeros(1), "clip_rec_head.y": torch.zeros(1)})
    assert not conv.detect(model.state_dict())


def test_missing_and_unexpected_keys_are_named(model):
    sd = random_published(model)
    text = {k: v for k, v in model.clip.state_dict().items() if k.startswith(TEXT_ABSENT)}
    bad = dict(sd)
    del bad["sem_seg_head.predictor.query_embed.weight"]
    with pytest.raises(ValueError, match=r"missing \(1\): decoder.query_embed.weight"):
        conv.load_into(model, bad, text)
    extra = {**sd, "sem_seg_head.predictor.class_embed_extra.weight": torch.zeros(2)}
    with pytest.raises(KeyError, match="class_embed_extra"):
        conv.load_into(model, extra, text)
    with pytest.raises(ValueError, match="text tower is missing"):
        conv.load_into(model, sd, None)
    wrong = {**sd, "void_embedding.weight": torch.zeros(1, 7)}
    with pytest.raises(ValueError, match=r"void_embedding.weight: file \(1, 7\) vs model \(1, 32\)"):
        conv.load_into(model, wrong, text)
    resnet = {**sd, "backbone.clip_model.visual.attnpool.c_proj.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="ResNet-CLIP"):
        conv.load_into(model, resnet, text)


def test_load_published_file_takes_text_tower_from_clip_weights(tmp_path):
    torch.manual_seed(1)
    source = PRESETS["fcclip-tiny"].build()
    clip_file = tmp_path / "tiny_clip.pt"
    torch.save(source.clip.state_dict(), clip_file)            # the "open_clip" weights of this CLIP
    path = tmp_path / "fcclip_cocopan.pth"
    torch.save({"model": conv.from_ours(source.state_dict()), "iteration": 5}, path)
    target = PRESETS["fcclip-tiny"].build()
    report = conv.load_published(target, path, clip_weights=str(clip_file))
    assert any(k.startswith("clip.transformer.") for k in report["filled"])
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    with pytest.raises(ValueError, match="no default CLIP"):
        conv.load_published(PRESETS["fcclip-tiny"].build(), path)
    torch.save({"model": {"foo": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a published FC-CLIP checkpoint"):
        conv.load_published(target, tmp_path / "other.pth")


def test_api_load_model_takes_the_published_file_as_is(tmp_path):
    from vocabseg.api import load_model
    from vocabseg.errors import UserError
    torch.manual_seed(2)
    source = PRESETS["fcclip-tiny"].build()
    torch.save(source.clip.state_dict(), tmp_path / "clip.pt")
    torch.save({"model": conv.from_ours(source.state_dict())}, tmp_path / "fcclip_cocopan.pth")
    model = load_model("fcclip-tiny", weights=tmp_path / "fcclip_cocopan.pth", clip_weights=str(tmp_path / "clip.pt"))
    assert not model.training
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    broken = conv.from_ours(source.state_dict())
    del broken["sem_seg_head.predictor.decoder_norm.weight"]
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(UserError, match="decoder.norm.weight"):
        load_model("fcclip-tiny", weights=tmp_path / "broken.pth", clip_weights=str(tmp_path / "clip.pt"))


def test_prefix_map_renames_both_ways():
    from vocabseg.convert import PrefixMap
    names = PrefixMap([("a.layers.{n}.attn.", "b.{n}.self."), ("a.scale", "b.scale"), ("a.", "c.")])
    assert names.forward("a.layers.12.attn.in_proj_weight") == "b.12.self.in_proj_weight"
    assert names.backward("b.12.self.in_proj_weight") == "a.layers.12.attn.in_proj_weight"
    assert names.forward("a.scale") == "b.scale" and names.forward("a.scale2") == "c.scale2"
    assert names.forward("z.x") is None and names.backward("b.x") is None
