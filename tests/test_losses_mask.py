"""Mask-classification core (losses/): point sampling, Hungarian matcher and the
Mask2Former criterion against independent brute-force computations."""
import itertools
import math

import pytest
import torch

from vocabseg.losses import criterion as crit_mod
from vocabseg.losses.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from vocabseg.losses.matcher import HungarianMatcher
from vocabseg.losses.points import point_sample, uncertain_point_coords


# --- independent references (plain Python loops) --------------------------------
def bilinear(img, x, y):
    """Value of a 2-D tensor at normalised (x, y), pixel centres at (i + 0.5) / size,
    zero outside (grid_sample align_corners=False, zero padding)."""
    h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * float(img[yy, xx])
    return total


def bce(logit, t):
    p = 1 / (1 + math.exp(-logit))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def dice(logits, targets):
    s = [1 / (1 + math.exp(-v)) for v in logits]
    return 1 - (2 * sum(a * b for a, b in zip(s, targets)) + 1) / (sum(s) + sum(targets) + 1)


def brute_cost(logits, masks, labels, tgt_masks, coords, wc, wm, wd):
    q, n = logits.shape[0], labels.shape[0]
    prob = torch.softmax(logits.double(), -1)
    pts = [(float(x), float(y)) for x, y in coords]
    out = torch.zeros(q, n, dtype=torch.float64)
    for i in range(q):
        pl = [bilinear(masks[i], x, y) for x, y in pts]
        for j in range(n):
            tl = [bilinear(tgt_masks[j].float(), x, y) for x, y in pts]
            ce = sum(bce(a, b) for a, b in zip(pl, tl)) / len(pts)
            out[i, j] = wm * ce - wc * prob[i, labels[j]] + wd * dice(pl, tl)
    return out


# --- tests ------------------------------------------------------------------------
def test_point_sample_matches_bilinear_by_hand():
    img = torch.randn(2, 3, 5, 7)
    coords = torch.rand(2, 6, 2) * 1.2 - 0.1   # some points fall outside the image
    out = point_sample(img, coords)
    assert out.shape == (2, 3, 6)
    for n in range(2):
        for c in range(3):
            for p in range(6):
                ref = bilinear(img[n, c], float(coords[n, p, 0]), float(coords[n, p, 1]))
                assert abs(out[n, c, p].item() - ref) < 1e-5


def test_uncertain_points_are_the_most_uncertain_plus_random():
    logits = torch.randn(3, 1, 8, 8)
    torch.manual_seed(5)
    pts = uncertain_point_coords(logits, num_points=20, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert pts.shape == (3, 20, 2)
    torch.manual_seed(5)
    cand = torch.rand(3, 60, 2)                       # the same oversampled candidates
    for n in range(3):
        unc = [-abs(bilinear(logits[n, 0], float(x), float(y))) for x, y in cand[n]]
        order = sorted(range(60), key=lambda i: -unc[i])[:15]
        chosen = {tuple(cand[n, i].tolist()) for i in order}
        assert {tuple(p.tolist()) for p in pts[n, :15]} == chosen
    tail = pts[:, 15:]
    assert ((tail >= 0) & (tail <= 1)).all()


def test_matcher_cost_and_assignment_match_brute_force():
    torch.manual_seed(0)
    q, k, n = 5, 4, 3
    logits = torch.randn(1, q, k + 1)
    masks = torch.randn(1, q, 6, 6) * 3
    tgt = {"labels": torch.tensor([2, 0, 3]), "masks": torch.rand(n, 12, 12) > 0.5}
    m = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=40)
    torch.manual_seed(9)
    (qi, ti), = m({"pred_logits": logits, "pred_masks": masks}, [tgt])
    torch.manual_seed(9)
    coords = torch.rand(1, 40, 2)                     # the matcher's shared points
    ref = brute_cost(logits[0], masks[0], tgt["labels"], tgt["masks"], coords[0], 2.0, 5.0, 5.0)
    ours = m.cost_matrix(logits[0], masks[0], tgt["labels"], tgt["masks"], coords)
    assert torch.allclose(ours.double(), ref, atol=1e-4)
    best = min(sum(ref[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n))
    got = sum(ref[i, j].item() for i, j in zip(qi.tolist(), ti.tolist()))
    assert len(qi) == n and sorted(ti.tolist()) == [0, 1, 2]
    assert abs(got - best) < 1e-6
    assert qi.tolist() == sorted(qi.tolist())


def test_matcher_handles_an_image_without_targets():
    m = HungarianMatcher(num_points=10)
    out = m({"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 4, 4)},
            [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8)}])
    assert out[0][0].numel() == 0 and out[0][1].numel() == 0


class FixedMatcher(torch.nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


def test_criterion_matches_brute_force(monkeypatch):
    torch.manual_seed(1)
    b, q, k, p = 2, 4, 3, 25
    outputs = {"pred_logits": torch.randn(b, q, k + 1), "pred_masks": torch.randn(b, q, 5, 5) * 2}
    targets = [{"labels": torch.tensor([1, 2]), "masks": torch.rand(2, 10, 10) > 0.4},
               {"labels": torch.tensor([0]), "masks": torch.rand(1, 8, 12) > 0.5}]   # different sizes: padded
    indices = [(torch.tensor([0, 3]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    coords = torch.rand(3, p, 2)
    monkeypatch.setattr(crit_mod, "uncertain_point_coords", lambda *a, **kw: coords)
    c = SetCriterion(FixedMatcher(indices), {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
                     eos_coef=0.1, num_points=p)
    losses = c(outputs, targets)
    # cross-entropy: weighted mean with no-object weight 0.1
    num = den = 0.0
    for bi in range(b):
        assign = {int(s): int(targets[bi]["labels"][t]) for s, t in zip(*indices[bi])}
        for qi in range(q):
            y = assign.get(qi, k)
            w = 0.1 if y == k else 1.0
            lp = torch.log_softmax(outputs["pred_logits"][bi, qi].double(), -1)[y].item()
            num += -w * lp
            den += w
    assert abs(losses["loss_ce"].item() - num / den) < 1e-5
    # masks: targets zero-padded to 10 x 12, sampled at the fixed points
    pairs = [(0, 0, 1), (0, 3, 0), (1, 2, 0)]
    bce_sum = dice_sum = 0.0
    for r, (bi, qi, ti) in enumerate(pairs):
        t = torch.zeros(10, 12)
        m = targets[bi]["masks"][ti].float()
        t[: m.shape[0], : m.shape[1]] = m
        pl = [bilinear(outputs["pred_masks"][bi, qi], float(x), float(y)) for x, y in coords[r]]
        tl = [bilinear(t, float(x), float(y)) for x, y in coords[r]]
        bce_sum += sum(bce(a, z) for a, z in zip(pl, tl)) / p
        dice_sum += dice(pl, tl)
    assert abs(losses["loss_mask"].item() - bce_sum / 3) < 1e-5
    assert abs(losses["loss_dice"].item() - dice_sum / 3) < 1e-5
    w = c.weighted(losses)
    assert abs(w["loss_ce"].item() - 2 * losses["loss_ce"].item()) < 1e-6
    assert abs(w["loss_dice"].item() - 5 * losses["loss_dice"].item()) < 1e-6


def test_deep_supervision_repeats_losses_per_aux_output(monkeypatch):
    torch.manual_seed(2)
    coords = torch.rand(1, 16, 2)
    monkeypatch.setattr(crit_mod, "uncertain_point_coords", lambda *a, **kw: coords)
    idx = [(torch.tensor([1]), torch.tensor([0]))]
    c = SetCriterion(FixedMatcher(idx), {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}, num_points=16)
    tgt = [{"labels": torch.tensor([0]), "masks": torch.rand(1, 8, 8) > 0.5}]
    main = {"pred_logits": torch.randn(1, 3, 3), "pred_masks": torch.randn(1, 3, 4, 4)}
    aux = {"pred_logits": torch.randn(1, 3, 3), "pred_masks": torch.randn(1, 3, 4, 4)}
    both = c({**main, "aux_outputs": [aux]}, tgt)
    alone = c(aux, tgt)
    assert set(both) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    for name in ("loss_ce", "loss_mask", "loss_dice"):
        assert torch.allclose(both[name + "_0"], alone[name])
    w = c.weighted(both)
    assert torch.allclose(w["loss_mask_0"], 5 * alone["loss_mask"])


def test_loss_functions_and_gradients():
    x = torch.randn(3, 10, requires_grad=True)
    t = (torch.rand(3, 10) > 0.5).float()
    d = dice_loss(x, t, 2.0)
    ref = sum(dice(x[i].tolist(), t[i].tolist()) for i in range(3)) / 2
    assert abs(d.item() - ref) < 1e-5
    s = sigmoid_ce_loss(x, t, 2.0)
    ref = sum(sum(bce(a, b) for a, b in zip(x[i].tolist(), t[i].tolist())) / 10 for i in range(3)) / 2
    assert abs(s.item() - ref) < 1e-5
    (d + s).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_criterion_rejects_unknown_weight_names():
    with pytest.raises(ValueError, match="unknown loss names"):
        SetCriterion(HungarianMatcher(), {"loss_focal": 1.0})
