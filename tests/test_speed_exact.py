"""Every exact fast path of ``vocabseg.speed`` equals the straightforward path it
replaces (run under ``speed.plain_paths()``), on tiny models and random inputs.
No timing here: speed is measured by ``vocabseg bench`` / benchmarks/speed.py."""
import contextvars
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vocabseg import speed
from vocabseg.backbones.clip import create_clip
from vocabseg.engine import inference
from vocabseg.registry import get_spec
from vocabseg.layers.mask_semantic import mask_semantic, resample_matrix
from vocabseg.methods.fcclip.ms_deform_attn import ms_deform_attn, ms_deform_attn_gather
from vocabseg.results import confidence_of, labels_and_confidence
from vocabseg.text import VILD, TextEncoder
from vocabseg.text_prefix import assign_prefixes, encode_shared
from vocabseg.vocab import Vocabulary


def both(fn):
    """(fast result, plain result) of ``fn()``."""
    with torch.no_grad():
        fast = fn()
        with speed.plain_paths():
            plain = fn()
    return fast, plain


def close(a, b, atol=1e-4):
    """``a`` and ``b`` have the same structure: same types, dict keys, sequence lengths,
    tensor shapes and dtypes; tensors agree within ``atol``, any other value is equal."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        for k in a:
            close(a[k], b[k], atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (len(a), len(b))
        for x, y in zip(a, b):
            close(x, y, atol)
    elif torch.is_tensor(a):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()
    else:
        assert a == b, (a, b)


@pytest.fixture(scope="module")
def san():
    torch.manual_seed(0)
    model = get_spec("san-tiny").build().eval()
    with torch.no_grad():          # random heads: make the attention bias and masks matter
        for p in model.side.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.side.mask_decoder.bias_scaling.weight.fill_(20.0)
    return model


@pytest.fixture(scope="module")
def fcclip():
    torch.manual_seed(0)
    model = get_spec("fcclip-tiny").build().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("clip."):
                p.add_(torch.randn_like(p) * 0.05)
    return model


def test_switch_is_restored_and_fast_linear_keeps_keys():
    assert speed.fast()
    with pytest.raises(RuntimeError):
        with speed.plain_paths():
            assert not speed.fast()
            raise RuntimeError
    assert speed.fast()
    seq = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    before = {k: v.clone() for k, v in seq.state_dict().items()}
    speed.use_fast_linears(seq)
    assert all(type(m) is speed.FastLinear for m in (seq[0], seq[2])) and isinstance(seq[0], nn.Linear)
    assert seq.state_dict().keys() == before.keys() and all(torch.equal(seq.state_dict()[k], v) for k, v in before.items())
    x = torch.randn(2, 4, 6).transpose(0, 1)                       # non-contiguous input
    fast, plain = both(lambda: seq(x))
    close(fast, plain, 1e-6)
    assert seq(x.requires_grad_()).grad_fn is not None               # with autograd: F.linear, differentiable


def test_switch_is_a_context_variable():
    """plain_paths() sets the switch in the current context only: nested and raising
    blocks restore it, a context copied inside sees it (also from another thread),
    and a thread's own plain_paths() leaves this thread fast."""
    with speed.plain_paths():
        inside = contextvars.copy_context()
        with speed.plain_paths():
            assert not speed.fast()
        with pytest.raises(RuntimeError):
            with speed.plain_paths():
                raise RuntimeError
        assert not speed.fast()
    assert speed.fast() and not inside.run(speed.fast)
    with speed.plain_paths():
        assert contextvars.copy_context().run(speed.fast) is False
    seen, entered, checked = [], threading.Event(), threading.Event()

    def worker():
        seen.append(inside.run(speed.fast))
        with speed.plain_paths():
            entered.set()
            checked.wait(10)
            seen.append(speed.fast())
        seen.append(speed.fast())

    t = threading.Thread(target=worker)
    t.start()
    entered.wait(10)
    seen.append(speed.fast())                 # main thread, while the worker is inside plain_paths()
    checked.set()
    t.join(10)
    assert seen == [False, True, False, True]


def test_san_recognition_head_equals_masked_attention(san):
    vit = san.vit
    g = torch.Generator().manual_seed(1)
    for start in (san.split, vit.num_layers - 1):                    # several blocks, and only the last one
        x = torch.randn(2, 1 + 16, vit.width, generator=g)
        bias = torch.randn(2, vit.heads, 5, 16, generator=g) * 4
        fast, plain = both(lambda: vit.forward_sos(x, start, bias))
        assert fast.shape == (2, 5, vit.width)
        close(fast, plain, 1e-5)
        assert (fast[:, 0] - fast[:, 1]).abs().max() > 1e-3          # the bias makes the SOS rows differ


def test_san_folded_bias_head_and_whole_pipeline(san):
    dec = san.side.mask_decoder
    g = torch.Generator().manual_seed(2)
    q, x = torch.randn(2, 7, dec.query_mlp.layers[0].in_features, generator=g), torch.randn(2, 32, 5, 6, generator=g)
    (m1, b1), (m2, b2) = both(lambda: dec(q, x))
    close(m1, m2, 1e-5)
    close(b1, b2, 1e-4)
    vocab = Vocabulary.parse("cat; dog, puppy; sky; grass")
    text = F.normalize(torch.randn(5, san.vit.output_dim, generator=g), dim=-1)
    image = torch.rand(3, 40, 58, generator=g)                        # resized, padded, cropped and resized back
    fast, plain = both(lambda: inference.infer(san, image, text, vocab))
    assert fast.shape == (4, 40, 58)
    close(fast, plain, 1e-5)


def test_mask_semantic_in_bands_equals_full_upsampling():
    g = torch.Generator().manual_seed(3)
    for b, q, h, w, padded, crop, size in [(2, 5, 4, 6, (32, 48), (29, 41), (50, 23)),
                                           (1, 3, 10, 10, (40, 40), None, None),
                                           (1, 4, 7, 9, (28, 36), (28, 33), (28, 33))]:
        prob = torch.rand(b, q, 6, generator=g).softmax(-1)
        logits = torch.randn(b, q, h, w, generator=g) * 4
        fast, plain = both(lambda: mask_semantic(prob, logits, padded, crop, size))
        close(fast, plain, 1e-6)
        assert torch.equal(fast.argmax(1), plain.argmax(1))
    m = resample_matrix(4, 8, 7, 3)                                   # rows: output pixels, weights sum to 1
    assert m.shape == (3, 4) and torch.allclose(m.sum(1), torch.ones(3))


def test_fcclip_last_set_decoder_and_pipeline(fcclip):
    g = torch.Generator().manual_seed(4)
    images = torch.randn(1, 3, 96, 128, generator=g)
    with torch.no_grad():
        feats = fcclip.backbone.features(images)
        mask_features, multi_scale = fcclip.pixel_decoder(feats)
        every = fcclip.decoder(multi_scale, mask_features, all_sets=True)
        last = fcclip.decoder(multi_scale, mask_features, all_sets=False)
    assert len(every) == len(fcclip.decoder.layers) + 1 and len(last) == 1
    close(last[0][0], every[-1][0], 1e-5)
    close(last[0][1], every[-1][1], 1e-5)
    vocab = Vocabulary.parse("cat; dog, puppy; sky")
    text = F.normalize(torch.randn(4, fcclip.backbone.embed_dim, generator=g), dim=-1)
    image = torch.rand(3, 70, 90, generator=g)
    fast, plain = both(lambda: inference.infer(fcclip, image, text, vocab))
    close(fast, plain, 1e-4)
    f1, f2 = both(lambda: inference.encode(fcclip, image))
    close(f1.features[0], f2.features[0], 1e-4)


def test_channels_last_trunk_equals_contiguous(fcclip):
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    fast, plain = both(lambda: fcclip.backbone.features(x))
    for k in plain:
        close(fast[k], plain[k], 1e-5)


def test_deformable_gather_equals_grid_sample():
    g = torch.Generator().manual_seed(6)
    shapes = [(5, 7), (3, 4), (2, 2)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 3, 4, generator=g)
    loc = torch.rand(2, 11, 3, 3, 4, 2, generator=g) * 1.6 - 0.3           # some corners and points outside
    loc[0, 0, 0, 0, 0] = torch.tensor([1.0, 1.0])                          # exactly on the far border
    loc[0, 1, 0, 0, 0] = torch.tensor([-5.0, 7.0])                         # far outside: reads zero
    weights = torch.rand(2, 11, 3, 3, 4, generator=g).softmax(-1)
    ref = ms_deform_attn(value, shapes, loc, weights, "stack")
    out = ms_deform_attn_gather(value, shapes, loc, weights)
    assert out.shape == ref.shape == (2, 11, 12)
    close(out, ref, 1e-5)


def test_shared_prefix_text_equals_full_77_tokens():
    clip, tok, ident = create_clip("tiny-vit")
    names = ["cat", "potted plant", "car", "cat", "traffic light, stop light"]
    prompts = [t.format(n) for n in names for t in VILD] + ["a photo of a cat."]
    tokens = tok(prompts)
    with torch.no_grad():
        full = clip.encode_text(tokens)
        shared = encode_shared(clip, tokens, batch=7)
    close(shared, full, 1e-5)
    enc = TextEncoder(clip, tok, ident, "vild", cache=False)
    fast, plain = both(lambda: enc._encode(["cat", "dining table"]))
    close(fast, plain, 1e-5)


def test_prefix_assignment():
    seqs = [(1, 5, 6, 7, 9, 2), (1, 5, 6, 7, 8, 2), (1, 5, 6, 7, 3, 4, 2), (1, 5, 6, 7, 8, 8, 2), (1, 4, 2)]
    assert assign_prefixes(seqs) == [4, 4, 4, 4, 1]          # the shared words, never the end token
    assert assign_prefixes([(1, 2), (1, 2)]) == [1, 1]


def test_labels_and_confidence_match_argmax_and_formula():
    g = torch.Generator().manual_seed(7)
    for scores in (torch.rand(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g),
                   torch.rand(6, 5, 4, generator=g).permute(2, 0, 1)):
        labels, conf = labels_and_confidence(scores)
        assert torch.equal(labels, scores.argmax(0))
        ref = (scores.max(0).values / scores.sum(0)) if scores.min() >= 0 else scores.softmax(0).max(0).values
        assert torch.allclose(conf, ref, atol=1e-6) and torch.equal(confidence_of(scores), conf)


def test_segclip_encodes_once_like_the_two_pass_wrapper():
    """The published wrapper ran the image twice (image embedding, then regions); one pass gives both."""
    torch.manual_seed(0)
    model = get_spec("segclip-tiny").build().eval()
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    calls = []
    real = model.visual
    model.visual = lambda *a, **k: calls.append(1) or real(*a, **k)
    with torch.no_grad():
        feats = model.encode_image(image)
        assert len(calls) == 1
        _, image_token, _, _, _ = real(image)                                # pass 1: the image embedding
        regions, _, _, soft, grid = real(image)                               # pass 2: the regions
    close(feats.image, F.normalize(model.vit.head(image_token), dim=-1), 1e-6)
    close(feats.regions, F.normalize(model.vit.head(regions), dim=-1), 1e-6)
    assert torch.equal(feats.soft, soft.reshape(1, -1, *grid))


def test_bench_counts_flops_of_known_layers():
    from vocabseg.engine.bench.measure import count_flops
    x, w = torch.randn(3, 10, 16), torch.randn(8, 16)
    q = torch.randn(1, 2, 9, 4)
    with torch.no_grad():
        assert count_flops(lambda: speed.linear(x, w)) == 2 * 30 * 16 * 8
        with speed.plain_paths():
            assert count_flops(lambda: speed.linear(x, w)) == 2 * 30 * 16 * 8
        assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 4 * 2 * 9 * 9 * 4
        mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
        y = torch.randn(1, 5, 16)
        assert count_flops(lambda: mha(y, y, y, need_weights=False)) == 2 * 5 * 16 * 48 + 4 * 2 * 5 * 5 * 8 + 2 * 5 * 16 * 16


@pytest.mark.slow
def test_segment_batch_size_writes_what_batch_one_writes(tmp_path, capsys):
    from PIL import Image
    from vocabseg.api import load_model
    from vocabseg.checkpoint import save_checkpoint
    from vocabseg.cli import main
    torch.manual_seed(0)
    ckpt = str(save_checkpoint(load_model("san-tiny"), tmp_path / "ck"))
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60), (40, 60), (50, 30)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    base = ["segment", str(tmp_path), "--model", ckpt, "--labels", "a; b, c; d"]
    assert main(base + ["--out", str(tmp_path / "one")]) == 1
    assert main(base + ["--out", str(tmp_path / "three"), "--batch-size", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("3 of 4 images written") == 2 and "images/s" in err and "bad.jpg" in err
    for i in range(3):
        a = np.array(Image.open(tmp_path / "one" / f"{i}_labels.png"))
        assert np.array_equal(a, np.array(Image.open(tmp_path / "three" / f"{i}_labels.png")))
    assert main(base + ["--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_catseg_class_aggregation_without_padded_queries():
    """CAT-Seg pads the class axis to ``pad_len`` with copies of one learned token: the
    fast path adds their keys / values to the linear-attention sums without running them."""
    torch.manual_seed(0)
    model = get_spec("catseg-tiny").build().eval()
    with torch.no_grad():
        for name, p in model.aggregator.named_parameters():
            if p.ndim <= 1 or "padding" in name:
                p.add_(torch.randn_like(p) * 0.1)
    layer = model.aggregator.layers[0].attention
    x, g = torch.randn(2, 32, 3, 8, 8), torch.randn(2, 3, 16)
    for pooling in ((1, 1), (2, 2)):
        fast, plain = both(lambda: layer(x, g, pooling))
        close(fast, plain, atol=1e-5)
    vocab = Vocabulary.parse("sky; road; tree")
    text = model.text_encoder()(vocab)
    feats = model.encode_image(torch.randn(1, 3, 70, 90))
    fast, plain = both(lambda: model.probabilities(model.view_logits(feats, text)))
    close(fast, plain, atol=1e-5)
