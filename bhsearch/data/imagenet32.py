"""Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017): ``train_data_batch_1..10`` and ``val_data``.

Each file is a pickled dict or an ``.npz`` with ``data`` (N x 3072 uint8, R/G/B planes), ``labels``
1..1000 (shifted here to 0..999) and, in training batches, ``mean``. Files may sit in ``root`` or in the
official sub-folders ``Imagenet32_train[_npz]`` / ``Imagenet32_val[_npz]``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.data.cifar import _labels, planes_to_hwc
from bhsearch.data.safe_pickle import load_pickle, str_keys
from bhsearch.errors import DataError, UsageError

NUM_CLASSES = 1000
_SUBDIRS = {
    "train": ("", "Imagenet32_train", "Imagenet32_train_npz", "train"),
    "val": ("", "Imagenet32_val", "Imagenet32_val_npz", "val"),
}


def read_batch(path: Path) -> dict[str, Any]:
    """One ImageNet32 batch file (pickle or ``.npz``) as a dict with ``str`` keys."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    return str_keys(load_pickle(path), str(path))


def _find(root: Path, stem: str, split: str) -> Path | None:
    for sub in _SUBDIRS[split]:
        for name in (stem, stem + ".npz", stem + ".pkl", stem + ".pickle"):
            cand = root / sub / name
            if cand.is_file():
                return cand
    return None


def batch_files(root: str | Path, split: str, batches: Sequence[int] | None = None) -> list[Path]:
    """The files of ``split``; a listed training batch that is missing raises ``DataError``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ImageNet32 folder not found")
    if split == "val":
        found = _find(root, "val_data", split)
        if found is None:
            raise DataError(f"{root}: no val_data (or val_data.npz) found")
        return [found]
    wanted = list(batches) if batches is not None else list(range(1, 11))
    files = []
    for i in wanted:
        found = _find(root, f"train_data_batch_{i}", split)
        if found is None:
            if batches is None and files:
                continue  # a partial download is fine when batches were not asked for explicitly
            raise DataError(f"{root}: train_data_batch_{i} (or .npz) not found")
        files.append(found)
    return files


class ImageNet32:
    """ImageNet32 ``split`` (``"train"`` or ``"val"``) as ``(uint8 HWC 32x32x3, 0-based label)`` pairs.

    ``batches`` picks training batches (1..10, default: all that exist). Attributes: ``data``,
    ``targets``, ``num_classes`` (1000), ``mean`` (the training mean from batch files if present).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        batches: Sequence[int] | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise UsageError(f"ImageNet32 split must be 'train' or 'val', got {split!r}")
        self.root, self.split, self.transform = Path(root), split, transform
        self.files = batch_files(self.root, split, batches)
        images, labels, self.mean = [], [], None
        for path in self.files:
            raw = read_batch(path)
            if "data" not in raw:
                raise DataError(f"{path}: missing field 'data'")
            imgs = planes_to_hwc(raw["data"], str(path))
            if imgs.shape[1] != 32:
                raise DataError(f"{path}: images are {imgs.shape[1]}x{imgs.shape[2]}, expected 32x32")
            labels.append(_labels(raw, "labels", len(imgs), 1, NUM_CLASSES, str(path)) - 1)
            images.append(imgs)
            if self.mean is None and "mean" in raw:
                self.mean = np.asarray(raw["mean"])
        self.data = np.concatenate(images) if len(images) > 1 else images[0]
        self.targets = np.concatenate(labels) if len(labels) > 1 else labels[0]
        self.num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.data[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f"ImageNet32({str(self.root)!r}, split={self.split!r}, n={len(self)})"
