"""Synthetic stand-ins written in the REAL on-disk formats, so the real readers are what is tested.

* ``write_cifar100``: ``cifar-100-python/{train,test,meta}``; class = (shape, colour, texture), 5x5x4.
* ``write_imagenet32``: ``Imagenet32_train/train_data_batch_K`` + ``Imagenet32_val/val_data`` (pickle, or
  ``*_npz`` folders with ``.npz``), labels 1..1000 with class = (shape, colour, texture), 10x10x10.
* ``write_tinyperson``: a ``tiny_set/`` tree (JPEG/PNG + COCO JSON) of large sea/shore images with tiny
  person-like objects (TinyPerson's size distribution), look-alike distractors, ignore regions, uncertain
  boxes and a dense image. Distributions are documented in ``docs/datasets.md``.

All drawing is vectorised numpy; everything is seeded and deterministic. Each writer builds its
folders in a staging folder and renames them into place at the end (``building``), so a killed writer
leaves nothing a reader trusts; an existing set is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import io
import json
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


# --------------------------------------------------------------------------- TinyPerson-like detection

SIZE_LOGNORMAL = (2.56, 0.81)  # mu, sigma of ln(sqrt(w*h)): mean 18 px, sd ~17, ~70% <= 20 px
SIZE_CLIP = (2.5, 80.0)
SKIN = np.array([[224, 172, 140], [198, 134, 96], [141, 85, 54], [236, 192, 160]], np.float32)
CLOTHES = np.array(
    [
        [210, 40, 40],
        [240, 130, 30],
        [235, 215, 50],
        [30, 30, 35],
        [40, 70, 190],
        [235, 235, 235],
        [40, 150, 60],
        [180, 50, 160],
    ],
    np.float32,
)


def _smooth_matrix(n: int, cells: int, cell: float) -> np.ndarray:
    """(n, cells) Gaussian interpolation weights from a coarse grid of spacing ``cell`` to ``n`` pixels."""
    pos = np.arange(n, dtype=np.float32)[:, None] / cell
    grid = np.arange(cells, dtype=np.float32)[None, :] - 0.5
    wts = np.exp(-0.5 * ((pos - grid) / 0.6) ** 2)
    return wts / wts.sum(axis=1, keepdims=True)


def _lowfreq(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise of shape (h, w), roughly in [-1, 1]: a coarse random grid smoothly upsampled (2 matmuls)."""
    gh, gw = h // cell + 3, w // cell + 3
    small = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    out = _smooth_matrix(h, gh, cell) @ small @ _smooth_matrix(w, gw, cell).T
    return out * np.float32(1.6)


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Textured sea with waves and a sandy shore; returns (float32 HxWx3 image, shore_y per column).

    The smooth fields are computed at half resolution (then repeated 2x) for speed; the pixel noise is full
    resolution.
    """
    full_h, full_w = h, w
    h, w = (h + 1) // 2, (w + 1) // 2
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    shore_frac = rng.uniform(0.0, 0.4)
    shore_y = h * (1 - shore_frac) + 0.04 * h * np.sin(x[0] / rng.uniform(150, 400) + rng.uniform(0, 6.3))
    shore_y = (shore_y + 0.02 * h * _lowfreq(rng, 1, w, 64)[0]).astype(np.float32)
    waves = np.sin(
        (2 * math.pi / rng.uniform(5, 11)) * y
        + (3 * math.pi) * _lowfreq(rng, h, w, 48)
        + np.float32(2 * math.pi * rng.uniform(-0.01, 0.01)) * x
    )
    crest = np.clip((waves - 0.93) * (0.7 / 0.07), 0, 0.7) * (_lowfreq(rng, h, w, 24) > 0.35)
    is_sand = np.clip((y - shore_y[None, :]) / 1.5 + 0.5, 0, 1)
    foam = np.clip(1 - np.abs(y - shore_y[None, :]) / 3.0, 0, 1) * 0.6
    sea_gain = (0.85 + 0.3 * y / h) * np.ones_like(waves)
    sea_add = 25 * _lowfreq(rng, h, w, 96) + 12 * waves
    sand_add = 18 * _lowfreq(rng, h, w, 40) + 8 * _lowfreq(rng, h, w, 6)
    sea_base = np.array([rng.uniform(25, 60), rng.uniform(80, 125), rng.uniform(105, 150)], np.float32)
    sand_base = np.array([rng.uniform(175, 210), rng.uniform(155, 185), rng.uniform(110, 145)], np.float32)
    img = np.empty((h, w, 3), np.float32)
    keep = (1 - crest) * (1 - is_sand) * (1 - foam)
    white = (230 * crest * (1 - is_sand) + sand_add * is_sand) * (1 - foam) + 240 * foam
    sea_term = sea_gain * keep
    sand_term = is_sand * (1 - foam)
    sea_add_term = sea_add * keep + white
    for c in range(3):
        img[..., c] = sea_base[c] * sea_term + sea_add_term + sand_base[c] * sand_term
    img = img.repeat(2, axis=0).repeat(2, axis=1)[:full_h, :full_w]
    img += (rng.random((full_h, full_w, 3), dtype=np.float32) - 0.5) * 17
    return img, np.repeat(shore_y * 2, 2)[:full_w]


def _coverage(pw: int, ph: int, ox: float, oy: float, ss: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates relative to the sub-pixel object origin."""
    xs = (np.arange(pw * ss, dtype=np.float32) + 0.5) / ss - ox
    ys = (np.arange(ph * ss, dtype=np.float32) + 0.5) / ss - oy
    return np.meshgrid(xs, ys)


def _downsample(mask: np.ndarray, ss: int = 4) -> np.ndarray:
    h, w = mask.shape
    return mask.reshape(h // ss, ss, w // ss, ss).mean(axis=(1, 3))


def _paint(img: np.ndarray, x: float, y: float, bw: float, bh: float, layers, alpha: float = 1.0) -> None:
    """Composite ``layers`` [(mask_fn(X, Y) -> bool array in object units, rgb)] over box (x, y, bw, bh)."""
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = int(math.ceil(x + bw)), int(math.ceil(y + bh))
    x0c, y0c, x1c, y1c = max(x0, 0), max(y0, 0), min(x1, img.shape[1]), min(y1, img.shape[0])
    if x1c <= x0c or y1c <= y0c:
        return
    gx, gy = _coverage(x1 - x0, y1 - y0, x - x0, y - y0)
    u, v = gx / bw, gy / bh  # object units: 0..1 across the box
    patch = img[y0:y1, x0:x1] if (x0, y0, x1, y1) == (x0c, y0c, x1c, y1c) else None
    region = img[y0c:y1c, x0c:x1c]
    sl = (slice(y0c - y0, y1c - y0), slice(x0c - x0, x1c - x0))
    for fn, rgb in layers:
        m = _downsample(fn(u, v).astype(np.float32))[sl] * alpha
        region[...] = region * (1 - m[..., None]) + np.asarray(rgb, np.float32) * m[..., None]
    del patch


def _person_layers(rng: np.random.Generator, swimming: bool):
    skin = SKIN[rng.integers(len(SKIN))] + rng.normal(0, 10, 3)
    shirt = CLOTHES[rng.integers(len(CLOTHES))] + rng.normal(0, 12, 3)
    hair = np.array([40, 30, 25], np.float32) + rng.normal(0, 10, 3)
    if swimming:  # head and shoulders above water
        return [
            (lambda u, v: (np.abs(u - 0.5) < 0.45) & (v > 0.5) & (v < 1.0), shirt),
            (lambda u, v: ((u - 0.5) / 0.26) ** 2 + ((v - 0.3) / 0.28) ** 2 < 1, skin),
            (lambda u, v: ((u - 0.5) / 0.27) ** 2 + ((v - 0.18) / 0.16) ** 2 < 1, hair),
        ]
    legs = np.array([45, 55, 90], np.float32) + rng.normal(0, 15, 3) if rng.random() < 0.6 else skin
    return [
        (lambda u, v: (v > 0.52) & (np.abs(u - 0.33) < 0.13) | (v > 0.52) & (np.abs(u - 0.67) < 0.13), legs),
        (lambda u, v: (v > 0.2) & (v < 0.58) & (np.abs(u - 0.5) < 0.33), shirt),
        (lambda u, v: (v > 0.22) & (v < 0.5) & (np.abs(u - 0.5) > 0.36) & (np.abs(u - 0.5) < 0.5), skin),
        (lambda u, v: ((u - 0.5) / 0.22) ** 2 + ((v - 0.1) / 0.1) ** 2 < 1, skin),
    ]


def _distractor(rng: np.random.Generator, img: np.ndarray, x: float, y: float, s: float, on_sand: bool) -> None:
    kind = rng.choice(["buoy", "crest", "boat", "post"] + (["rock"] if on_sand else []))
    colour = CLOTHES[rng.integers(len(CLOTHES))] + rng.normal(0, 12, 3)
    if kind == "buoy":  # a round blob in clothing colours, sometimes with a band
        band = np.array([235, 235, 235], np.float32)
        layers = [(lambda u, v: (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25, colour)]
        if rng.random() < 0.5:
            layers.append((lambda u, v: ((u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25) & (np.abs(v - 0.5) < 0.1), band))
        _paint(img, x, y, s, s, layers)
    elif kind == "crest":  # an elongated white-ish streak
        white = np.array([225, 235, 240], np.float32) + rng.normal(0, 8, 3)
        _paint(
            img,
            x,
            y,
            s * 2.5,
            s * 0.6,
            [(lambda u, v: (u - 0.5) ** 2 / 0.25 + (v - 0.5) ** 2 / 0.25 < 1, white)],
            alpha=0.8,
        )
    elif kind == "boat":
        hull = np.array([rng.uniform(90, 240)] * 3, np.float32)
        _paint(
            img,
            x,
            y,
            s * 3,
            s * 1.2,
            [
                (lambda u, v: (v > 0.5) & (np.abs(u - 0.5) < 0.5 - 0.3 * (v - 0.5)), hull),
                (lambda u, v: (v > 0.15) & (v < 0.55) & (np.abs(u - 0.45) < 0.12), colour),
            ],
        )
    elif kind == "post":  # person-sized upright in clothing colours, but without a head
        _paint(
            img,
            x,
            y,
            s * 0.5,
            s * 1.8,
            [
                (lambda u, v: np.abs(u - 0.5) < 0.3, colour),
                (lambda u, v: (v < 0.2) & (np.abs(u - 0.5) < 0.5), colour * 0.6),
            ],
        )
    else:
        grey = np.array([rng.uniform(60, 110)] * 3, np.float32)
        _paint(img, x, y, s * 1.4, s, [(lambda u, v: (u - 0.5) ** 2 / 0.25 + (v - 0.6) ** 2 / 0.16 < 1, grey)])


def sample_person_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    mu, sigma = SIZE_LOGNORMAL
    return np.clip(rng.lognormal(mu, sigma, n), *SIZE_CLIP)


def _overlaps(box: tuple[float, float, float, float], placed: list) -> bool:
    if not placed:
        return False
    p = np.asarray(placed)
    x, y, w, h = box
    return bool(
        np.any(
            (p[:, 0] < x + w + 1) & (p[:, 0] + p[:, 2] + 1 > x) & (p[:, 1] < y + h + 1) & (p[:, 1] + p[:, 3] + 1 > y)
        )
    )


def _render_scene(rng: np.random.Generator, w: int, h: int, n_persons: int, dense: bool):
    """One image and its annotations (dicts without ids)."""
    img, shore_y = _background(rng, w, h)
    anns: list[dict[str, Any]] = []
    placed: list[tuple[float, float, float, float]] = []

    def person(s: float, uncertain: bool = False) -> None:
        for _ in range(30):
            cx, bottom = rng.uniform(0, w), rng.uniform(0.1 * h, h)
            swimming = bool(bottom < shore_y[int(min(cx, w - 1))])
            aspect = rng.uniform(0.9, 1.4) if swimming else rng.uniform(2.0, 3.0)  # h / w of the box
            bw, bh = s / math.sqrt(aspect), s * math.sqrt(aspect)
            x, y = cx - bw / 2, bottom - bh
            if x >= 0 and y >= 0 and x + bw <= w and not _overlaps((x, y, bw, bh), placed):
                break
        else:
            return
        placed.append((x, y, bw, bh))
        _paint(img, x, y, bw, bh, _person_layers(rng, swimming), alpha=0.4 if uncertain else 1.0)
        anns.append(
            {
                "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                "category_id": 1 if swimming else 2,
                "iscrowd": 0,
                "ignore": False,
                "uncertain": bool(uncertain),
                "logo": False,
                "in_dense_image": dense,
            }
        )

    sizes = sample_person_sizes(rng, n_persons)
    for s in sizes:
        person(float(s), uncertain=bool(rng.random() < 0.05))
    if not dense and rng.random() < 0.5:  # a crowd too packed to label one by one -> one ignore region
        cw, ch = rng.uniform(60, 140), rng.uniform(40, 90)
        if cw < w and ch < 0.9 * h:  # small images (--max-size near 64) may have no room for one
            cx, cy = rng.uniform(0, w - cw), rng.uniform(0.1 * h, h - ch)
            for _ in range(int(rng.integers(6, 14))):
                s = float(rng.uniform(6, 12))
                aspect = rng.uniform(2.0, 3.0)
                bw, bh = s / math.sqrt(aspect), s * math.sqrt(aspect)
                px, py = rng.uniform(cx, cx + cw - bw), rng.uniform(cy, cy + ch - bh)
                _paint(img, px, py, bw, bh, _person_layers(rng, False))
            placed.append((cx, cy, cw, ch))
            anns.append(
                {
                    "bbox": [round(cx, 2), round(cy, 2), round(cw, 2), round(ch, 2)],
                    "category_id": 1,
                    "iscrowd": 0,
                    "ignore": True,
                    "uncertain": False,
                    "logo": False,
                    "in_dense_image": dense,
                }
            )
    n_distract = int(max(n_persons, 10) * rng.uniform(0.8, 1.5))
    for s in sample_person_sizes(rng, n_distract):
        s = float(s)
        if 3 * s >= w or 2 * s >= 0.92 * h:
            continue  # does not fit this (small) image
        x, y = rng.uniform(0, w - 3 * s), rng.uniform(0.08 * h, h - 2 * s)
        if x < 0 or y < 0 or _overlaps((x, y, 3 * s, 2 * s), placed):
            continue
        _distractor(rng, img, x, y, s, on_sand=y > shore_y[int(min(max(x, 0), w - 1))])
    return np.clip(img, 0, 255).astype(np.uint8), anns


def write_tinyperson(
    out_dir: str | Path,
    n_train: int = 8,
    n_test: int = 4,
    seed: int = 0,
    min_size: int = 1000,
    max_size: int = 2500,
    persons: tuple[int, int] = (8, 40),
    dense: bool = True,
    image_format: str = "jpg",
    corner: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a TinyPerson-like ``out_dir/tiny_set`` tree; ``min_size``/``max_size`` bound the image width.

    Files: ``tiny_set/{train,test}/labeled_images/*.jpg``, ``annotations/tiny_set_train.json`` (no dense
    images), ``annotations/tiny_set_train_with_dense.json``, ``annotations/task/tiny_set_test_all.json``
    (merged ``person`` category) and, with ``corner``, ``annotations/task/tiny_set_test_all_corner.json``
    (each test image as 4 overlapping sub-images). With ``dense`` the first image of each split is dense
    (~4x the persons, every annotation ``in_dense_image``). Returns the written paths and size stats.
    """
    if image_format not in ("jpg", "png"):
        raise UsageError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not 64 <= min_size <= max_size:
        raise UsageError(f"need 64 <= min_size <= max_size, got {min_size}, {max_size}")
    if n_train < 0 or n_test < 0 or persons[0] < 0 or persons[1] < persons[0]:
        raise UsageError("image and person counts must be non-negative and persons given as (min, max)")
    final = Path(out_dir) / "tiny_set"
    with building(out_dir, ("tiny_set",), overwrite) as stage:
        written = _write_tinyperson(
            stage / "tiny_set", n_train, n_test, seed, min_size, max_size, persons, dense, image_format, corner
        )
    staged = str(stage / "tiny_set")
    return {k: v.replace(staged, str(final), 1) if isinstance(v, str) else v for k, v in written.items()}


def _write_tinyperson(
    root: Path, n_train, n_test, seed, min_size, max_size, persons, dense, image_format, corner
) -> dict[str, Any]:
    from PIL import Image

    from bhsearch.data.tiling import split_targets, tile_windows

    rng = np.random.default_rng(seed)
    (root / "annotations" / "task").mkdir(parents=True, exist_ok=True)
    raw_categories = [
        {"id": 1, "name": "sea_person", "supercategory": "person"},
        {"id": 2, "name": "earth_person", "supercategory": "person"},
    ]
    written: dict[str, Any] = {"root": str(root)}
    all_sizes = []
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split / "labeled_images").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            w = int(rng.integers(min_size, max_size + 1))
            h = int(w * rng.uniform(0.56, 0.8))
            is_dense = dense and i == 0
            k = int(rng.integers(persons[0], persons[1] + 1)) * (4 if is_dense else 1)
            pixels, img_anns = _render_scene(rng, w, h, k, is_dense)
            name = f"labeled_images/syn_{split}_{i:05d}.{image_format}"
            pil = Image.fromarray(pixels)
            if image_format == "jpg":
                pil.save(root / split / name, quality=92)
            else:
                pil.save(root / split / name, compress_level=1)
            image_id = len(images)
            images.append({"file_name": name, "height": h, "width": w, "id": image_id})
            for a in img_anns:
                a.update(image_id=image_id, id=len(anns), area=round(a["bbox"][2] * a["bbox"][3], 4))
                anns.append(a)
        sizes = [math.sqrt(a["area"]) for a in anns if not (a["ignore"] or a["uncertain"])]
        all_sizes += sizes
        if split == "train":
            dense_ids = {a["image_id"] for a in anns if a["in_dense_image"]}
            plain = {
                "images": [im for im in images if im["id"] not in dense_ids],
                "annotations": [a for a in anns if a["image_id"] not in dense_ids],
                "categories": raw_categories,
            }
            _dump(root / "annotations" / "tiny_set_train.json", plain)
            _dump(
                root / "annotations" / "tiny_set_train_with_dense.json",
                {"images": images, "annotations": anns, "categories": raw_categories},
            )
            written["train_json"] = str(root / "annotations" / "tiny_set_train.json")
        else:
            merged = [dict(a, category_id=1) for a in anns]
            task = {"images": images, "annotations": merged, "categories": [{"id": 1, "name": "person"}]}
            _dump(root / "annotations" / "task" / "tiny_set_test_all.json", task)
            written["test_json"] = str(root / "annotations" / "task" / "tiny_set_test_all.json")
            if corner:
                written["corner_json"] = str(_write_corner(task, root, split_targets, tile_windows))
    s = np.asarray(all_sizes)
    written["stats"] = {
        "boxes": int(s.size),
        "size_mean": float(s.mean()) if s.size else 0.0,
        "size_std": float(s.std()) if s.size else 0.0,
        "frac_le_20": float((s <= 20).mean()) if s.size else 0.0,
    }
    return written


def _write_corner(task: dict[str, Any], root: Path, split_targets, tile_windows) -> Path:
    images, anns = [], []
    by_image: dict[int, list] = {}
    for a in task["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in task["images"]:
        w, h = im["width"], im["height"]
        boxes = [a for a in by_image.get(im["id"], [])]
        xyxy = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in boxes],
            np.float64,
        ).reshape(-1, 4)
        tile = ((w + 1) // 2 + 25, (h + 1) // 2 + 25)
        for win in tile_windows(w, h, tile, min(50, min(tile) // 2)):  # 50 unless the image is tiny
            sub_id = len(images)
            images.append(
                {
                    "file_name": im["file_name"],
                    "id": sub_id,
                    "width": win[2] - win[0],
                    "height": win[3] - win[1],
                    "corner": list(win),
                    "origin_image_id": im["id"],
                }
            )
            t = split_targets(xyxy, np.zeros((0, 4)), win)
            for box, j in zip(t["boxes"], t["box_index"], strict=True):
                bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
                anns.append(
                    dict(
                        boxes[j],
                        id=len(anns),
                        image_id=sub_id,
                        bbox=[round(float(box[0]), 2), round(float(box[1]), 2), round(bw, 2), round(bh, 2)],
                        area=round(bw * bh, 4),
                    )
                )
    path = root / "annotations" / "task" / "tiny_set_test_all_corner.json"
    _dump(path, {"images": images, "annotations": anns, "categories": task["categories"]})
    return path


def _dump(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh)
