"""SAN model: parameter counts, the recognition head's attention mask and bias
injection, semantic inference and its invariances, test-time augmentation."""
import dataclasses

import pytest
import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F

from vocabseg.backbones.vit import SOS_BLOCKED, sos_attn_mask
from vocabseg.engine.inference.image import infer
from vocabseg.protocol import normalize, pad_to_multiple
from vocabseg.engine.inference.tta import infer_tta
from vocabseg.registry import get_spec
from vocabseg.vocab import Vocabulary


pytestmark = pytest.mark.usefixtures("one_thread")     # conftest.py


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = get_spec("san-tiny").build().eval()
    with torch.no_grad():   # make the side network's bias and masks matter
        model.side.mask_decoder.bias_scaling.weight.fill_(5.0)
    return model


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name,published", [("san-vit-b16", 8.37e6), ("san-vit-l14", 9.32e6)])
def test_trainable_parameters_match_the_paper(name, published):
    with torch.device("meta"):
        model = get_spec(name).build()
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(count - published) / published < 0.01, count
    names = trainable_names(model)
    assert all(n.startswith("side.") for n in names - {"clip.visual.positional_embedding", "bg_embed"})
    assert {"clip.visual.positional_embedding", "bg_embed"} <= names
    assert not any(n.startswith("clip.") and n != "clip.visual.positional_embedding" for n in names)
    side = sum(p.numel() for n, p in model.named_parameters() if n.startswith("side."))
    assert side == sum(p.numel() for n, p in model.named_parameters() if n.startswith("side.") and p.requires_grad)


def test_published_architecture_numbers():
    with torch.device("meta"):
        b16, l14 = get_spec("san-vit-b16").build(), get_spec("san-vit-l14").build()
    for m, split, res, heads, fusion in ((b16, 9, 0.5, 12, {0: 0, 1: 3, 2: 6, 3: 9}),
                                         (l14, 18, 0.7, 16, {0: 0, 1: 6, 2: 12, 3: 18})):
        c = m.side.cfg
        assert (m.split, m.clip_resolution, c.bias_heads, c.fusion_map) == (split, res, heads, fusion)
        assert (c.width, c.depth, c.heads, c.patch_size, c.num_queries, c.deep_supervision) == (240, 8, 6, 16, 100, (7, 8))
        assert m.side.vit_model.pos_embed.shape == (1, 40 * 40, 240)
        assert m.side.vit_model.blocks[0].mlp.fc1.out_features == 960
        assert m.side.mask_decoder.attn_mlp.layers[-1].out_channels == 256 * heads
        assert (m.template_set, m.protocol.short_side, m.protocol.size_divisibility) == ("vild", 640, 32)


def test_sos_attention_mask_entry_by_entry():
    b, h, q, n = 2, 3, 2, 4
    bias = torch.randn(b, h, q, n)
    mask = sos_attn_mask(bias)
    assert mask.shape == (b, h, q + 1 + n, q + 1 + n)
    for bi in range(b):
        for hi in range(h):
            for r in range(q + 1 + n):
                for c in range(q + 1 + n):
                    if c < q:              # key is an SOS token: only itself may look at it
                        want = 0.0 if r == c else SOS_BLOCKED
                    elif r < q and c == q:  # SOS -> CLS
                        want = SOS_BLOCKED
                    elif r < q:             # SOS -> patch: the predicted bias
                        want = float(bias[bi, hi, r, c - q - 1])
                    else:                   # CLS / patch -> CLS / patch: plain CLIP
                        want = 0.0
                    assert float(mask[bi, hi, r, c]) == want, (bi, hi, r, c)


def test_recognition_head_with_zero_bias_is_clip(tiny):
    """One SOS token and a zero bias reproduce CLIP's own class-token embedding."""
    images = torch.randn(2, 3, 64, 64)
    x, grid = tiny.vit.embed(images)
    x, _ = tiny.vit.forward_blocks(x, 0, tiny.split)
    bias = torch.zeros(2, 1, grid[0] * grid[1])[:, None].expand(-1, tiny.vit.heads, -1, -1)
    with torch.no_grad():
        sos = tiny.vit.head(tiny.vit.forward_sos(x, tiny.split, bias))[:, 0]
        ref = tiny.clip.encode_image(images)
    assert torch.allclose(sos, ref, atol=1e-5), (sos - ref).abs().max()


def test_bias_steers_sos_tokens_and_leaves_cls_alone(tiny):
    images = torch.randn(1, 3, 64, 64)
    x, grid = tiny.vit.embed(images)
    x, _ = tiny.vit.forward_blocks(x, 0, tiny.split)
    n = grid[0] * grid[1]
    bias = torch.zeros(1, tiny.vit.heads, 2, n)
    bias[0, :, 1, :] = -100.0
    bias[0, :, 1, 0] = 0.0             # SOS 1 may only look at itself and patch 0
    with torch.no_grad():
        sos = tiny.vit.forward_sos(x, tiny.split, bias)
        plain, _ = tiny.vit.forward_blocks(x, tiny.split)
        seq = torch.cat([x[:, :1], x[:, :1], x], dim=1)
        ref = seq
        for block in tiny.vit.blocks[tiny.split:]:
            ref = block(ref, attn_mask=sos_attn_mask(bias)[0, 0].clone())  # all heads share this bias
    assert not torch.allclose(sos[:, 0], sos[:, 1], atol=1e-3)
    assert torch.allclose(sos, ref[:, :2], atol=1e-5)
    assert torch.allclose(ref[:, 2:], plain, atol=1e-5)    # CLS and patches do not see the SOS tokens


def semantic_by_hand(model, feats, text, vocab_size, crop, size):
    emb = feats["mask_emb"]
    cls = torch.cat([text, model.bg_embed], 0)
    cls = cls / cls.norm(dim=-1, keepdim=True)
    prob = torch.softmax(model.clip.logit_scale.exp() * emb @ cls.T, -1)[..., :vocab_size]
    masks = F.interpolate(feats["mask_logits"], size=feats["size"], mode="bilinear", align_corners=False)
    masks = F.interpolate(masks[..., : crop[0], : crop[1]], size=size, mode="bilinear", align_corners=False)
    return (prob[0].T @ torch.sigmoid(masks[0]).flatten(1)).view(-1, *size)


def test_engine_pads_crops_and_resizes_like_the_reference(tiny):
    """Scores at the original size = mask logits upsampled to the padded input,
    cropped to the image, resized, then sigmoid (SAN's sem_seg_postprocess order)."""
    vocab = Vocabulary.parse("cat; dog; sky")
    text = tiny.text_encoder()(vocab)
    image = torch.rand(3, 50, 70)
    proto = dataclasses.replace(tiny.protocol, short_side=75, max_side=1000)   # 50x70 -> 75x105, pad to 96x128
    out = infer(tiny, image, text, vocab, proto)
    # detectron2's test resize: PIL bilinear on the uint8 image
    u8 = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    x = torch.from_numpy(np.asarray(Image.fromarray(u8).resize((105, 75), Image.BILINEAR)).copy())
    x = x.permute(2, 0, 1)[None].float() / 255
    padded = pad_to_multiple(normalize(x, proto), 32)
    assert padded.shape[-2:] == (96, 128)
    with torch.no_grad():
        ref = semantic_by_hand(tiny, tiny.encode_image(padded), text, 3, (75, 105), (50, 70))
    assert out.shape == (3, 50, 70)
    assert torch.allclose(out, ref, atol=1e-6)


def test_vocabulary_permutation_and_synonyms(tiny):
    vocab = Vocabulary.parse("cat; dog; sky; road")
    text = tiny.text_encoder()(vocab)
    with torch.no_grad():
        feats = tiny.encode_image(torch.randn(1, 3, 64, 96))
        base = tiny.classify(feats, text, vocab)
        perm = [2, 0, 3, 1]
        pv = Vocabulary(tuple(vocab.classes[i] for i in perm))
        assert torch.allclose(tiny.classify(feats, text[perm], pv), base[:, perm], atol=1e-6)
        # "dog" repeated under a synonym with the same embedding: nothing changes
        syn = Vocabulary.parse("cat; dog, doggy; sky; road")
        text_syn = torch.cat([text[:2], text[1:2], text[2:]])
        out = tiny.classify(feats, text_syn, syn)
    assert torch.equal(out.argmax(1), base.argmax(1))
    assert torch.allclose(out, base, atol=1e-6)


def test_class_logits_use_the_background_row(tiny):
    vocab = Vocabulary.parse("cat; dog")
    text = F.normalize(torch.randn(2, tiny.vit.output_dim), dim=-1)
    emb = F.normalize(torch.randn(1, 5, tiny.vit.output_dim), dim=-1)
    logits = tiny.class_logits(emb, text, vocab)
    bg = F.normalize(tiny.bg_embed, dim=-1)
    assert logits.shape == (1, 5, 3)
    assert torch.allclose(logits[..., 2], tiny.clip.logit_scale.exp() * (emb @ bg.T)[..., 0], atol=1e-5)
    assert torch.allclose(logits[..., 0], tiny.clip.logit_scale.exp() * emb @ text[0], atol=1e-5)


def test_tta_one_size_no_flip_is_plain_inference(tiny):
    vocab = Vocabulary.parse("cat; dog; sky")
    text = tiny.text_encoder()(vocab)
    image = torch.rand(3, 40, 56)
    plain = infer(tiny, image, text, vocab, dataclasses.replace(tiny.protocol, short_side=64, max_side=4480))
    assert torch.allclose(infer_tta(tiny, image, text, vocab, sizes=[64], flip=False), plain, atol=1e-6)
    flipped = infer(tiny, image.flip(-1), text, vocab,
                    dataclasses.replace(tiny.protocol, short_side=64, max_side=4480)).flip(-1)
    both = infer_tta(tiny, image, text, vocab, sizes=[64], flip=True)
    assert torch.allclose(both, (plain + flipped) / 2, atol=1e-6)
    assert not torch.allclose(plain, flipped, atol=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        infer_tta(tiny, image, text, vocab, sizes=[])


def test_side_network_resizes_position_embedding_by_token_count(tiny):
    """As published, the side pos-embedding is resized when the token count differs."""
    side = tiny.side
    maps = lambda h, w: {i: torch.randn(1, tiny.vit.width, h // 32, w // 32) for i in side.clip_indices}  # noqa: E731
    with torch.no_grad():
        masks, biases = side(torch.randn(1, 3, 64, 96), maps(64, 96))
        assert masks[0].shape == (1, 8, 8, 12) and biases[0].shape == (1, tiny.vit.heads, 8, 8, 12)
        masks, _ = side(torch.randn(1, 3, 64, 64), maps(64, 64), decode_all=True)
    assert len(masks) == 2


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="split"):
        get_spec("san-tiny").build(split=4)
    with pytest.raises(ValueError, match="fusion reads CLIP features"):
        get_spec("san-tiny").build(side={"fusion_map": {0: 0, 1: 3}})
