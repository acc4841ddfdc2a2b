"""bf16 on CPU: refused where not native, ``auto``, the head in fp32, the text cache key."""
import pytest
import torch
from PIL import Image

from vocabseg.api import Segmenter, load_model
from vocabseg.backbones.clip import create_clip
from vocabseg.cli import main
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
    enc._encode = lambda n: calls.append(torch.is_autocast_enabled("cpu")) or orig(n)
    assert enc.cache_path(names, "bf16") != enc.cache_path(names, "fp32") == enc.cache_path(names)
    full = enc(names)
    low = enc(names, precision="bf16")
    assert calls == [False, True]                   # the bf16 request did not get the fp32 entry
    assert low.dtype == torch.float32 and not torch.equal(low, full)
    fresh = TextEncoder(model, tok, ident, "vild")   # from disk, each from its own entry
    fresh._encode = lambda n: calls.append("again") or orig(n)
    assert torch.equal(fresh(names, precision="bf16"), low) and torch.equal(fresh(names), full)
    assert calls == [False, True]
