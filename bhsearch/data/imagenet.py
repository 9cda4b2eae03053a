"""ImageNet (ILSVRC2012 classification) as JPEG files, in the layouts it is distributed in.

``root`` (or ``root/ILSVRC/Data/CLS-LOC``, the Kaggle download) holds ``train/`` and ``val/``:

* ``train/<wnid>/*.JPEG`` — one folder per class (the torchvision ``ImageFolder`` layout);
* ``val/<wnid>/*.JPEG`` — the same, or a flat ``val/ILSVRC2012_val_NNNNNNNN.JPEG`` folder labelled by
  either the devkit (``ILSVRC2012_validation_ground_truth.txt``: one 1-based ``ILSVRC2012_ID`` per line
  in val image order, mapped to wnids by ``meta.mat``; both in ``root/ILSVRC2012_devkit_t12/data/``,
  ``root/devkit/data/`` or ``root/``) or the Kaggle ``LOC_val_solution.csv`` (``ImageId,PredictionString``,
  the wnid first; in ``root/`` or next to ``ILSVRC/``).

Class indices follow the sorted wnids of ``train/`` (as ``ImageFolder``); a flat or foldered ``val`` with a
wnid that ``train/`` lacks is refused. Image files: ``.JPEG``/``.jpg``/``.jpeg``/``.png`` (any case). Files
are listed when the dataset is opened and decoded when read (``torchvision.io.decode_jpeg``; on the GPU in
batches with :func:`decode_batch`); an unreadable image raises ``DataError`` naming the file.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import DataError, UsageError

EXTENSIONS = (".jpeg", ".jpg", ".png")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
_DEVKIT_DIRS = ("ILSVRC2012_devkit_t12/data", "devkit/data", "ILSVRC2012_devkit_t12", "")


def find_root(root: str | Path) -> Path:
    """The folder holding ``train/`` and/or ``val/``: ``root`` itself or ``root/ILSVRC/Data/CLS-LOC``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ImageNet folder not found")
    for cand in (root, root / "ILSVRC" / "Data" / "CLS-LOC"):
        if (cand / "train").is_dir() or (cand / "val").is_dir():
            return cand
    raise DataError(f"{root}: no train/ or val/ folder (ImageNet layout: train/<wnid>/*.JPEG, val/...)")


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p.name))


def train_classes(root: Path) -> list[str]:
    """Sorted wnids (sub-folders) of ``root/train``; ``DataError`` when there are none."""
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{root}: no train/ folder (ImageNet layout: train/<wnid>/*.JPEG)")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{train}: no class folders (expected train/<wnid>/*.JPEG)")
    return classes


def _foldered(split_dir: Path, class_to_idx: dict[str, int], every_class: bool) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import make_dataset

    unknown = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in class_to_idx)
    if unknown:
        raise DataError(f"{split_dir}: class folder {unknown[0]!r} is not among the {len(class_to_idx)} train classes")
    samples = make_dataset(str(split_dir), class_to_idx, is_valid_file=_is_image, allow_empty=True)
    if every_class:
        counts = np.bincount([t for _, t in samples], minlength=len(class_to_idx))
        empty = [c for c, i in class_to_idx.items() if counts[i] == 0]
        if empty:
            raise DataError(f"{split_dir / empty[0]}: no images (.JPEG/.jpg/.png) in this class folder")
    return samples


def find_devkit(root: Path) -> tuple[Path, Path] | None:
    """``(ground truth, meta.mat)`` of the devkit under ``root`` (or its parents up to the ILSVRC root)."""
    for base in _search_bases(root):
        for sub in _DEVKIT_DIRS:
            gt, meta = base / sub / GROUND_TRUTH, base / sub / META
            if gt.is_file():
                if not meta.is_file():
                    raise DataError(f"{gt}: found, but not {meta} (the devkit's ID -> wnid mapping)")
                return gt, meta
    return None


def find_kaggle_solution(root: Path) -> Path | None:
    for base in _search_bases(root):
        if (base / KAGGLE_SOLUTION).is_file():
            return base / KAGGLE_SOLUTION
    return None


def _search_bases(root: Path) -> list[Path]:
    # root/ILSVRC/Data/CLS-LOC -> also look at the download's top folder
    if root.name == "CLS-LOC" and root.parent.name == "Data" and root.parent.parent.name == "ILSVRC":
        return [root, root.parent.parent.parent]
    return [root]


def devkit_wnids(meta: Path) -> dict[int, str]:
    """``ILSVRC2012_ID -> wnid`` of the 1000 leaf synsets in the devkit's ``meta.mat``."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        ids = np.atleast_1d(synsets["ILSVRC2012_ID"]).astype(np.int64)
        wnids = [str(w) for w in np.atleast_1d(synsets["WNID"])]
        children = np.atleast_1d(synsets["num_children"]).astype(np.int64)
    except (KeyError, ValueError, TypeError, IndexError, OSError, NotImplementedError, MatReadError) as exc:
        raise DataError(f"{meta}: not a readable devkit meta.mat with synsets ({type(exc).__name__}: {exc})") from None
    return {int(i): w for i, w, c in zip(ids, wnids, children, strict=True) if c == 0}


def _read_ground_truth(gt: Path) -> list[int]:
    try:
        lines = [line.strip() for line in gt.read_text().splitlines() if line.strip()]
        return [int(line) for line in lines]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{gt}: not readable ({exc})") from None
    except ValueError as exc:
        raise DataError(f"{gt}: every line must be one integer ILSVRC2012_ID ({exc})") from None


def _read_kaggle(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not readable ({exc})") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise DataError(f"{path}: expected the header 'ImageId,PredictionString'")
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[1].split():
            raise DataError(f"{path}:{n}: expected 'ImageId,WNID ...'")
        out[row[0].strip()] = row[1].split()[0]
    return out


def _flat_val(root: Path, val: Path, class_to_idx: dict[str, int]) -> tuple[list[tuple[str, int]], str]:
    files = _images(val)
    if not files:
        raise DataError(f"{val}: no images and no class folders")
    devkit = find_devkit(root)
    if devkit is not None:
        gt, meta = devkit
        ids = _read_ground_truth(gt)
        if len(ids) != len(files):
            raise DataError(f"{gt}: {len(ids)} labels for the {len(files)} images in {val}")
        id_to_wnid = devkit_wnids(meta)
        wnids = []
        for n, i in enumerate(ids, start=1):
            if i not in id_to_wnid:
                raise DataError(f"{gt}:{n}: ILSVRC2012_ID {i} is not a class of {meta}")
            wnids.append(id_to_wnid[i])
        layout = "devkit"
    else:
        solution = find_kaggle_solution(root)
        if solution is None:
            raise DataError(
                f"{val}: a flat val/ folder needs {GROUND_TRUTH} + {META} (ILSVRC2012_devkit_t12/data/) "
                f"or {KAGGLE_SOLUTION} next to it"
            )
        by_id = _read_kaggle(solution)
        missing = [p.name for p in files if p.stem not in by_id]
        if missing:
            raise DataError(f"{solution}: no label for {missing[0]} ({len(missing)} of {len(files)} images unlabelled)")
        if len(by_id) != len(files):
            raise DataError(f"{solution}: {len(by_id)} labels for the {len(files)} images in {val}")
        wnids = [by_id[p.stem] for p in files]
        layout = "kaggle"
    samples = []
    for path, wnid in zip(files, wnids, strict=True):
        if wnid not in class_to_idx:
            raise DataError(f"{path}: labelled {wnid!r}, which is not among the {len(class_to_idx)} train classes")
        samples.append((str(path), class_to_idx[wnid]))
    return samples, layout


class ImageNetFolder:
    """ImageNet ``split`` (``"train"`` or ``"val"``) of JPEG files; items are ``(uint8 HWC image, label)``.

    Attributes: ``samples`` (``(path, label)``, as ``ImageFolder``), ``targets``, ``classes`` (sorted wnids),
    ``class_to_idx``, ``num_classes``, ``layout`` (``folders``, ``devkit`` or ``kaggle``). ``read(i)`` gives
    the encoded bytes of image ``i`` (a uint8 tensor), for decoding in batches (:func:`decode_batch`).
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None) -> None:
        if split not in ("train", "val"):
            raise UsageError(f"ImageNet split must be 'train' or 'val', got {split!r}")
        self.root, self.split, self.transform = find_root(root), split, transform
        self.classes = train_classes(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"{self.root}: no {split}/ folder")
        if split == "train" or any(p.is_dir() for p in split_dir.iterdir()):
            self.samples, self.layout = _foldered(split_dir, self.class_to_idx, split == "train"), "folders"
        else:
            self.samples, self.layout = _flat_val(self.root, split_dir, self.class_to_idx)
        if not self.samples:
            raise DataError(f"{split_dir}: no images (.JPEG/.jpg/.png)")
        self.targets = np.array([t for _, t in self.samples], np.int64)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int):
        """The file of image ``index`` as a 1-D uint8 tensor (still encoded)."""
        return read_encoded(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = decode(read_encoded(path), path).permute(1, 2, 0).numpy()
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __repr__(self) -> str:
        return f"ImageNetFolder({str(self.root)!r}, split={self.split!r}, n={len(self)}, layout={self.layout!r})"


# --------------------------------------------------------------------------- decoding and crops


def read_encoded(path: str):
    import torch

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: not readable ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{path}: empty file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _is_jpeg(data) -> bool:
    return data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode(data, source: str):
    """Encoded bytes -> RGB uint8 ``(3, H, W)`` on the CPU (JPEG via ``decode_jpeg``; PNG and others too)."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        if _is_jpeg(data):
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{source}: not a readable image ({first})") from None


def decode_batch(datas: Sequence[Any], sources: Sequence[str], device: Any = "cpu") -> list[Any]:
    """Decode a batch of encoded images to RGB uint8 ``(3, H, W)`` tensors on ``device``.

    On a CUDA device the JPEGs are decoded together by nvJPEG (``decode_jpeg(list, device="cuda")``); other
    formats, and every image on a CPU, are decoded one by one on the CPU (and then moved).
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    out: list[Any] = [None] * len(datas)
    if device.type == "cuda":
        jpeg = [i for i, d in enumerate(datas) if _is_jpeg(d)]
        if jpeg:
            try:
                decoded = decode_jpeg([datas[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
            except RuntimeError:  # one file nvJPEG cannot take fails the batch: decode one by one
                decoded = [_decode_one_on(device, datas[i]) for i in jpeg]
            for i, img in zip(jpeg, decoded, strict=True):
                out[i] = img  # None: left for the CPU below
    for i, d in enumerate(datas):
        if out[i] is None:
            out[i] = decode(d, sources[i]).to(device)
    return out


def _decode_one_on(device: Any, data: Any) -> Any:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def random_resized_crops(
    images: Sequence[Any], size: int, scale: tuple[float, float], seed: int, ratio=(3 / 4, 4 / 3)
) -> Any:
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` of each ``(3, H, W)`` image -> ``(B, 3, S, S)``.

    The crop boxes come from ``RandomResizedCrop.get_params`` under a generator seeded by ``seed`` (the global
    RNG is left as it was), so a batch gets the same crops in a worker, in the main process or on a GPU.
    """
    import torch
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2 import functional as TF

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only (CUDA RNG untouched)
        boxes = [RandomResizedCrop.get_params(img, list(scale), list(ratio)) for img in images]
    return torch.stack(
        [TF.resized_crop(img, *box, size=[size, size], antialias=True) for img, box in zip(images, boxes, strict=True)]
    )


def center_crops(images: Sequence[Any], size: int, crop_pct: float) -> Any:
    """``Resize(round(size / crop_pct))`` (short side) + ``CenterCrop(size)`` of each image -> ``(B, 3, S, S)``.

    ``crop_pct`` 0.875 is the usual ImageNet evaluation: Resize(256) + CenterCrop(224).
    """
    import torch
    from torchvision.transforms.v2 import functional as TF

    resize = max(size, int(round(size / crop_pct)))
    return torch.stack([TF.center_crop(TF.resize(img, [resize], antialias=True), [size, size]) for img in images])
