"""SAN training: forward_train's losses, targets and gradients, and a tiny SAN
overfitting a few synthetic images."""
import pytest
import torch
import torch.nn.functional as F

from vocabseg.registry import get_spec
from vocabseg.vocab import Vocabulary

COLORS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1]])


def scene(g, size=64):
    """A background (class 0) with three axis-aligned boxes of classes 1..3 on a size/8 grid."""
    cell = size // 8
    sem = torch.zeros(size, size, dtype=torch.long)
    for c in (1, 2, 3):
        y, x = (torch.randint(0, 5, (2,), generator=g) * cell).tolist()
        h, w = (torch.randint(2, 5, (2,), generator=g) * cell).tolist()
        sem[y:y + h, x:x + w] = c
    img = COLORS[sem].permute(2, 0, 1) + 0.03 * torch.randn(3, size, size, generator=g)
    return {"image": img.clamp(0, 1), "sem_seg": sem}


def test_forward_train_losses_targets_and_gradients():
    torch.manual_seed(0)
    model = get_spec("san-tiny").build().train()
    vocab = Vocabulary.parse("red; green; blue; yellow")
    g = torch.Generator().manual_seed(1)
    a = scene(g)
    b = {"image": torch.rand(3, 48, 80), "sem_seg": torch.full((48, 80), 255, dtype=torch.long)}
    b["sem_seg"][:20, :30] = 2
    seen = {}
    inner = model.criterion.forward

    def spy(outputs, targets):
        seen.update(outputs=outputs, targets=targets)
        return inner(outputs, targets)
    model.criterion.forward = spy
    losses = model.forward_train([a, b], vocab)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    out, tgt = seen["outputs"], seen["targets"]
    assert out["pred_logits"].shape == (2, 8, 5) and out["pred_masks"].shape == (2, 8, 64 // 8, 96 // 8)
    assert len(out["aux_outputs"]) == 1          # side block 2 (aux) and 3 (main)
    assert tgt[0]["labels"].tolist() == [0, 1, 2, 3] and tgt[1]["labels"].tolist() == [2]
    # masks padded like the images (to 64 x 96, a multiple of 32), the ignore label has no mask
    assert tgt[0]["masks"].shape == (4, 64, 96) and tgt[1]["masks"].shape == (1, 64, 96)
    assert tgt[1]["masks"].sum() == 20 * 30 and tgt[1]["masks"][0, :20, :30].all()
    total = sum(losses.values())
    total.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"bg_embed", "clip.visual.positional_embedding", "side.query_embed",
            "side.mask_decoder.bias_scaling.weight", "side.fusion_layers.layer_0.input_proj.1.weight"} <= grads
    assert all(n.startswith("side.") or n in ("bg_embed", "clip.visual.positional_embedding") for n in grads)


def uniform_point_loss(model, batch, vocab, text):
    """The training loss with the mask terms on uniformly drawn points (the
    importance-sampled ones sit on mask borders, where a fitted mask stays uncertain)."""
    crit = model.criterion
    crit.importance_sample_ratio, ratio = 0.0, crit.importance_sample_ratio
    torch.manual_seed(123)
    with torch.no_grad():
        loss = sum(model.forward_train(batch, vocab, text=text).values()).item()
    crit.importance_sample_ratio = ratio
    return loss


pytestmark = pytest.mark.usefixtures("one_thread")     # conftest.py


@pytest.mark.slow
def test_tiny_san_overfits_a_few_images():
    """Class text embeddings are fixed unit vectors (a random CLIP text tower gives
    nearly parallel ones); everything SAN trains is trained with the published loss,
    AdamW, poly schedule and full-model gradient clipping at norm 0.01."""
    torch.manual_seed(0)
    model = get_spec("san-tiny").build().train()
    vocab = Vocabulary.parse("red; green; blue; yellow")
    g = torch.Generator().manual_seed(0)
    batch = [scene(g, 128) for _ in range(3)]
    text = F.normalize(torch.randn(len(vocab), model.vit.output_dim, generator=g), dim=-1)
    steps = 100
    groups = model.param_groups({"lr": 1e-2, "weight_decay": 1e-4})
    params = [p for group in groups for p in group["params"]]
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 - it / steps) ** 0.9)
    before = uniform_point_loss(model, batch, vocab, text)
    for _ in range(steps):
        loss = sum(model.forward_train(batch, vocab, text=text).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.01)
        opt.step()
        sched.step()
    after = uniform_point_loss(model, batch, vocab, text)
    assert after < before / 10, (before, after)
    model.eval()
    with torch.no_grad():
        images = torch.stack([b["image"] for b in batch])
        mean, std = torch.tensor(model.protocol.mean), torch.tensor(model.protocol.std)
        feats = model.encode_image((images - mean.view(3, 1, 1)) / std.view(3, 1, 1))
        pred = model.classify(feats, text, vocab).argmax(1)
    assert (pred == torch.stack([b["sem_seg"] for b in batch])).float().mean() > 0.95
