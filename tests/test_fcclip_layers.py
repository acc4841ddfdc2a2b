"""Deformable attention, sine positions and decoder blocks against independent computations."""
import math

import pytest
import torch

from vocabseg.methods.fcclip.deform_encoder import reference_points
from vocabseg.methods.fcclip.ms_deform_attn import MSDeformAttn, ms_deform_attn
from vocabseg.methods.fcclip.position import PositionEmbeddingSine


def bilinear_zero(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Value of img [D, H, W] at normalised (x, y): pixel coords x*W - 0.5, y*H - 0.5,
    corners outside the image count as zero."""
    d, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=torch.float64)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx].double()
    return out


def naive_ms_deform_attn(value, shapes, locations, weights):
    n, s, m, d = value.shape
    _, lq, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for p in range(points):
                        x, y = locations[b, q, head, lvl, p].tolist()
                        out[b, q, head] += weights[b, q, head, lvl, p].double() * bilinear_zero(img, x, y)
    return out.reshape(n, lq, m * d).float()


@pytest.mark.parametrize("shapes,heads,points", [([(5, 7), (3, 4), (2, 2)], 2, 3),
                                                 ([(4, 4)], 1, 1),
                                                 ([(6, 3), (1, 5), (3, 3), (2, 1)], 4, 2)])
@pytest.mark.parametrize("impl", ["accumulate", "stack"])
def test_ms_deform_attn_matches_per_point_loop(shapes, heads, points, impl):
    g = torch.Generator().manual_seed(len(shapes) * 10 + heads)
    n, lq, d = 2, 5, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, heads, d, generator=g)
    # locations partly outside [0, 1] to exercise the zero padding
    locations = torch.rand(n, lq, heads, len(shapes), points, 2, generator=g) * 1.6 - 0.3
    weights = torch.rand(n, lq, heads, len(shapes), points, generator=g)
    got = ms_deform_attn(value, shapes, locations, weights, impl=impl)
    want = naive_ms_deform_attn(value, shapes, locations, weights)
    assert got.shape == (n, lq, heads * d)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_ms_deform_attn_shape_errors():
    value = torch.randn(1, 10, 2, 4)
    loc = torch.rand(1, 3, 2, 1, 2, 2)
    w = torch.rand(1, 3, 2, 1, 2)
    with pytest.raises(ValueError, match="level shapes sum to 12"):
        ms_deform_attn(value, [(3, 4)], loc, w)
    with pytest.raises(ValueError, match="unknown impl"):
        ms_deform_attn(value, [(2, 5)], loc, w, impl="cuda")


def test_msdeformattn_offsets_are_normalised_by_level_shape():
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3)]
    mod = MSDeformAttn(d_model=8, levels=2, heads=2, points=2)
    torch.nn.init.normal_(mod.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(mod.attention_weights.weight)
    n, lq, s = 1, 4, 4 * 6 + 2 * 3
    query = torch.randn(n, lq, 8)
    ref = torch.rand(n, lq, 2, 2)
    src = torch.randn(n, s, 8)
    got = mod(query, ref, src, shapes)
    # independent: pixel offsets / (W, H) of each level, softmax over levels x points
    off = mod.sampling_offsets(query).view(n, lq, 2, 2, 2, 2)
    norm = torch.tensor([[6.0, 4.0], [3.0, 2.0]]).view(1, 1, 1, 2, 1, 2)
    loc = ref[:, :, None, :, None, :] + off / norm
    w = mod.attention_weights(query).view(n, lq, 2, 4).softmax(-1).view(n, lq, 2, 2, 2)
    value = mod.value_proj(src).view(n, s, 2, 4)
    want = mod.output_proj(naive_ms_deform_attn(value, shapes, loc, w))
    assert torch.allclose(got, want, atol=1e-5)


def test_msdeformattn_init_is_a_ring_of_points():
    mod = MSDeformAttn(d_model=16, levels=3, heads=4, points=2)
    bias = mod.sampling_offsets.bias.view(4, 3, 2, 2)
    # head 0 points right (1, 0) then (2, 0); head 1 (angle 90 deg) points down
    assert torch.allclose(bias[0, :, 0], torch.tensor([1.0, 0.0]).expand(3, 2), atol=1e-6)
    assert torch.allclose(bias[0, :, 1], torch.tensor([2.0, 0.0]).expand(3, 2), atol=1e-6)
    assert torch.allclose(bias[1, 0, 1], torch.tensor([0.0, 2.0]), atol=1e-6)
    assert torch.count_nonzero(mod.attention_weights.weight) == 0


def test_reference_points_are_pixel_centres():
    ref = reference_points([(2, 4), (1, 1)])
    assert ref.shape == (1, 9, 2, 2)
    assert torch.allclose(ref[0, 0, 0], torch.tensor([0.125, 0.25]))
    assert torch.allclose(ref[0, 7, 1], torch.tensor([0.875, 0.75]))
    assert torch.allclose(ref[0, 8, 0], torch.tensor([0.5, 0.5]))


def test_position_embedding_sine_formula():
    pe = PositionEmbeddingSine(num_feats=4, normalize=True)
    x = torch.zeros(1, 7, 3, 5)
    out = pe(x)
    assert out.shape == (1, 8, 3, 5)
    r, c = 1, 3
    y = (r + 1) / (3 + 1e-6) * 2 * math.pi
    xx = (c + 1) / (5 + 1e-6) * 2 * math.pi
    freqs = [10000 ** (2 * (i // 2) / 4) for i in range(4)]
    want = []
    for v in (y, xx):
        want += [math.sin(v / freqs[0]), math.cos(v / freqs[1]), math.sin(v / freqs[2]), math.cos(v / freqs[3])]
    assert torch.allclose(out[0, :, r, c], torch.tensor(want), atol=1e-6)


def test_both_implementations_give_the_same_gradients():
    shapes = [(4, 5), (2, 3)]
    grads = []
    for impl in ("stack", "accumulate"):
        value = torch.randn(1, 26, 2, 4, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loc = torch.rand(1, 6, 2, 2, 3, 2, generator=torch.Generator().manual_seed(2)).requires_grad_()
        w = torch.rand(1, 6, 2, 2, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
        target = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(7))
        (ms_deform_attn(value, shapes, loc, w, impl=impl) * target).sum().backward()
        grads.append([value.grad, loc.grad, w.grad])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)
