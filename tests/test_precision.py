"""bf16 on CPU: refused where not native, ``auto``, the head in fp32, the text cache key."""
import pytest
import torch
from PIL import Image

from vocabseg.api import Segmenter, load_model
from vocabseg.backbones.clip import create_clip
from vocabseg.cli import main
from vocabseg import bf16
from vocabseg.engine import precision
from vocabseg.errors import UserError
from vocabseg.registry import all_specs
from vocabseg.text import TextEncoder
from vocabseg.vocab import Vocabulary

TINY = sorted(n for n, s in all_specs(include_test=True).items() if s.test_only)
VOCAB = "sky; tree, bush; road; person; car"
# argmax agreement with fp32, measured on the tiny presets (random weights, 96x128, 5 classes): 0.989..1.0,
# segclip-tiny 0.885 (its 8 regions each take one class: one region's near-tie flipping moves ~12 % of pixels),
# catseg-tiny 0.954 (a random aggregator's sigmoid maps lie close together: many near-ties)
AGREEMENT = {"segclip-tiny": 0.85, "catseg-tiny": 0.93}
REFUSAL = ("precision bf16 needs native bf16 (avx512_bf16 or amx_bf16), which this cpu lacks: "
           "there it is slower than fp32 and inexact; use fp32 or auto")


def _image(h=96, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)


@pytest.fixture
def native(monkeypatch):
    """Native bf16 as detected (any CPU runs bf16 autocast, only slowly without it)."""
    monkeypatch.setattr(precision, "native_bf16", lambda device_type="cpu": True)


@pytest.fixture
def no_native(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device_type="cpu": False)


def test_without_native_bf16_bf16_is_one_line_and_auto_is_fp32(no_native, tmp_path, capsys):
    model = load_model(TINY[0])
    with pytest.raises(UserError) as e:
        Segmenter(model, precision="bf16")
    assert str(e.value) == REFUSAL
    assert Segmenter(model, precision="auto").precision == "fp32"
    Image.fromarray(_image().permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "a.png"), "--model", TINY[0], "--labels", "a; b",
                 "--precision", "bf16", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"vocabseg segment: error: {REFUSAL}\n"
    assert not out.exists()


def test_with_native_bf16_auto_is_bf16(native):
    assert Segmenter(load_model(TINY[0]), precision="auto").precision == "bf16"
    assert precision.resolve("auto", "cpu") == "bf16" and precision.resolve("fp32", "cpu") == "fp32"


@pytest.mark.parametrize("name", TINY)
def test_bf16_agrees_with_fp32_and_the_head_runs_fp32(native, name, monkeypatch):
    torch.manual_seed(0)
    model = load_model(name)
    image = _image()
    ref = Segmenter(model, precision="fp32")(image, VOCAB, return_scores=True)
    seen = []
    cls = type(model)
    for method in ("classify", "classify_at", "finalize", "image_stats"):
        plain = getattr(cls, method)

        def spy(self, first, *args, _plain=plain, _method=method, **kw):
            out = _plain(self, first, *args, **kw)
            tensors = [t for t in torch.utils._pytree.tree_leaves((first, args)) if torch.is_tensor(t)]
            seen.append((_method, torch.is_autocast_enabled("cpu"), {t.dtype for t in tensors if t.is_floating_point()},
                         out.dtype if torch.is_tensor(out) else None))
            return out
        monkeypatch.setattr(cls, method, spy)
    linears = []                                                     # FastLinear must not bypass autocast
    hooks = [m.register_forward_hook(lambda m, i, o: linears.append((torch.is_autocast_enabled("cpu"), o.dtype)))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    low = Segmenter(model, precision="bf16")(image, VOCAB, return_scores=True)
    for h in hooks:
        h.remove()
    assert any(auto for auto, _ in linears) and all(d == torch.bfloat16 for auto, d in linears if auto), linears
    assert seen and all(not auto and dtypes <= {torch.float32} and out in (None, torch.float32)
                        for _, auto, dtypes, out in seen), seen
    assert low.scores.dtype == torch.float32
    assert not torch.equal(low.scores, ref.scores)                  # the image side did run in bf16
    agreement = (low.labels == ref.labels).float().mean().item()
    assert agreement >= AGREEMENT.get(name, 0.98), (name, agreement)
    monkeypatch.undo()
    again = Segmenter(model, precision="fp32")(image, VOCAB, return_scores=True)
    assert torch.equal(again.scores, ref.scores)                    # fp32 on the same model: unchanged


def test_segment_bf16_end_to_end(native, tmp_path):
    Image.fromarray(_image().permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "a.png"), "--model", TINY[0], "--labels", "a; b",
                 "--precision", "bf16", "--out", str(out)]) == 0
    assert (out / "a.png").is_file() or any(out.glob("a*.png"))


def test_text_cache_keeps_fp32_and_bf16_apart():
    torch.manual_seed(0)
    model, tok, ident = create_clip("tiny-vit")
    names = Vocabulary.parse("cat; dog, puppy; bird").prompts
    calls = []
    enc = TextEncoder(model, tok, ident, "vild")
    orig = enc._encode
    enc._encode = lambda n, p="fp32": calls.append(p) or orig(n, p)
    assert enc.cache_path(names, "bf16") != enc.cache_path(names, "fp32") == enc.cache_path(names)
    full = enc(names)
    assert bf16.KEPT not in model.__dict__
    low = enc(names, precision="bf16")
    assert calls == ["fp32", "bf16"]                # the bf16 request did not get the fp32 entry
    assert low.dtype == torch.float32 and not torch.equal(low, full)
    assert (1 - (low * full).sum(-1)).max() < 1e-3    # bf16 rounding only
    twin = bf16.twin(model, skip="visual")          # the text tower's bf16 twin, made by that request
    assert model.__dict__[bf16.KEPT][1] is twin and twin.token_embedding.weight.dtype == torch.bfloat16
    assert all(a is b for a, b in zip(twin.visual.parameters(), model.visual.parameters()))   # shared, not copied
    fresh = TextEncoder(model, tok, ident, "vild")   # from disk, each from its own entry
    fresh._encode = lambda n, p="fp32": calls.append("again") or orig(n, p)
    assert torch.equal(fresh(names, precision="bf16"), low) and torch.equal(fresh(names), full)
    assert calls == ["fp32", "bf16"]


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["san-tiny", "fcclip-tiny"])
def test_bf16_runs_a_bf16_twin_and_leaves_the_model_untouched(native, name):
    from vocabseg.model import Fp32Module
    torch.manual_seed(0)
    model = load_model(name)
    before = _weights(model)
    seen = []
    for mod_name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            fp32_part = any(isinstance(p, Fp32Module) for n, p in model.named_modules() if mod_name.startswith(n + ".") or n == mod_name)
            m.register_forward_hook(lambda m, i, o, f=fp32_part: seen.append((f, m.weight.dtype, o.dtype)))
    seg = Segmenter(model, precision="bf16")
    seg.set_image(_image())                                          # the image side only (text runs elsewhere)
    assert {(f, w, o) for f, w, o in seen if not f} == {(False, torch.bfloat16, torch.bfloat16)}, seen
    assert all(w == torch.float32 for f, w, o in seen if f)          # FC-CLIP's pixel decoder stays fp32
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert bf16.KEPT in model.__dict__ and bf16.KEPT not in dict(model.named_modules())
    twin = bf16.twin(model)
    assert twin is bf16.twin(model)                         # made once
    norms = [m for m in twin.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert seg.predict(VOCAB).labels.shape == (96, 128)


def test_fp32_never_makes_a_twin_and_the_twin_follows_new_weights(native):
    torch.manual_seed(0)
    model = load_model("maskclip-tiny")
    Segmenter(model, precision="fp32")(_image(), VOCAB)
    assert bf16.KEPT not in model.__dict__
    low = Segmenter(model, precision="bf16")(_image(), VOCAB, return_scores=True)
    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)                                      # in place: the twin must be remade
    again = Segmenter(model, precision="bf16")(_image(), VOCAB, return_scores=True)
    fresh = load_model("maskclip-tiny")
    fresh.load_state_dict(state)
    ref = Segmenter(fresh, precision="bf16")(_image(), VOCAB, return_scores=True)
    assert not torch.equal(again.scores, low.scores) and torch.equal(again.scores, ref.scores)


@pytest.mark.parametrize("n,masked", [(200, False), (300, True)])
def test_bf16_attention_is_sdpa_in_bf16(n, masked, monkeypatch):
    from vocabseg import speed
    monkeypatch.setattr(speed, "ATTENTION_BLOCK", 2 * 3 * n * 40)      # several blocks of rows
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g).bfloat16() for _ in range(3))
    mask = (torch.randn(2, 3, n, n, generator=g) * 3).bfloat16() if masked else None
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                           attn_mask=None if mask is None else mask.float())
    with torch.no_grad():
        out = speed.attention(q, k, v, mask)
        with speed.plain_paths():
            plain = speed.attention(q, k, v, mask)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)   # torch's own bf16 kernel
    err, fused_err = (out.float() - ref).abs().max().item(), (fused.float() - ref).abs().max().item()
    assert err < max(0.02, 2 * fused_err), (err, fused_err)          # bf16 rounding of scores and probabilities
    assert torch.equal(plain, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.equal(speed.attention(q.float(), k.float(), v.float()),
                       torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float()))


@pytest.fixture
def all_native(native, monkeypatch):
    from vocabseg.engine import int8
    monkeypatch.setattr(int8, "native_int8", lambda: True)


def test_the_measured_table_gates_each_preset_and_precision(all_native):
    assert precision.MEASURED                                        # filled by benchmarks/precision.py
    for preset, row in precision.MEASURED.items():
        for p, agree in row.items():
            assert p in precision.CHOICES and 0.0 <= agree <= 1.0
            if agree >= precision.MIN_AGREEMENT:
                assert precision.resolve(p, "cpu", preset) == p
            else:
                with pytest.raises(UserError) as e:
                    precision.resolve(p, "cpu", preset)
                assert f"{100 * agree:.1f} % of pixels" in str(e.value) and preset in str(e.value)
        assert precision.resolve("auto", "cpu", preset) == \
            ("bf16" if row.get("bf16", 1.0) >= precision.MIN_AGREEMENT else "fp32")
    assert precision.resolve("int8", "cpu", "not-measured") == "int8"   # unmeasured presets are not gated


def test_a_precision_measured_under_99_percent_is_refused_in_one_line(all_native, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(precision.MEASURED, "maskclip-tiny", {"bf16": 0.9512, "int8": 0.995})
    model = load_model("maskclip-tiny")
    line = ("precision bf16 is not offered for maskclip-tiny: its argmax agreed with fp32 on only 95.1 % of pixels "
            "(measured with random weights; 99 % needed); use fp32")
    with pytest.raises(UserError) as e:
        Segmenter(model, precision="bf16")
    assert str(e.value) == line
    assert Segmenter(model, precision="auto").precision == "fp32"
    assert Segmenter(model, precision="int8").precision == "int8"
    Image.fromarray(_image().permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--model", "maskclip-tiny", "--labels", "a; b",
                 "--precision", "bf16", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"vocabseg segment: error: {line}\n"
    assert not (tmp_path / "out").exists()


def test_every_full_preset_is_measured():
    assert sorted(all_specs()) == sorted(precision.MEASURED)          # the non-test presets, none left ungated
