"""The bf16 twin's fusions (``vocabseg.bf16``): an MLP's first linear layer and its GELU /
QuickGELU run as one oneDNN matmul, and timm's attention calls run as ``speed.attention``;
both compute the fp32 formula to bf16 rounding and leave the model itself untouched."""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from timm.layers import Mlp

from vocabseg import speed
from vocabseg import bf16


class Net(nn.Module):
    def __init__(self, act, width=64):
        super().__init__()
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=act,
                                             c_proj=nn.Linear(4 * width, width)))
        self.timm = Mlp(width, 2 * width)                      # fc1, GELU, dropout, Identity norm, fc2
        self.other = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x):
        return self.other(self.timm(self.mlp(x)))


@pytest.mark.parametrize("act", [QuickGELU(), nn.GELU(), nn.GELU(approximate="tanh")])
def test_fused_mlps_compute_the_fp32_formula(act):
    torch.manual_seed(0)
    net = speed.use_fast_linears(Net(act).eval())
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(300, 64)
    with torch.no_grad():
        ref = net(x)
        twin = bf16.twin(net)
        out = twin(x.bfloat16()).float()
        fused = [n for n, m in twin.named_modules() if isinstance(m, speed.FusedLinear)]
        exact_gelu = type(act) is QuickGELU or act.approximate == "none"
        assert fused == (["mlp.c_fc", "timm.fc1"] if exact_gelu else ["timm.fc1"])   # tanh GELU and ReLU are not
        assert isinstance(twin.timm.act, nn.Identity) and isinstance(twin.other[1], nn.ReLU)
        err = (out - ref).abs().max().item()
        assert err < 0.03 * ref.abs().max().item(), err                                # bf16 rounding only
        with torch.enable_grad():                                      # the fallback: layer, then activation
            fallback = twin(x.bfloat16()).float()
        assert (fallback - out).abs().max().item() < 0.03 * ref.abs().max().item()
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())   # the fp32 model is untouched
    assert not any(isinstance(m, speed.FusedLinear) for m in net.modules())


def test_quick_gelu_scales_are_folded_into_the_twin_weights():
    torch.manual_seed(0)
    net = Net(QuickGELU()).eval()
    twin = bf16.twin(net)
    assert torch.equal(twin.mlp.c_fc.weight, (net.mlp.c_fc.weight * bf16.QUICK_GELU).bfloat16())
    assert torch.equal(twin.mlp.c_proj.weight, (net.mlp.c_proj.weight / bf16.QUICK_GELU).bfloat16())
    assert twin.mlp.c_fc.post == "swish" and twin.timm.fc1.post == "gelu"


@pytest.mark.parametrize("kw", [{}, {"attn_mask": "float"}, {"dropout_p": 0.0, "is_causal": False}])
def test_blocked_attention_routes_plain_sdpa_calls(kw, monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 70, 16, generator=g).bfloat16() for _ in range(3))
    if kw.get("attn_mask") == "float":
        kw = {"attn_mask": torch.randn(1, 2, 70, 70, generator=g).bfloat16()}
    calls = []
    monkeypatch.setattr(speed, "ATTENTION_BLOCK", 16 * 2 * 70)            # several row blocks
    real = speed.attention
    monkeypatch.setattr(speed, "attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad(), speed.BlockedAttention():
        out = F.scaled_dot_product_attention(q, k, v, **kw)
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # not plain: torch's own
    assert calls == [1]
    mask = kw.get("attn_mask")
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=None if mask is None else mask.float())
    assert (out.float() - ref).abs().max().item() < 0.03
    assert torch.equal(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True))
