"""ResCLIP on SCLIP / ClearCLIP / NACLIP: RCS, SFR's mask, settings, switches, the
Segmenter cache and checkpoints, on the tiny presets."""
import math

import pytest
import torch

import vocabseg
from vocabseg import registry
from vocabseg.checkpoint import save_checkpoint
from vocabseg.methods.trainingfree.model import TrainingFreeCLIP, gaussian_bias
from vocabseg.methods.trainingfree.presets import build
from vocabseg.methods.trainingfree.resclip import (ResCLIP, patch_labels, path_ok, resclip_attention,
                                                   sfr_matrix)


@pytest.fixture(scope="module")
def naclip():
    torch.manual_seed(0)
    return registry.build("naclip-tiny+resclip")


def loop_sfr(labels, std, delete):
    """SFR's M from the spec, pair by pair (float64, then the published float16 rounding)."""
    h, w = labels.shape
    n = h * w
    lab = [int(v) for v in labels.reshape(-1)]
    pos = [(i // w, i % w) for i in range(n)]
    top = max(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in pos for b in pos)
    ts = torch.linspace(0, 1, top + 1).tolist() if top else [0.0]
    m = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            v = 1.0 if (lab[i] == lab[j] or i == j) else 0.0
            steps = max(abs(pos[i][0] - pos[j][0]), abs(pos[i][1] - pos[j][1]))
            if delete and top:
                ok = True
                for k in range(steps + 1):
                    t = torch.tensor(ts[k])
                    r = int(torch.round(pos[i][0] * (1 - t) + pos[j][0] * t))
                    c = int(torch.round(pos[i][1] * (1 - t) + pos[j][1] * t))
                    ok &= lab[r * w + c] == lab[i]
                v = v if ok else v * math.exp(-steps / top)
            m[i][j] = v
    size = min(n, int(6 * std + 1))
    size += 1 - size % 2
    g = [math.exp(-((x - size // 2) ** 2) / (2 * std ** 2)) for x in range(size)]
    g = [v / sum(g) for v in g]
    out = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    for i in range(n):
        row = [max(0.0, sum(g[t] * m[i][j + t - size // 2] for t in range(size) if 0 <= j + t - size // 2 < n))
               for j in range(n)]
        out[i + 1, 1:] = torch.tensor(row) / (sum(row) + 1e-8)
    return out / out.max()


def test_line_of_sight_on_a_hand_checked_row():
    """Labels 1 1 2 1 1 in one row (max_steps 4): a pair's samples are start + (end - start)·k/4,
    k = 0..steps, rounded half to even."""
    ok, steps, top = path_ok(torch.tensor([[1, 1, 2, 1, 1]]))
    assert top == 4 and steps[0, 3] == 3
    assert ok[0, 1] and ok[3, 4] and ok[4, 3]      # neighbours of one label
    assert not ok[0, 3]                            # samples 0, 0.75->1, 1.5->2 (label 2)
    assert not ok[1, 3]                            # samples 1, 1.5->2
    assert not ok[4, 0] and ok[1, 0]
    # a short pair only looks part of the way: 0 -> 2 samples 0, 0.5->0, 1.0->1, never reaching patch 2
    ok2, _, _ = path_ok(torch.tensor([[5, 5, 7, 7, 7]]))
    assert ok2[0, 2] and not ok2[0, 4]


@pytest.mark.parametrize("delete", [True, False])
def test_sfr_matrix_matches_the_pairwise_construction(delete):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3, 4), generator=g)
    m = sfr_matrix(labels, std=1.0, delete_same_entity=delete)
    ref = loop_sfr(labels, 1.0, delete)
    assert m.dtype == torch.float16 and m.shape == (13, 13)
    assert torch.allclose(m.double(), ref.half().double(), atol=1e-3)
    assert (m[0] == 0).all() and (m[:, 0] == 0).all() and m.max() == 1
    # the blur runs along the flattened index: the end of row 0 feeds the start of row 1
    # (patch (0, 7) alone: its row spreads to index 8 = (1, 0), far in 2D; the kernel's half width is 3)
    one = torch.zeros(2, 8, dtype=torch.long)
    one[0, 7] = 1
    blurred = sfr_matrix(one, std=1.0, delete_same_entity=False).float()
    assert blurred[1 + 7, 1 + 8] > 0 and blurred[1 + 7, 1 + 10] > 0 and blurred[1 + 7, 1 + 11] == 0


def test_patch_labels_take_the_mode_smallest_on_ties():
    lab = torch.tensor([[3, 3, 1, 2, 9],
                        [3, 0, 1, 2, 9],
                        [9, 9, 9, 9, 9]])
    assert patch_labels(lab, 2, (1, 2)).tolist() == [[3, 1]]     # right patch: 1 1 2 2 -> 1


@pytest.mark.parametrize("base", ["sclip", "clearclip", "naclip"])
def test_rcs_after_softmax_sfr_before(base):
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 2, 5, 4, generator=g), torch.randn(1, 2, 5, 4, generator=g)
    rcs = torch.rand(1, 2, 5, 5, generator=g).softmax(-1)
    sfr = torch.rand(1, 1, 5, 5, generator=g).half()
    omega = gaussian_bias((2, 2), 5.0)
    a = resclip_attention(base, q, k, omega, rcs, (2.0, 0.3), sfr, (1.8, 0.7))
    s = 0.5
    lq, lk = q @ q.transpose(-2, -1) * s, k @ k.transpose(-2, -1) * s
    fb = lambda l: 1.8 * (0.3 * l + (0.7 * sfr).float())       # λ·M is a float16 product, as published
    base_a = {"sclip": fb(lq).softmax(-1) + fb(lk).softmax(-1), "clearclip": fb(lq).softmax(-1),
              "naclip": (fb(lk) + omega).softmax(-1)}[base]
    assert torch.allclose(a, 2.0 * (0.7 * base_a + 0.3 * rcs), atol=1e-6)
    assert torch.allclose(resclip_attention(base, q, k, omega), {"sclip": lq.softmax(-1) + lk.softmax(-1),
                                                                 "clearclip": lq.softmax(-1),
                                                                 "naclip": (lk + omega).softmax(-1)}[base])


def test_rcs_is_the_mean_of_the_chosen_blocks_attention(naclip):
    torch.manual_seed(2)
    images = torch.randn(1, 3, 32, 48)
    feats = naclip.encode_image(images)
    x, _ = naclip.vit.embed(images)
    maps = []
    for i, blk in enumerate(naclip.clip.visual.transformer.resblocks[:-1]):
        y = blk.ln_1(x)
        _, w = blk.attn(y, y, y, need_weights=True, average_attn_weights=False)
        maps.append(w)
        x = blk(x)
    assert naclip.rcs_blocks == (1, 2)
    assert torch.allclose(feats.rcs, torch.stack(maps[1:3]).mean(0), atol=1e-6)
    assert torch.allclose(feats.tokens, x, atol=1e-5)


@pytest.mark.parametrize("base", ["sclip", "clearclip", "naclip"])
def test_with_rcs_and_sfr_off_it_is_the_base_method(base):
    torch.manual_seed(3)
    m = registry.build(f"{base}-tiny+resclip", rcs=False, sfr=False)
    plain = TrainingFreeCLIP(m.clip, m.tokenizer, m.clip_identity, base)
    images, text = torch.randn(1, 3, 32, 48), torch.nn.functional.normalize(torch.randn(3, 32), dim=-1)
    vocab = vocabseg.Vocabulary.resolve("a; b; c")
    assert m.encode_image(images).rcs is None
    assert torch.allclose(m.classify(m.encode_image(images), text, vocab),
                          plain.classify(plain.encode_image(images), text, vocab), atol=1e-5)


def test_published_settings_shared_by_the_bases():
    for base in ("sclip", "clearclip", "naclip"):
        m = build(base, clip_arch="tiny-vit", clip_weights=None, resclip=True, rcs_blocks=(1, 2))
        assert (m.protocol.short_side, m.protocol.window, m.protocol.stride, m.temp_thd) == (336, 224, 112, 0.25)
        m.set_dataset("voc21")
        assert (m.protocol.mode, m.prob_thd, m.temp_thd, m.rcs_weights, m.sfr_weights) == \
            ("whole", 0.1, 0.5, (2.0, 0.3), (2.2, 0.7))
        m.set_dataset("cityscapes")
        assert (m.protocol.short_side, m.protocol.window, m.temp_thd, m.rcs_weights, m.sfr_weights) == \
            (560, 224, 0.1, (2.0, 0.2), (2.1, 0.6))
        m.set_dataset("coco-stuff")
        assert (m.protocol.short_side, m.logit_scale, m.temp_thd, m.sfr_weights) == (336, 40.0, 0.11, (1.8, 0.7))
    spec = registry.get_spec("naclip-vit-b16+resclip")
    assert spec.published["voc20"] == 86.0 and spec.published["ade150"] == 18.0
    assert isinstance(registry.build("sclip-tiny", resclip=True, rcs_blocks=(0, 1)), ResCLIP)
    with pytest.raises(ValueError, match="rcs_blocks"):
        registry.build("naclip-tiny+resclip", rcs_blocks=(3,))       # tiny-vit's last block
    with pytest.raises(ValueError, match="ResCLIP runs on"):
        registry.build("maskclip-tiny", resclip=True)


def test_segmenter_cache_and_checkpoint_round_trip(naclip, tmp_path, monkeypatch):
    seg = vocabseg.Segmenter(naclip)
    img = (torch.rand(3, 40, 60) * 255).byte()
    calls = []
    encode = type(naclip).encode_image
    monkeypatch.setattr(type(naclip), "encode_image", lambda self, x: calls.append(1) or encode(self, x))
    a = seg(img, "cat; dog, puppy; tree", return_scores=True)
    n = len(calls)
    b = seg.predict("tree; cat; dog, puppy", return_scores=True)
    assert len(calls) == n > 1
    assert torch.allclose(a.scores[[2, 0, 1]], b.scores, atol=1e-5)
    save_checkpoint(naclip, tmp_path / "ckpt")
    again = registry.load_checkpoint(tmp_path / "ckpt")
    assert isinstance(again, ResCLIP) and again.rcs_blocks == (1, 2)
    c = vocabseg.Segmenter(again)(img, "cat; dog, puppy; tree", return_scores=True)
    assert torch.equal(c.labels, a.labels) and torch.allclose(c.scores, a.scores, atol=1e-6)


def test_batched_windows_equal_one_at_a_time(naclip):
    from vocabseg.engine.inference import infer
    from vocabseg.engine.inference.batched import infer_batch
    vocab = vocabseg.Vocabulary.resolve("cat; dog; tree")
    text = naclip.text_encoder()(vocab)
    images = [torch.rand(3, 40, 60), torch.rand(3, 50, 40)]
    many = infer_batch(naclip, images, text, vocab, max_crops=4)
    for im, b in zip(images, many):
        assert torch.allclose(infer(naclip, im, text, vocab), b, atol=1e-5)
