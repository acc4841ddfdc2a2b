"""int8 linear weights (``--precision int8``): refused without VNNI / AMX, opt-in, the model untouched."""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vocabseg import speed
from vocabseg.api import Segmenter, load_model
from vocabseg.cli import main
from vocabseg.engine import int8, precision
from vocabseg.errors import UserError

VOCAB = "sky; tree, bush; road; person; car"
REFUSAL = ("precision int8 needs a CPU with int8 dot products (avx512_vnni or avx_vnni or amx_int8), which this cpu "
           "lacks: there it is slower than fp32; use fp32 or auto")


def _image(h=96, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setattr(int8, "native_int8", lambda: True)


def test_without_vnni_int8_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(int8, "native_int8", lambda: False)
    with pytest.raises(UserError) as e:
        Segmenter(load_model("maskclip-tiny"), precision="int8")
    assert str(e.value) == REFUSAL
    Image.fromarray(_image().permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--model", "maskclip-tiny", "--labels", "a; b",
                 "--precision", "int8", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"vocabseg segment: error: {REFUSAL}\n"
    assert precision.resolve("auto", "cpu") in ("fp32", "bf16")          # auto never picks int8


def test_int8_linear_is_the_dequantised_weight_on_a_quantised_activation():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 50, 64, generator=g), torch.randn(96, 64, generator=g) * 0.05, torch.randn(96, generator=g)
    packs = {id(w): (w, b, int8._pack(w, b))}
    with torch.no_grad():
        with speed.int8_linears(packs):
            out = speed.linear(x, w, b)
            other = speed.linear(x, w.clone(), b)                       # an unpacked weight: plain fp32
        deq = int8.quantize_weight(w).dequantize()
    assert torch.equal(other, speed.linear(x, w, b))
    assert out.shape == (2, 50, 96) and out.dtype == torch.float32
    assert (deq - w).abs().max() <= w.abs().amax(1).max() / 127 / 2 + 1e-7  # per-channel rounding
    ref = F.linear(x, deq, b)
    act_step = (x.max() - x.min()) / 255                                # uint8 activation, per tensor
    bound = act_step / 2 * deq.abs().sum(1).max() + 1e-4
    assert (out - ref).abs().max() <= bound, ((out - ref).abs().max(), bound)
    assert not torch.equal(out, F.linear(x, w, b))                      # it did run in int8


def test_int8_is_opt_in_and_leaves_the_model_and_fp32_untouched(native):
    torch.manual_seed(0)
    model = load_model("maskclip-tiny")
    ref = Segmenter(model, precision="fp32")(_image(), VOCAB, return_scores=True)
    assert int8._PACKS not in model.__dict__
    before = {k: v.clone() for k, v in model.state_dict().items()}
    low = Segmenter(model, precision="int8")(_image(), VOCAB, return_scores=True)
    assert int8._PACKS in model.__dict__ and low.scores.dtype == torch.float32
    assert not torch.equal(low.scores, ref.scores)
    assert (low.labels == ref.labels).float().mean() >= 0.9
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert torch.equal(Segmenter(model, precision="fp32")(_image(), VOCAB, return_scores=True).scores, ref.scores)
    packs = int8.packs(model)
    assert packs is int8.packs(model) and len(packs) >= 4
    model.load_state_dict({k: v * 1.01 if v.is_floating_point() else v for k, v in before.items()})
    assert int8.packs(model) is not packs                              # new weights: packed again
