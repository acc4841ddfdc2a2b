import numpy as np
import torch

from vocabseg.data import transforms as T

PALETTE = torch.tensor([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]],
                       dtype=torch.uint8)


def _blocky_item(h=48, w=64, seed=0, block=8):
    """Image made of constant-colour blocks; sem_seg = palette index of the colour."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, len(PALETTE), (h // block, w // block), generator=g)
    cls = cls.repeat_interleave(block, 0).repeat_interleave(block, 1)
    image = PALETTE[cls].permute(2, 0, 1).contiguous()
    pan = cls * 10 + 1  # one segment per class
    segs = [dict(id=int(c) * 10 + 1, category_id=int(c), isthing=True, iscrowd=int(c == 4), area=0)
            for c in torch.unique(cls)]
    return dict(image=image, sem_seg=cls.long(), pan_seg=pan.long(), segments_info=segs, file_name="x")


def _label_from_image(image):
    """Palette index of each pixel's exact colour, -1 where no palette colour matches."""
    eq = (image.permute(1, 2, 0)[:, :, None, :] == PALETTE[None, None]).all(-1)  # H W K
    return torch.where(eq.any(-1), eq.float().argmax(-1), torch.tensor(-1))


def test_flip_and_crop_keep_labels_exactly_aligned():
    item = _blocky_item()
    rng = np.random.default_rng(1)
    for t in [T.RandomFlip(1.0), T.RandomCrop((30, 20)), T.Compose([T.RandomFlip(1.0), T.RandomCrop(17)])]:
        out = t(item, rng)
        lab = _label_from_image(out["image"])
        assert torch.equal(lab, out["sem_seg"])
        assert torch.equal(out["pan_seg"], out["sem_seg"] * 10 + 1)
    flipped = T.RandomFlip(1.0)(item)
    assert torch.equal(flipped["image"], item["image"].flip(-1))
    assert torch.equal(T.RandomFlip(0.0)(item)["sem_seg"], item["sem_seg"])


def test_resize_keeps_alignment_away_from_edges():
    item = _blocky_item()
    for size in [(96, 128), (30, 40), (61, 77)]:
        out = T.resize(item, size)
        assert out["image"].shape == (3, *size) and out["sem_seg"].shape == size
        lab = _label_from_image(out["image"])
        ok = lab >= 0  # pixels whose colour is still a pure palette colour (block interiors)
        assert ok.float().mean() > 0.3
        assert torch.equal(lab[ok], out["sem_seg"][ok])
        assert out["sem_seg"].dtype == torch.long


def test_crop_pads_with_128_and_ignore():
    item = _blocky_item(h=16, w=24)
    item["ignore_index"] = 255
    out = T.RandomCrop(40)(item, np.random.default_rng(0))
    assert out["image"].shape == (3, 40, 40)
    assert (out["image"][:, 16:, :] == 128).all() and (out["image"][:, :, 24:] == 128).all()
    assert (out["sem_seg"][16:, :] == 255).all() and (out["sem_seg"][:, 24:] == 255).all()
    assert (out["pan_seg"][16:, :] == 0).all()
    assert torch.equal(out["sem_seg"][:16, :24], item["sem_seg"])
    # ignore index taken from the item
    item["ignore_index"] = 65535
    assert (T.RandomCrop(40)(item)["sem_seg"][20:] == 65535).all()
    assert (T.RandomCrop(40, ignore_index=7)(item)["sem_seg"][20:] == 7).all()


def test_category_ratio_crop_avoids_single_class_crops():
    sem = torch.zeros(64, 64, dtype=torch.long)
    sem[:, 56:] = 1
    item = dict(image=torch.zeros(3, 64, 64, dtype=torch.uint8), sem_seg=sem)
    rng = np.random.default_rng(0)
    plain = [T.RandomCrop(16)(item, rng)["sem_seg"].unique().numel() for _ in range(40)]
    constrained = [T.RandomCrop(16, cat_max_ratio=0.75)(item, rng)["sem_seg"].unique().numel()
                   for _ in range(40)]
    assert sum(n > 1 for n in constrained) > sum(n > 1 for n in plain)


def test_resize_shortest_edge_matches_detectron2_rounding():
    assert T.shortest_edge_size(480, 640, 320, 2560) == (320, 427)
    assert T.shortest_edge_size(640, 480, 320, 2560) == (427, 320)
    assert T.shortest_edge_size(100, 1000, 640, 2560) == (256, 2560)
    item = _blocky_item()
    out = T.ResizeShortestEdge([24, 40], 1000)(item, np.random.default_rng(3))
    assert min(out["image"].shape[-2:]) in (24, 40)


def test_lsj_output_size_alignment_and_instances():
    item = _blocky_item()
    item["instances"] = T.panoptic_to_instances(item["pan_seg"], item["segments_info"])
    t = T.lsj_transform(size=32)
    for seed in range(5):
        out = t(item, np.random.default_rng(seed))
        assert out["image"].shape == (3, 32, 32) and out["pan_seg"].shape == (32, 32)
        inst = out["instances"]
        assert inst["masks"].shape[1:] == (32, 32)
        rebuilt = T.panoptic_to_instances(out["pan_seg"], out["segments_info"])
        assert torch.equal(rebuilt["masks"], inst["masks"]) and torch.equal(rebuilt["labels"], inst["labels"])
        pad = out["pan_seg"] == 0
        assert (out["image"][:, pad] == 128).all()


def test_color_jitter_changes_only_the_image_and_is_seeded():
    item = _blocky_item()
    a = T.ColorJitter()(item, np.random.default_rng(5))
    b = T.ColorJitter()(item, np.random.default_rng(5))
    assert torch.equal(a["image"], b["image"]) and a["image"].dtype == torch.uint8
    assert torch.equal(a["sem_seg"], item["sem_seg"])
    changed = any(not torch.equal(T.ColorJitter()(item, np.random.default_rng(s))["image"], item["image"])
                  for s in range(4))
    assert changed
    # pixels of one colour stay one colour: jitter is a per-pixel function of colour
    out = a["image"].permute(1, 2, 0).reshape(-1, 3)
    src = item["image"].permute(1, 2, 0).reshape(-1, 3)
    for c in PALETTE:
        sel = (src == c).all(-1)
        if sel.any():
            assert (out[sel] == out[sel][0]).all()


# Reference values from OpenCV 5.0 (cv2.cvtColor, AVX2 build) on one row of 40 pixels: the
# first 32 go through its SIMD path (truncation), the last 8 through the scalar one (rounding).
CV_RGB = [[241, 160, 175], [229, 148, 198], [213, 57, 14], [76, 72, 223], [233, 1, 127], [210, 33, 204],
          [30, 119, 209], [77, 87, 71], [184, 65, 253], [113, 122, 129], [149, 141, 130], [254, 206, 202],
          [179, 159, 87], [253, 119, 55], [216, 41, 219], [156, 29, 11], [113, 9, 36], [131, 248, 119],
          [206, 234, 210], [161, 112, 131], [68, 127, 97], [63, 254, 3], [24, 49, 248], [177, 225, 51],
          [184, 94, 125], [0, 158, 212], [169, 39, 136], [68, 247, 225], [47, 130, 240], [216, 181, 163],
          [10, 189, 121], [23, 62, 138], [186, 129, 156], [223, 175, 92], [164, 153, 27], [15, 169, 99],
          [153, 82, 57], [38, 97, 208], [102, 97, 147], [250, 100, 151]]
CV_HSV = [[174, 86, 241], [161, 90, 229], [6, 238, 213], [121, 173, 223], [164, 254, 233], [151, 215, 210],
          [105, 218, 209], [49, 47, 87], [139, 189, 253], [103, 32, 129], [17, 33, 149], [2, 52, 254],
          [23, 131, 179], [10, 200, 253], [149, 207, 219], [4, 237, 156], [172, 235, 113], [57, 133, 248],
          [64, 31, 234], [168, 78, 161], [75, 118, 127], [53, 252, 254], [117, 230, 248], [38, 197, 225],
          [170, 125, 184], [98, 255, 212], [158, 196, 169], [86, 185, 247], [107, 205, 240], [10, 63, 216],
          [79, 241, 189], [110, 213, 138], [166, 78, 186], [19, 150, 223], [28, 213, 164], [76, 232, 169],
          [8, 160, 153], [110, 208, 208], [123, 87, 147], [170, 153, 250]]
CV_HSV2 = [[112, 154, 114], [163, 140, 173], [64, 38, 143], [112, 91, 61], [13, 103, 211], [24, 103, 247],
           [63, 55, 1], [171, 3, 76], [127, 223, 23], [169, 136, 33], [36, 216, 123], [61, 155, 231],
           [65, 145, 71], [37, 144, 49], [12, 237, 62], [141, 12, 46], [96, 226, 248], [164, 149, 145],
           [15, 96, 251], [105, 54, 61], [2, 9, 248], [44, 145, 119], [14, 140, 122], [82, 114, 192],
           [14, 6, 184], [95, 205, 7], [52, 31, 106], [67, 27, 168], [6, 109, 20], [134, 110, 223],
           [174, 88, 14], [151, 71, 175], [41, 90, 231], [132, 135, 195], [22, 232, 255], [38, 105, 238],
           [78, 1, 147], [12, 190, 207], [164, 35, 216], [107, 216, 208]]
CV_BACK = [[45, 63, 114], [173, 78, 131], [121, 143, 124], [39, 45, 61], [211, 162, 125], [247, 227, 147],
           [0, 1, 0], [76, 75, 75], [7, 2, 23], [33, 15, 21], [102, 123, 18], [90, 231, 95], [30, 71, 37],
           [42, 49, 21], [62, 27, 4], [45, 43, 46], [28, 204, 248], [145, 60, 105], [251, 203, 156],
           [48, 54, 61], [248, 239, 239], [87, 119, 51], [122, 86, 55], [106, 192, 169], [184, 181, 179],
           [1, 6, 7], [96, 106, 93], [150, 168, 154], [20, 13, 11], [171, 126, 223], [14, 9, 10],
           [175, 126, 173], [201, 231, 149], [133, 92, 195], [255, 193, 23], [212, 238, 140], [146, 147, 147],
           [207, 114, 53], [216, 186, 202], [32, 108, 208]]


def test_hsv_matches_opencv():
    assert T.rgb_to_hsv(np.array([CV_RGB], dtype=np.float32)).astype(int).tolist() == [CV_HSV]
    assert T.hsv_to_rgb(np.array([CV_HSV2], dtype=np.float32)).astype(int).tolist() == [CV_BACK]


def test_seeding_from_torch_global_rng():
    item = _blocky_item()
    t = T.semantic_train_transform(crop_size=24, short_sizes=[24, 32, 48], max_size=100)
    torch.manual_seed(7)
    a = t(item)
    torch.manual_seed(7)
    b = t(item)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
    assert a["image"].shape == (3, 24, 24)


def test_target_helpers():
    sem = torch.tensor([[0, 0, 255], [3, 3, 0]])
    t = T.sem_seg_to_masks(sem, 255)
    assert t["labels"].tolist() == [0, 3]
    assert torch.equal(t["masks"][1], sem == 3) and t["masks"].dtype == torch.bool
    pan = torch.tensor([[1, 1, 2], [3, 0, 2]])
    segs = [dict(id=1, category_id=5, iscrowd=0), dict(id=2, category_id=7, iscrowd=1),
            dict(id=3, category_id=9, iscrowd=0), dict(id=4, category_id=9, iscrowd=0)]
    inst = T.panoptic_to_instances(pan, segs)
    assert inst["labels"].tolist() == [5, 9, 9]
    assert torch.equal(inst["masks"][0], pan == 1) and not inst["masks"][2].any()
    assert T.panoptic_to_instances(pan, segs, drop_empty=True)["labels"].tolist() == [5, 9]
    assert T.panoptic_to_instances(pan, segs, skip_crowd=False)["labels"].tolist() == [5, 7, 9, 9]


def test_semantic_recipe_pads_last_with_exact_values():
    item = _blocky_item(h=16, w=24)
    t = T.semantic_train_transform(crop_size=32, short_sizes=[16], max_size=100)
    for seed in range(6):  # colour jitter and flip never touch the padding, which stays bottom/right
        out = t(item, np.random.default_rng(seed))
        assert out["image"].shape == (3, 32, 32)
        assert (out["image"][:, 16:, :] == 128).all() and (out["image"][:, :, 24:] == 128).all()
        assert (out["sem_seg"][16:, :] == 255).all() and (out["sem_seg"][:, 24:] == 255).all()
        assert (out["sem_seg"][:16, :24] != 255).all()


def test_resize_equals_detectron2_pil_resize():
    from PIL import Image
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    lab = rng.integers(0, 20, (37, 53))
    for size in [(20, 29), (80, 111), (25, 90)]:
        out = T.resize({"image": torch.from_numpy(img).permute(2, 0, 1), "sem_seg": torch.from_numpy(lab)}, size)
        ref = np.asarray(Image.fromarray(img).resize(size[::-1], Image.BILINEAR))
        ref_lab = np.asarray(Image.fromarray(lab.astype(np.uint8)).resize(size[::-1], Image.NEAREST))
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), ref)
        assert np.array_equal(out["sem_seg"].numpy(), ref_lab)
