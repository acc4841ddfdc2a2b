"""SegCLIP's assignment and losses against independent computations."""
import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from vocabseg.methods.segclip import losses as L
from vocabseg.methods.segclip.group import SemanticGroup, gumbel_assign


def test_gumbel_hard_forward_and_straight_through_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, 30, generator=g, requires_grad=True)
    gumbels = -torch.empty(2, 8, 30).exponential_(generator=g).log()
    out = gumbel_assign(logits, tau=0.9, dim=1, gumbels=gumbels)
    # one-hot over the centers, at the argmax of the noisy logits
    assert torch.allclose(out.sum(1), torch.ones(2, 30), atol=1e-6)
    assert torch.all((out - out.round()).abs() < 1e-6)
    assert torch.equal(out.argmax(1), (logits + gumbels).argmax(1))
    # the gradient is the soft (Gumbel-softmax) one
    w = torch.randn(2, 8, 30, generator=g)
    (grad,) = torch.autograd.grad((out * w).sum(), logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    soft = ((ref_logits + gumbels) / 0.9).softmax(1)
    (ref,) = torch.autograd.grad((soft * w).sum(), ref_logits)
    assert torch.allclose(grad, ref, atol=1e-6) and grad.abs().sum() > 0


def test_eval_assignment_is_argmax_of_logits():
    torch.manual_seed(0)
    group = SemanticGroup(48, num_centers=8, heads=3).eval()
    x = torch.randn(2, 20, 48)
    regions, hard, soft = group(x)
    logits, _, _ = group.logits(x)
    assert torch.equal(hard, F.one_hot(logits.argmax(1), 8).permute(0, 2, 1).float())
    assert torch.allclose(soft, logits.softmax(1))
    group.train()
    _, noisy, _ = group(x)     # training draws Gumbel noise, still one-hot
    assert torch.allclose(noisy.sum(1), torch.ones(2, 20), atol=1e-6)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_superpixel_kl_hand_built():
    # 1 image, 3 centers, 2x2 patches; superpixels: top row = 5, bottom row = 9
    assign = torch.tensor([[[1., 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]]])   # [B, L, N]
    sp = torch.tensor([[[5, 5], [9, 9]]])
    got = L.superpixel_kl(assign, sp).item()
    a = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]                       # per patch
    mean = [[0.5, 0.5, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.5, 0, 0.5]]    # averaged within the superpixel
    kl1 = sum(_kl(_softmax(m), _softmax(x)) for x, m in zip(a, mean)) / 12
    kl2 = sum(_kl(_softmax(x), _softmax(m)) for x, m in zip(a, mean)) / 12
    assert got == pytest.approx((kl1 + kl2) / 2, rel=1e-6)
    assert L.superpixel_kl(assign, torch.tensor([[[1, 2], [3, 4]]])).item() == pytest.approx(0.0, abs=1e-7)


def _worker(rank, world, path, text, image, scale):
    torch.distributed.init_process_group("gloo", init_method=f"file://{path}/store", rank=rank, world_size=world)
    b = text.shape[0] // world
    t = text[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    v = image[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    s = scale.clone().requires_grad_(True)
    loss = L.contrastive_loss(t, v, s)
    loss.backward()
    torch.save({"loss": loss.detach(), "t": t.grad, "v": v.grad, "s": s.grad}, f"{path}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_contrastive_gathered_over_two_processes_equals_single(tmp_path):
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    scale = torch.tensor(math.log(1 / 0.07))
    mp.spawn(_worker, args=(2, str(tmp_path), text, image, scale), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    t, v, s = (x.clone().requires_grad_(True) for x in (text, image, scale))
    single = L.contrastive_loss(t, v, s)
    single.backward()
    # independent: symmetric InfoNCE on the whole batch
    tn, vn = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    logits = scale.exp() * tn @ vn.t()
    ref = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6))) / 2
    assert single.item() == pytest.approx(ref.item(), rel=1e-6)
    # DDP averages gradients over ranks: the mean of the rank losses / gradients is the single-process one
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(single.item(), rel=1e-6)
    assert torch.allclose(torch.cat([r["t"] for r in ranks]) / 2, t.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["v"] for r in ranks]) / 2, v.grad, atol=1e-6)
    assert torch.allclose(sum(r["s"] for r in ranks) / 2, s.grad, atol=1e-6)


def test_masking_and_reconstruction_loss():
    torch.manual_seed(0)
    x = torch.arange(17.).view(1, 17, 1).expand(2, 17, 4)
    kept, mask, restore = L.random_masking(x, 0.75)
    assert kept.shape == (2, 4, 4) and torch.all(kept[:, 0] == 0)        # int(17 * 0.25) = 4, class token first
    assert mask.sum(1).tolist() == [13, 13] and torch.all(mask[:, 0] == 0)
    full = torch.cat([kept, torch.full((2, 13, 4), -1.)], 1).gather(1, restore.unsqueeze(-1).expand(-1, -1, 4))
    assert torch.equal(full[mask == 0], x[mask == 0])                    # restore puts kept tokens back
    images = torch.randn(2, 3, 32, 32)
    patches = L.patchify(images, 16)
    assert torch.equal(patches[0, 1].view(16, 16, 3)[2, 5], images[0, :, 2, 16 + 5])
    pred = torch.zeros(2, 4, 768)
    m = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 0, 1, 0.]])
    want = torch.stack([patches[0, 0].pow(2).mean(), patches[0, 3].pow(2).mean(), patches[1, 2].pow(2).mean()]).mean()
    assert torch.allclose(L.reconstruction_loss(pred, images, m, 16), want)


def test_sincos_positions_match_mae_formula():
    pe = L.sincos_pos_embed(8, 3)
    assert pe.shape == (10, 8) and torch.all(pe[0] == 0)
    h, w = 1, 2                       # row 1, column 2 -> token 1 + 1 * 3 + 2
    omega = 1 / 10000 ** (np.arange(2) / 2.0)
    want = np.concatenate([np.sin(w * omega), np.cos(w * omega), np.sin(h * omega), np.cos(h * omega)])
    assert np.allclose(pe[1 + h * 3 + w].numpy(), want, atol=1e-6)
