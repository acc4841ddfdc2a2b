"""Evaluation metrics against brute-force references written here (pixel loops over
classes and segment pairs), and hand-computed cases."""
import numpy as np
import pytest
import torch

from vocabseg.engine.evaluation.mask_ap import detections, gt_instances, mask_ap
from vocabseg.engine.evaluation.metrics import ConfusionMatrix, PanopticStats, pq_single, semantic_metrics

IGN = 255


def _random_maps(rng, n, c, h=23, w=31):
    """Label maps where class c-1 never occurs in the ground truth (predicted only),
    class c-2 is never predicted (ground truth only), class c-3 occurs nowhere, and
    about 10 % of the pixels are ignored."""
    out = []
    for _ in range(n):
        gt = rng.choice([k for k in range(c) if k not in (c - 1, c - 3)], size=(h, w))
        gt[rng.random((h, w)) < 0.1] = IGN
        pred = np.where(rng.random((h, w)) < 0.6, np.where(gt == IGN, 0, gt), rng.integers(0, c, (h, w)))
        pred[pred == c - 2] = 0
        pred[pred == c - 3] = 1
        out.append((torch.from_numpy(pred), torch.from_numpy(gt)))
    return out


def _reference(pairs, c):
    tp = np.zeros(c); fp = np.zeros(c); fn = np.zeros(c); gt_n = np.zeros(c)
    for pred, gt in pairs:
        p, g = pred.numpy().ravel(), gt.numpy().ravel()
        keep = g != IGN
        p, g = p[keep], g[keep]
        for k in range(c):
            tp[k] += np.sum((p == k) & (g == k))
            fp[k] += np.sum((p == k) & (g != k))
            fn[k] += np.sum((p != k) & (g == k))
            gt_n[k] += np.sum(g == k)
    iou = {k: tp[k] / (tp[k] + fp[k] + fn[k]) for k in range(c) if tp[k] + fp[k] + fn[k] > 0}
    in_gt = [k for k in range(c) if gt_n[k] > 0]
    return {
        "miou_gt": 100 * np.mean([iou[k] for k in in_gt]),
        "miou_any": 100 * np.mean(list(iou.values())),
        "macc": 100 * np.mean([tp[k] / gt_n[k] for k in in_gt]),
        "pacc": 100 * tp.sum() / gt_n.sum(),
        "fwiou": 100 * sum(gt_n[k] / gt_n.sum() * iou[k] for k in in_gt),
        "iou": iou,
    }


def test_semantic_metrics_match_brute_force_with_absent_classes_and_ignore():
    rng = np.random.default_rng(0)
    c = 9
    pairs = _random_maps(rng, 5, c)
    conf = ConfusionMatrix(c, IGN)
    for pred, gt in pairs:
        conf.update(pred, gt)
    got = conf.metrics([f"class{k}" for k in range(c)])
    ref = _reference(pairs, c)
    for key in ("miou_gt", "miou_any", "macc", "pacc", "fwiou"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
    assert got["classes_gt"] == c - 2 and got["classes_any"] == c - 1
    assert got["per_class_iou"][f"class{c - 1}"] == 0.0          # predicted only
    assert got["per_class_iou"][f"class{c - 2}"] == 0.0          # never predicted
    assert got["per_class_iou"][f"class{c - 3}"] is None         # nowhere
    assert got["per_class_iou"]["class0"] == pytest.approx(100 * ref["iou"][0])
    assert got["miou_any"] < got["miou_gt"]                      # the predicted-only class counts 0
    assert got["pixels"] == sum(int((gt != IGN).sum()) for _, gt in pairs)


def test_confusion_matrix_sums_over_images_and_rejects_bad_labels():
    rng = np.random.default_rng(1)
    pairs = _random_maps(rng, 3, 6)
    whole = ConfusionMatrix(6, IGN)
    for pred, gt in pairs:
        whole.update(pred, gt)
    parts = [ConfusionMatrix(6, IGN) for _ in pairs]
    for m, (pred, gt) in zip(parts, pairs):
        m.update(pred, gt)
    assert torch.equal(sum(m.mat for m in parts), whole.mat) and whole.mat.dtype == torch.int64
    with pytest.raises(ValueError, match="ground truth holds label 7: expected 0..5 or the ignore label 255"):
        whole.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [1, 255]]))
    with pytest.raises(ValueError, match="differ in size"):
        whole.update(torch.zeros(2, 3), torch.zeros(2, 2))
    empty = semantic_metrics(torch.zeros(3, 3, dtype=torch.int64))
    assert empty["miou_gt"] is None and empty["pacc"] is None


# --- panoptic quality -----------------------------------------------------------------
def _pq_reference(gt_pan, gt_segs, pred_pan, pred_segs, c):
    """panopticapi's rules, written pair by pair with boolean masks."""
    tp, fp, fn, iou = np.zeros(c), np.zeros(c), np.zeros(c), np.zeros(c)
    void = gt_pan == 0
    matched_g, matched_p = set(), set()
    for g in gt_segs:
        gm = gt_pan == g["id"]
        for p in pred_segs:
            if g.get("iscrowd") or g["category_id"] != p["category_id"]:
                continue
            pm = pred_pan == p["id"]
            inter = np.sum(gm & pm)
            union = pm.sum() + gm.sum() - inter - np.sum(pm & void)
            if inter and inter / union > 0.5:
                tp[g["category_id"]] += 1
                iou[g["category_id"]] += inter / union
                matched_g.add(g["id"]); matched_p.add(p["id"])
    for g in gt_segs:
        if g["id"] not in matched_g and not g.get("iscrowd"):
            fn[g["category_id"]] += 1
    for p in pred_segs:
        if p["id"] in matched_p:
            continue
        pm = pred_pan == p["id"]
        crowd = np.zeros_like(pm)
        for g in gt_segs:   # panopticapi keeps one crowd region per category: the last listed
            if g.get("iscrowd") and g["category_id"] == p["category_id"] and g["id"] not in matched_g:
                crowd = gt_pan == g["id"]
        if (np.sum(pm & void) + np.sum(pm & crowd)) / pm.sum() > 0.5:
            continue
        fp[p["category_id"]] += 1
    return tp, fp, fn, iou


def _random_panoptic(rng, c, h=40, w=48, crowd=True):
    pan = np.zeros((h, w), np.int64)
    segs = []
    for k in range(int(rng.integers(3, 7))):
        sid = int(rng.integers(1, 2 ** 24 - 1))
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        pan[y0:y0 + int(rng.integers(6, 24)), x0:x0 + int(rng.integers(6, 24))] = sid
        segs.append({"id": sid, "category_id": int(rng.integers(0, c)), "iscrowd": int(crowd and rng.random() < 0.2)})
    present = set(np.unique(pan).tolist())
    return pan, [s for s in segs if s["id"] in present]


def _perturb(rng, pan, segs, c):
    """A prediction: the ground truth shifted, relabelled, partly re-categorised, with an extra segment and void."""
    pred = np.roll(pan, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), (0, 1))
    ids = {s["id"]: int(rng.integers(1, 10 ** 6)) for s in segs}
    out = np.zeros_like(pred)
    for old, new in ids.items():
        out[pred == old] = new
    segs = [{"id": ids[s["id"]], "category_id": s["category_id"] if rng.random() < 0.8 else int(rng.integers(0, c))}
            for s in segs]
    out[rng.random(out.shape) < 0.05] = 0
    y0, x0 = int(rng.integers(0, 30)), int(rng.integers(0, 30))
    out[y0:y0 + 9, x0:x0 + 9] = 424242
    segs.append({"id": 424242, "category_id": int(rng.integers(0, c))})
    present = set(np.unique(out).tolist())
    return out, [s for s in segs if s["id"] in present]


def test_pq_matches_pairwise_reference_on_random_panoptic_maps():
    rng = np.random.default_rng(0)
    c, things = 5, [0, 1, 2]
    stats = PanopticStats(c)
    ref = np.zeros((4, c))
    for _ in range(30):
        gt, gt_segs = _random_panoptic(rng, c)
        pred, pred_segs = _perturb(rng, gt, gt_segs, c)
        stats.update(torch.from_numpy(gt), gt_segs, torch.from_numpy(pred), pred_segs)
        ref += np.stack(_pq_reference(gt, gt_segs, pred, pred_segs, c))
    got = stats.stats.double().numpy()
    assert np.array_equal(got[:, :3], ref[:3].T)
    assert np.allclose(got[:, 3] / 2 ** 32, ref[3], atol=1e-8)
    assert ref[0].sum() > 5 and ref[1].sum() > 5 and ref[2].sum() > 5        # the case is not trivial
    m = stats.metrics(things)
    tp, fp, fn, iou = ref
    for key, sel in (("all", range(c)), ("things", things), ("stuff", [3, 4])):
        ks = [k for k in sel if tp[k] + fp[k] + fn[k] > 0]
        pq = np.mean([iou[k] / (tp[k] + fp[k] / 2 + fn[k] / 2) for k in ks])
        sq = np.mean([iou[k] / tp[k] if tp[k] else 0.0 for k in ks])
        rq = np.mean([tp[k] / (tp[k] + fp[k] / 2 + fn[k] / 2) for k in ks])
        assert m[key]["n"] == len(ks)
        assert (m[key]["pq"], m[key]["sq"], m[key]["rq"]) == pytest.approx((100 * pq, 100 * sq, 100 * rq), abs=1e-6)


def test_pq_hand_built_void_and_crowd_rules():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5] = 1            # thing, category 0, 50 px
    gt[:, 5:8] = 2           # crowd of category 1, 30 px; columns 8-9 are VOID
    pred = np.zeros((10, 10), np.int64)
    pred[:, :4] = 7          # category 0: 40 px inside segment 1 -> IoU 0.8, matched
    pred[:, 4:10] = 8        # category 1: 10 px on segment 1, 30 on crowd, 20 on void -> forgiven
    gt_segs = [{"id": 1, "category_id": 0, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 1}]
    s = pq_single(gt, gt_segs, pred, [{"id": 7, "category_id": 0}, {"id": 8, "category_id": 1}], 3)
    assert s[:, :3].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]] and s[0, 3] == round(0.8 * 2 ** 32)
    pred[:, 4:10] = 9        # the same pixels called category 2: no crowd of 2, only 20/60 on void -> FP
    s = pq_single(gt, gt_segs, pred, [{"id": 7, "category_id": 0}, {"id": 9, "category_id": 2}], 3)
    assert s[2, 1] == 1
    # void pixels of the ground truth leave the union: 40 px on the segment + 40 on void -> IoU 40 / 50
    gt2 = np.zeros((10, 10), np.int64)
    gt2[:, :5] = 1
    pred2 = np.zeros((10, 10), np.int64)
    pred2[:, 1:9] = 5
    s = pq_single(gt2, gt_segs[:1], pred2, [{"id": 5, "category_id": 0}], 3)
    assert s[0, 0] == 1 and s[0, 3] == round(0.8 * 2 ** 32)
    with pytest.raises(ValueError, match="in the map but not in the segment list"):
        pq_single(gt2, gt_segs[:1], pred2, [], 3)
    with pytest.raises(ValueError, match="listed but cover no pixel"):
        pq_single(gt2, gt_segs[:1], pred2, [{"id": 5, "category_id": 0}, {"id": 6, "category_id": 1}], 3)


def test_mask_ap_perfect_wrong_and_missing_predictions():
    rng = np.random.default_rng(0)
    gts, perfect, wrong = [], [], []
    for i in range(3):
        pan, segs = _random_panoptic(rng, 4, crowd=False)
        gts.append(gt_instances(i, torch.from_numpy(pan), segs, thing_ids=[0, 1, 2, 3]))
        masks = torch.stack([torch.from_numpy(pan == s["id"]) for s in segs])
        labels = torch.tensor([s["category_id"] for s in segs])
        perfect += detections(i, {"masks": masks, "scores": torch.rand(len(segs)), "labels": labels})
        wrong += detections(i, {"masks": masks, "scores": torch.rand(len(segs)), "labels": (labels + 1) % 4})
    assert mask_ap(gts, perfect, [0, 1, 2, 3])["ap"] == pytest.approx(100.0)
    assert mask_ap(gts, wrong, [0, 1, 2, 3])["ap"] == pytest.approx(0.0)
    assert mask_ap(gts, [], [0, 1, 2, 3])["ap50"] == 0.0
    half = [d for d in perfect if d["image_id"] != 0]
    assert 0 < mask_ap(gts, half, [0, 1, 2, 3])["ap"] < 100
