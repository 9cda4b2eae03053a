"""Synthetic stand-ins written in the REAL on-disk formats, so the real readers are what is tested.

* ``write_cifar100``: ``cifar-100-python/{train,test,meta}``; class = (shape, colour, texture), 5x5x4.
* ``write_imagenet32``: ``Imagenet32_train/train_data_batch_K`` + ``Imagenet32_val/val_data`` (pickle, or
  ``*_npz`` folders with ``.npz``), labels 1..1000 with class = (shape, colour, texture), 10x10x10.

The detection benchmarks' generators live with their benchmark: ``bhsearch.tasks.tinyperson.synthetic``,
``bhsearch.tasks.widerface.synthetic``, ``bhsearch.tasks.aitod.synthetic``.

All drawing is vectorised numpy; everything is seeded and deterministic. Each writer builds its
folders in a staging folder and renames them into place at the end (``building``), so a killed writer
leaves nothing a reader trusts; an existing set is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import DataError, UsageError


@contextmanager
def building(out_dir: str | Path, names: tuple[str, ...], overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder for the dataset folders ``names`` of ``out_dir``; rename them in at the end.

    Without ``overwrite`` an existing ``out_dir/NAME`` is refused (``DataError``) before anything is
    written. ``names[-1]`` is renamed in last: put the file readers check for completeness there.
    """
    from bhsearch.fileio import atomic_entries, check_writable

    out = Path(out_dir)
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise DataError(f"{out / existing[0]}: a dataset is already there (use --overwrite to replace it)")
    check_writable(out, "dataset folder")
    with atomic_entries(out, last=names[-1:]) as stage:
        yield stage


# --------------------------------------------------------------------------- 32x32 classification

PALETTE = np.array(
    [
        [220, 40, 40],
        [40, 180, 60],
        [50, 80, 220],
        [230, 210, 40],
        [200, 60, 200],
        [40, 200, 210],
        [240, 130, 30],
        [120, 60, 170],
        [235, 235, 235],
        [130, 80, 40],
    ],
    np.float32,
)
SHAPE_NAMES = ("disk", "square", "triangle", "ring", "cross", "diamond", "hbar", "vbar", "halfdisk", "frame")
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "purple", "white", "brown")
TEXTURE_NAMES = ("plain", "hstripes", "vstripes", "checker", "dots", "diag", "antidiag", "rings", "gradient", "speckle")
CIFAR_FACTORS = (5, 5, 4)
IMAGENET32_FACTORS = (10, 10, 10)


def _factor(labels: np.ndarray, factors: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, nc, nt = factors
    return labels // (nc * nt), (labels // nt) % nc, labels % nt


def class_names(factors: tuple[int, int, int]) -> list[str]:
    n = int(np.prod(factors))
    s, c, t = _factor(np.arange(n), factors)
    return [f"{SHAPE_NAMES[a]}_{COLOUR_NAMES[b]}_{TEXTURE_NAMES[d]}" for a, b, d in zip(s, c, t, strict=True)]


def _shape_masks(u: np.ndarray, v: np.ndarray, shape: np.ndarray) -> np.ndarray:
    rho = np.sqrt(u * u + v * v)
    m = np.abs(u)
    n = np.abs(v)
    cheb = np.maximum(m, n)
    masks = np.stack(
        [
            rho < 1.0,
            cheb < 0.8,
            (v < 0.7) & (m < (v + 0.85) * 0.62),
            (rho < 1.0) & (rho > 0.55),
            ((m < 0.3) & (n < 0.95)) | ((n < 0.3) & (m < 0.95)),
            m + n < 1.05,
            (u / 1.0) ** 2 + (v / 0.42) ** 2 < 1.0,
            (u / 0.42) ** 2 + (v / 1.0) ** 2 < 1.0,
            (rho < 1.0) & (v > -0.1),
            (cheb < 0.9) & (cheb > 0.5),
        ]
    )  # (10, N, H, W)
    return np.take_along_axis(masks, shape[None, :, None, None], axis=0)[0]


def _textures(u: np.ndarray, v: np.ndarray, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = 2.2 * math.pi
    rho = np.sqrt(u * u + v * v)
    pats = np.stack(
        [
            np.ones_like(u),
            (np.sin(k * 2 * v) > 0),
            (np.sin(k * 2 * u) > 0),
            (np.sin(k * 1.6 * u) * np.sin(k * 1.6 * v) > 0),
            (np.sin(k * 2.4 * u) * np.sin(k * 2.4 * v) > 0.35),
            (np.sin(k * 1.5 * (u + v)) > 0),
            (np.sin(k * 1.5 * (u - v)) > 0),
            (np.sin(k * 3 * rho) > 0),
            np.clip(0.5 + 0.6 * u, 0, 1),
            rng.random(u.shape) > 0.5,
        ]
    ).astype(np.float32)
    return np.take_along_axis(pats, texture[None, :, None, None], axis=0)[0]


def render_classes(
    labels: np.ndarray, factors: tuple[int, int, int], rng: np.random.Generator, size: int = 32
) -> np.ndarray:
    """Render one ``size`` x ``size`` RGB image per label; returns (N, size, size, 3) uint8."""
    labels = np.asarray(labels, np.int64)
    out = np.empty((len(labels), size, size, 3), np.uint8)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    for start in range(0, len(labels), 1024):
        lab = labels[start : start + 1024]
        n = len(lab)
        shape, colour, texture = _factor(lab, factors)
        cx, cy = rng.uniform(-0.25, 0.25, (2, n, 1, 1)).astype(np.float32)
        r = rng.uniform(0.45, 0.75, (n, 1, 1)).astype(np.float32)
        th = rng.uniform(-0.35, 0.35, (n, 1, 1)).astype(np.float32)
        x = grid[None, None, :] - cx
        y = grid[None, :, None] - cy
        u = (x * np.cos(th) + y * np.sin(th)) / r
        v = (-x * np.sin(th) + y * np.cos(th)) / r
        mask = _shape_masks(u, v, shape).astype(np.float32)
        pattern = _textures(u, v, texture, rng)
        fg = PALETTE[colour][:, None, None, :] + rng.normal(0, 18, (n, 1, 1, 3)).astype(np.float32)
        fg = fg * (0.45 + 0.55 * pattern[..., None])
        bg = rng.uniform(20, 200, (n, 1, 1, 3)).astype(np.float32)
        slope = rng.normal(0, 30, (n, 1, 1, 3)).astype(np.float32)
        bg = bg + slope * grid[None, :, None, None]
        img = bg * (1 - mask[..., None]) + fg * mask[..., None]
        img += rng.normal(0, 14, img.shape).astype(np.float32)
        out[start : start + n] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def hwc_to_planes(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3*H*W) rows, all R then G then B (the CIFAR/ImageNet32 layout)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` and ``str`` as Python 2 ``str`` opcodes (BINSTRING), like the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def dump_py2_pickle(obj: Any, path: Path) -> None:
    """Pickle ``obj`` (protocol 2) as Python 2 wrote it: py2 strings, ``numpy.core.multiarray`` globals."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    return labels


def write_cifar100(
    out_dir: str | Path, n_train: int = 5000, n_test: int = 1000, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write ``out_dir/cifar-100-python/{train,test,meta}`` like the official (Python 2) pickles."""
    if n_train < 0 or n_test < 0:
        raise UsageError("n_train and n_test must be >= 0")
    with building(out_dir, ("cifar-100-python",), overwrite) as stage:
        _write_cifar100(stage / "cifar-100-python", n_train, n_test, seed)
    return Path(out_dir) / "cifar-100-python"


def _write_cifar100(folder: Path, n_train: int, n_test: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = class_names(CIFAR_FACTORS)
    coarse_names = [f"group_{i:02d}" for i in range(20)]
    for split, n in (("train", n_train), ("test", n_test)):
        fine = _balanced_labels(n, 100, rng)
        images = render_classes(fine, CIFAR_FACTORS, rng)
        payload = {
            "filenames": [f"{fine_names[c]}_s_{i:06d}.png" for i, c in enumerate(fine)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": [int(c) for c in fine],
            "coarse_labels": [int(c) // 5 for c in fine],
            "data": hwc_to_planes(images),
        }
        dump_py2_pickle(payload, folder / split)
    dump_py2_pickle({"fine_label_names": fine_names, "coarse_label_names": coarse_names}, folder / "meta")


def write_imagenet32(
    out_dir: str | Path,
    n_batches: int = 2,
    per_batch: int = 2000,
    n_val: int = 1000,
    seed: int = 0,
    fmt: str = "pickle",
    overwrite: bool = False,
) -> Path:
    """Write ImageNet32-format batches (labels 1..1000, ``mean`` in training batches)."""
    if fmt not in ("pickle", "npz"):
        raise UsageError(f"fmt must be 'pickle' or 'npz', got {fmt!r}")
    if not 1 <= n_batches <= 10:
        raise UsageError(f"n_batches must be 1..10, got {n_batches}")
    if per_batch < 1 or n_val < 1:
        raise UsageError(f"per_batch and n_val must be >= 1, got {per_batch} and {n_val}")
    suffix = "_npz" if fmt == "npz" else ""
    names = (f"Imagenet32_train{suffix}", f"Imagenet32_val{suffix}")
    with building(out_dir, names, overwrite) as stage:
        _write_imagenet32(stage, names, n_batches, per_batch, n_val, seed, fmt)
    return Path(out_dir)


def _write_imagenet32(
    out: Path, names: tuple[str, str], n_batches: int, per_batch: int, n_val: int, seed: int, fmt: str
) -> None:
    rng = np.random.default_rng(seed)
    train_dir, val_dir = out / names[0], out / names[1]
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    batches = []
    for _ in range(n_batches):
        labels = _balanced_labels(per_batch, 1000, rng)
        batches.append((hwc_to_planes(render_classes(labels, IMAGENET32_FACTORS, rng)), labels + 1))
    mean = np.concatenate([b[0] for b in batches]).mean(axis=0)
    val_labels = _balanced_labels(n_val, 1000, rng)
    val = (hwc_to_planes(render_classes(val_labels, IMAGENET32_FACTORS, rng)), val_labels + 1)

    def dump(path: Path, payload: dict[str, Any]) -> None:
        if fmt == "npz":
            np.savez(path.with_name(path.name + ".npz"), **payload)
        else:
            payload = {k: (v.tolist() if k == "labels" else v) for k, v in payload.items()}
            with open(path, "wb") as fh:
                pickle.dump(payload, fh, protocol=4)

    for i, (data, labels) in enumerate(batches, start=1):
        dump(train_dir / f"train_data_batch_{i}", {"data": data, "labels": labels, "mean": mean})
    dump(val_dir / "val_data", {"data": val[0], "labels": val[1]})


# --------------------------------------------------------------------------- ImageNet JPEG folders

IMAGENET_VAL_LAYOUTS = ("folders", "devkit", "kaggle")


def synthetic_wnids(n_classes: int) -> list[str]:
    """WordNet-style ids ``n0xxxxxxx`` for the synthetic ImageNet classes (sorted = class index order)."""
    return [f"n{1440764 + 9973 * k:08d}" for k in range(n_classes)]


def write_imagenet(
    out_dir: str | Path,
    n_classes: int = 10,
    n_train: int = 8,
    n_val: int = 4,
    seed: int = 0,
    min_size: int = 64,
    max_size: int = 96,
    val_layout: str = "folders",
    overwrite: bool = False,
) -> Path:
    """Write an ILSVRC2012-layout set of JPEGs: ``train/<wnid>/<wnid>_K.JPEG`` and the validation images.

    ``n_train`` / ``n_val`` are images per class; each is rendered at 32 px (class = shape, colour and
    texture, distinct per class) and resized to a random ``min_size``..``max_size`` width and height; the
    first training image is greyscale (as some ImageNet JPEGs are). Validation images are numbered
    ``ILSVRC2012_val_NNNNNNNN.JPEG`` in a shuffled class order; ``val_layout`` puts them in
    ``val/<wnid>/`` (``folders``), flat in ``val/`` with ``ILSVRC2012_devkit_t12/data/`` holding
    ``ILSVRC2012_validation_ground_truth.txt`` and ``meta.mat`` (``devkit``; ILSVRC2012_IDs are not in
    wnid order, and one non-leaf synset is listed, as in the real file), or flat with
    ``LOC_val_solution.csv`` (``kaggle``). Same ``seed`` = same images in every layout.
    """
    if val_layout not in IMAGENET_VAL_LAYOUTS:
        raise UsageError(f"val_layout must be one of {', '.join(IMAGENET_VAL_LAYOUTS)}, got {val_layout!r}")
    if not 1 <= n_classes <= 1000 or n_train < 1 or n_val < 1:
        raise UsageError("need 1..1000 classes and at least 1 training and 1 validation image per class")
    if not 8 <= min_size <= max_size:
        raise UsageError(f"need 8 <= min_size <= max_size, got {min_size} and {max_size}")
    names = {"folders": ("train", "val"), "devkit": ("train", "ILSVRC2012_devkit_t12", "val")}.get(
        val_layout, ("train", "LOC_val_solution.csv", "val")
    )
    with building(out_dir, names, overwrite) as stage:
        _write_imagenet(stage, n_classes, n_train, n_val, seed, min_size, max_size, val_layout)
    return Path(out_dir)


def _write_imagenet(
    out: Path, n_classes: int, n_train: int, n_val: int, seed: int, min_size: int, max_size: int, val_layout: str
) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = synthetic_wnids(n_classes)
    # class k looks like ImageNet32 class k * 1000 // n_classes: distinct shape/colour/texture for <= 10 classes
    look = np.arange(n_classes) * 1000 // n_classes

    def save(img: np.ndarray, path: Path, grey: bool = False) -> None:
        w, h = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        pil = Image.fromarray(img).resize((w, h), Image.BILINEAR)
        (pil.convert("L") if grey else pil).save(path, format="JPEG", quality=90)

    train_labels = np.repeat(np.arange(n_classes), n_train)
    train_imgs = render_classes(look[train_labels], IMAGENET32_FACTORS, rng)
    for wnid in wnids:
        (out / "train" / wnid).mkdir(parents=True)
    for j, (img, k) in enumerate(zip(train_imgs, train_labels, strict=True)):
        save(img, out / "train" / wnids[k] / f"{wnids[k]}_{j % n_train + 1}.JPEG", grey=j == 0)

    val_labels = _balanced_labels(n_classes * n_val, n_classes, rng)
    val_imgs = render_classes(look[val_labels], IMAGENET32_FACTORS, rng)
    val = out / "val"
    val.mkdir()
    for n, (img, k) in enumerate(zip(val_imgs, val_labels, strict=True), start=1):
        folder = val / wnids[k] if val_layout == "folders" else val
        folder.mkdir(exist_ok=True)
        save(img, folder / f"ILSVRC2012_val_{n:08d}.JPEG")
    if val_layout == "devkit":
        perm = rng.permutation(n_classes)
        if n_classes > 1 and (perm == np.arange(n_classes)).all():
            perm = np.roll(perm, 1)
        ids = perm + 1  # ILSVRC2012_ID of each (sorted) wnid: never in wnid order
        _write_devkit(out / "ILSVRC2012_devkit_t12" / "data", wnids, ids, ids[val_labels])
    elif val_layout == "kaggle":
        lines = ["ImageId,PredictionString"]
        for n, k in enumerate(val_labels, start=1):
            lines.append(f"ILSVRC2012_val_{n:08d},{wnids[k]} 10 12 50 60 {wnids[k]} 4 4 30 30")
        (out / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")


def _write_devkit(folder: Path, wnids: list[str], ids: np.ndarray, val_ids: np.ndarray) -> None:
    from scipy.io import savemat

    folder.mkdir(parents=True)
    (folder / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{int(i)}\n" for i in val_ids))
    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height")
    order = np.argsort(ids)  # meta.mat lists the synsets by ILSVRC2012_ID
    rows = [(int(ids[k]), wnids[k], f"synthetic class {k}", "a synthetic leaf class", 0, np.zeros(0), 0) for k in order]
    parent = len(wnids) + 1  # a non-leaf synset after the leaves, as in the real meta.mat
    rows.append((parent, "n00001740", "entity", "an internal synset", len(wnids), ids.astype(np.float64), 19))
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for r, row in enumerate(rows):
        for f, value in zip(fields, row, strict=True):
            synsets[f][r, 0] = value
    savemat(folder / "meta.mat", {"synsets": synsets})
