"""CIFAR-100 in its official python layout: ``cifar-100-python/{train,test,meta}``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.data.safe_pickle import load_pickle, str_keys
from bhsearch.errors import DataError, UsageError


def planes_to_hwc(data: Any, source: str, side: int | None = None) -> np.ndarray:
    """Rows of ``3*side*side`` bytes (all R, then G, then B, row-major) -> ``(N, side, side, 3)`` uint8."""
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise DataError(f"{source}: 'data' must be a 2-D array (N x 3*H*W), got shape {arr.shape}")
    if side is None:
        side = int(round((arr.shape[1] / 3) ** 0.5))
    if arr.shape[1] != 3 * side * side:
        raise DataError(
            f"{source}: 'data' rows have {arr.shape[1]} values, expected {3 * side * side} (3x{side}x{side})"
        )
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{source}: 'data' values outside 0..255")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr.reshape(-1, 3, side, side).transpose(0, 2, 3, 1))


def _labels(raw: dict[str, Any], key: str, n: int, lo: int, hi: int, source: str) -> np.ndarray:
    if key not in raw:
        raise DataError(f"{source}: missing field '{key}'")
    labels = np.asarray(raw[key])
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{source}: '{key}' has {labels.size} entries for {n} images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: '{key}' must be integers, got {labels.dtype}")
    if n and (labels.min() < lo or labels.max() > hi):
        raise DataError(f"{source}: '{key}' outside {lo}..{hi} (found {labels.min()}..{labels.max()})")
    return labels.astype(np.int64)


def find_cifar_dir(root: str | Path) -> Path:
    """``root`` may be ``cifar-100-python`` itself or the folder that contains it."""
    root = Path(root)
    for cand in (root, root / "cifar-100-python"):
        if (cand / "train").is_file() or (cand / "test").is_file() or (cand / "meta").is_file():
            return cand
    if not root.exists():
        raise DataError(f"{root}: CIFAR-100 folder not found")
    raise DataError(f"{root}: no cifar-100-python/{{train,test,meta}} files here")


class Cifar100:
    """CIFAR-100 split as ``(uint8 HWC 32x32x3 image, int label)`` pairs (before ``transform``).

    ``label`` is ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses). Attributes: ``data``
    (N, 32, 32, 3) uint8, ``targets`` int64 array, ``num_classes``, ``classes`` (names from ``meta``).
    """

    def __init__(
        self, root: str | Path, split: str = "train", transform: Callable | None = None, label: str = "fine"
    ) -> None:
        if split not in ("train", "test"):
            raise UsageError(f"CIFAR-100 split must be 'train' or 'test', got {split!r}")
        if label not in ("fine", "coarse"):
            raise UsageError(f"CIFAR-100 label must be 'fine' or 'coarse', got {label!r}")
        self.root = find_cifar_dir(root)
        self.split, self.label, self.transform = split, label, transform
        path = self.root / split
        raw = str_keys(load_pickle(path), str(path))
        if "data" not in raw:
            raise DataError(f"{path}: missing field 'data'")
        self.data = planes_to_hwc(raw["data"], str(path), side=32)
        self.num_classes = 100 if label == "fine" else 20
        self.targets = _labels(raw, f"{label}_labels", len(self.data), 0, self.num_classes - 1, str(path))
        self.classes = self._class_names()

    def _class_names(self) -> list[str]:
        meta_path = self.root / "meta"
        if not meta_path.is_file():
            return [str(i) for i in range(self.num_classes)]
        meta = str_keys(load_pickle(meta_path), str(meta_path))
        names = meta.get(f"{self.label}_label_names")
        if not isinstance(names, list) or len(names) != self.num_classes:
            raise DataError(f"{meta_path}: '{self.label}_label_names' must list {self.num_classes} names")
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.data[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f"Cifar100({str(self.root)!r}, split={self.split!r}, n={len(self)}, label={self.label!r})"
