"""Image-caption data for SegCLIP training, and its training transform.

Readers (map-style datasets; each caption is one sample):

- ``CaptionShards(source)``: webdataset tar shards as img2dataset writes them
  (``00000.tar`` holding ``<key>.jpg`` + ``<key>.txt`` [+ ``<key>.json``]).
  ``source`` is a directory (all ``*.tar`` in it), one tar, or a list of tars.
  Members are indexed once (offsets), then read by seeking, so random access is cheap.
- ``CocoCaptions(json_path, image_root, split)``: Karpathy's ``dataset_coco.json``
  (``images[].filename/filepath/split/sentences[].raw``; ``split`` selects,
  "train" by default as published) or COCO's ``captions_*.json``
  (``images`` + ``annotations[].caption``).

Items: ``dict(image=uint8 Tensor[3, H, W] RGB, caption=str, file_name=str, image_id=str)``.

``CaptionTransform`` (run in the DataLoader workers) computes Felzenszwalb
superpixels (scikit-image; scale 224, sigma 0.9, min_size 224) on the image
with short side at most 224, takes a RandomResizedCrop (scale 0.5–1, bicubic)
of the image and the same crop of the superpixel map (nearest), and reduces the
map to the patch grid as the published loader does (mean of the label ids in
each patch, truncated to an integer).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset


def _decode(data: bytes) -> torch.Tensor:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


class CaptionShards(Dataset):
    """img2dataset webdataset shards (``jpg`` + ``txt`` per key)."""

    task = "caption"

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], name: str = "captions"):
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            shards = sorted(Path(source).glob("*.tar"))
        elif isinstance(source, (str, os.PathLike)):
            shards = [Path(source)]
        else:
            shards = [Path(s) for s in source]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing or not shards:
            raise FileNotFoundError(f"no webdataset shards at {source!r}" + (f" (missing {missing[:3]})" if missing else
                                    "; expected *.tar files written by img2dataset (jpg + txt per sample)"))
        self.name = name
        self.shards = shards
        self.samples: list[tuple[int, str, tuple[int, int], tuple[int, int]]] = []
        for si, shard in enumerate(shards):
            found: dict[str, dict[str, tuple[int, int]]] = {}
            with tarfile.open(shard) as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, _, ext = m.name.rpartition(".")
                    if ext.lower() in ("jpg", "txt"):
                        found.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
            for key in sorted(found):
                parts = found[key]
                if "jpg" in parts and "txt" in parts:
                    self.samples.append((si, key, parts["jpg"], parts["txt"]))
        if not self.samples:
            raise FileNotFoundError(f"the shards at {source!r} hold no sample with both .jpg and .txt")

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, shard: int, where: tuple[int, int]) -> bytes:
        with open(self.shards[shard], "rb") as f:
            f.seek(where[0])
            return f.read(where[1])

    def __getitem__(self, i: int) -> dict:
        si, key, jpg, txt = self.samples[i]
        return {"image": _decode(self._read(si, jpg)), "caption": self._read(si, txt).decode("utf-8").strip(),
                "file_name": f"{self.shards[si].name}/{key}.jpg", "image_id": key}


class CocoCaptions(Dataset):
    """COCO captions: Karpathy split JSON or the official ``captions_*.json``."""

    task = "caption"

    def __init__(self, json_path: str | os.PathLike, image_root: str | os.PathLike, split: str = "train",
                 name: str = "coco-captions"):
        path = Path(json_path)
        if not path.is_file():
            raise FileNotFoundError(f"COCO captions file not found: {path} (Karpathy dataset_coco.json "
                                    "or captions_train2014.json)")
        self.name, self.root = name, Path(image_root)
        data = json.loads(path.read_text())
        self.samples: list[tuple[str, str, str]] = []   # (relative image path, caption, image id)
        if "annotations" in data:       # official format
            files = {im["id"]: im["file_name"] for im in data["images"]}
            for a in data["annotations"]:
                self.samples.append((files[a["image_id"]], a["caption"].strip(), str(a["image_id"])))
        elif "images" in data:          # Karpathy format
            for im in data["images"]:
                if im.get("split") != split:
                    continue
                rel = os.path.join(im.get("filepath", ""), im["filename"])
                for s in im["sentences"]:
                    self.samples.append((rel, s["raw"].strip(), str(im.get("cocoid", im["filename"]))))
        else:
            raise ValueError(f"{path} is neither Karpathy's dataset_coco.json nor a COCO captions file")
        if not self.samples:
            raise ValueError(f"{path} has no captions for split {split!r}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        rel, caption, image_id = self.samples[i]
        f = self.root / rel
        if not f.is_file():
            raise FileNotFoundError(f"COCO image not found: {f}")
        return {"image": _decode(f.read_bytes()), "caption": caption, "file_name": rel, "image_id": image_id}


# --- superpixels and the training transform -----------------------------------------
def felzenszwalb(image: np.ndarray, scale: float = 224, sigma: float = 0.9, min_size: int = 224) -> np.ndarray:
    """uint8 [H, W, 3] -> int64 [H, W] superpixel labels (scikit-image)."""
    from skimage.segmentation import felzenszwalb as fz
    return fz(image, scale=scale, sigma=sigma, min_size=min_size).astype(np.int64)


def patch_labels(labels: torch.Tensor, patch: int) -> torch.Tensor:
    """[S, S] superpixel map -> [S/p, S/p]: per patch the mean label id, truncated
    (the published reduction; patches inside one superpixel keep its id)."""
    s0, s1 = labels.shape
    x = labels.double().reshape(s0 // patch, patch, s1 // patch, patch).mean(dim=(1, 3))
    return x.long()


class CaptionTransform:
    """Dataset item -> dict(image float [3, S, S] in 0..1, caption, superpixels LongTensor [S/p, S/p])."""

    def __init__(self, size: int = 224, patch: int = 16, scale: tuple = (0.5, 1.0), superpixels: bool = True,
                 sp_short_side: int = 224, sp_scale: float = 224, sp_sigma: float = 0.9, sp_min_size: int = 224):
        if size % patch:
            raise ValueError(f"crop size {size} must be a multiple of the patch size {patch}")
        self.size, self.patch, self.scale, self.superpixels = size, patch, tuple(scale), superpixels
        self.sp_short_side, self.sp = sp_short_side, dict(scale=sp_scale, sigma=sp_sigma, min_size=sp_min_size)

    def __call__(self, item: dict) -> dict:
        from torchvision.transforms import InterpolationMode, RandomResizedCrop
        from torchvision.transforms import functional as TF
        img = Image.fromarray(item["image"].permute(1, 2, 0).numpy())
        w, h = img.size
        s = self.sp_short_side
        if min(w, h) > s:     # the published data is stored with short side 224 (LANCZOS, int rounding)
            img = img.resize((int(s * w / h), s) if w > h else (s, int(s * h / w)), Image.LANCZOS)
        i, j, ch, cw = RandomResizedCrop.get_params(img, self.scale, (3 / 4, 4 / 3))
        crop = TF.resized_crop(img, i, j, ch, cw, [self.size, self.size], InterpolationMode.BICUBIC)
        out = {k: v for k, v in item.items() if k not in ("image", "sem_seg")}
        out["image"] = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255.0
        if self.superpixels:
            sp = torch.from_numpy(felzenszwalb(np.array(img), **self.sp))[i:i + ch, j:j + cw]
            sp = F.interpolate(sp[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0].long()
            out["superpixels"] = patch_labels(sp, self.patch)
        return out


# --- synthetic image-caption pairs (tests, benchmark) ------------------------------
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")


def shape_sample(rng: np.random.Generator, size: int = 64, colours: Sequence[str] = tuple(COLOURS),
                 max_shapes: int = 2) -> tuple[torch.Tensor, str, torch.Tensor]:
    """One synthetic pair: coloured shapes on a grey background.

    Returns (uint8 image [3, S, S], caption naming each shape's colour and kind,
    LongTensor [S, S] with the colour index of each pixel, -1 on background).
    """
    img = np.full((size, size, 3), 128, np.uint8)
    label = np.full((size, size), -1, np.int64)
    yy, xx = np.mgrid[:size, :size]
    n = int(rng.integers(1, max_shapes + 1))
    picked = rng.choice(len(colours), size=n, replace=False)
    words = []
    for c in picked:
        r = int(rng.integers(size // 5, size // 3))
        cy, cx = (int(v) for v in rng.integers(r, size - r, size=2))
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        m = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r) if kind == "square" else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[m] = COLOURS[colours[c]]
        label[m] = c
        words.append(f"a {colours[c]} {kind}")
    caption = " and ".join(words) + "."
    return torch.from_numpy(img).permute(2, 0, 1).contiguous(), caption, torch.from_numpy(label)


def write_shards(root: str | os.PathLike, samples: Sequence[tuple[torch.Tensor, str]], per_shard: int = 100) -> list[Path]:
    """Write (uint8 image [3, H, W], caption) pairs as img2dataset-style tar shards under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(samples), per_shard):
        path = root / f"{s // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for k, (image, caption) in enumerate(samples[s:s + per_shard], start=s):
                buf = io.BytesIO()
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=95)
                for ext, data in (("jpg", buf.getvalue()), ("txt", caption.encode()),
                                  ("json", json.dumps({"key": f"{k:09d}", "caption": caption}).encode())):
                    info = tarfile.TarInfo(f"{k:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths
