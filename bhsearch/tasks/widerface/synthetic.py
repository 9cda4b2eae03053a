"""A synthetic WiderFace-like set written in the official layout (for tests, demos and CPU smoke runs).

``write_widerface(out_dir)`` writes::

    WIDER_{train,val}/images/<event>/<name>.jpg
    wider_face_split/wider_face_{train,val}_bbx_gt.txt      (+ _filelist.txt, wider_face_{train,val}.mat)
    eval_tools/ground_truth/wider_face_val.mat, wider_{easy,medium,hard}_val.mat

Faces are face-like blobs (skin ellipse, hair, eyes, nose, mouth; atypical pose shifts the features) of 4 px
to ~100 px (log-uniform height, height/width 1.15–1.35) on cluttered backgrounds (gradients, rectangles,
ellipses, bars, pixel noise and skin-coloured blobs without features as hard negatives). Every face carries
the official attributes (blur, expression, illumination, invalid, occlusion, pose): blur lowers the contrast,
occlusion paints an occluder over part of the face, invalid faces are drawn faint. Some images have no face.

Easy/medium/hard: the official sets come from EdgeBox detection rates, which track face size; here a valid
face counts in ``hard`` when its height is >= 10 px, in ``medium`` when >= 25 px and in ``easy`` when
>= 50 px (nested like the official sets). Smaller and invalid faces stay in ``face_bbx_list`` and count in
no setting, so the evaluator ignores detections on them, as with the real data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import UsageError
from bhsearch.tasks.widerface.reader import ATTRIBUTES, SETTINGS, image_key

EVENTS = ("0--Parade", "1--Handshaking", "2--Demonstration", "3--Riot", "4--Dancing", "5--Car_Accident")
SETTING_MIN_HEIGHT = {"easy": 50.0, "medium": 25.0, "hard": 10.0}
SKIN = np.array([[233, 192, 160], [210, 160, 120], [180, 130, 95], [140, 95, 65], [95, 65, 45]], np.float32)
HAIR = np.array([[30, 22, 18], [70, 45, 25], [120, 90, 50], [20, 20, 20], [150, 140, 130]], np.float32)
_SS = 4  # supersampling factor for anti-aliased faces


def _ellipse(cx: float, cy: float, rx: float, ry: float):
    return lambda u, v: ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 < 1.0


def _paint(img: np.ndarray, x: float, y: float, w: float, h: float, layers, alpha: float = 1.0, ss: int = _SS) -> None:
    """Composite ``layers`` [(mask_fn(u, v) -> bool, rgb)] with u, v in 0..1 across the box (x, y, w, h)."""
    x0, y0 = max(int(math.floor(x)), 0), max(int(math.floor(y)), 0)
    x1, y1 = min(int(math.ceil(x + w)), img.shape[1]), min(int(math.ceil(y + h)), img.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    xs = (np.arange((x1 - x0) * ss, dtype=np.float32) + 0.5) / ss + x0
    ys = (np.arange((y1 - y0) * ss, dtype=np.float32) + 0.5) / ss + y0
    u, v = np.meshgrid((xs - x) / w, (ys - y) / h)
    region = img[y0:y1, x0:x1]
    for fn, rgb in layers:
        m = fn(u, v).astype(np.float32).reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3)) * alpha
        region[...] = region * (1 - m[..., None]) + np.asarray(rgb, np.float32) * m[..., None]


def _face_layers(rng: np.random.Generator, atypical_pose: bool, expression: bool):
    skin = SKIN[rng.integers(len(SKIN))] * rng.uniform(0.9, 1.08)
    hair = HAIR[rng.integers(len(HAIR))]
    dx = rng.choice([-1, 1]) * 0.13 if atypical_pose else 0.0
    eye = np.array([25, 20, 20], np.float32)
    mouth_ry = 0.09 if expression else 0.045
    layers = [
        (_ellipse(0.5, 0.42, 0.56, 0.5), hair),
        (_ellipse(0.5 + dx / 2, 0.55, 0.47, 0.46), skin),
        (_ellipse(0.32 + dx, 0.47, 0.09, 0.055), eye),
        (_ellipse(0.68 + dx, 0.47, 0.09, 0.055), eye),
        (_ellipse(0.5 + dx * 1.3, 0.62, 0.05, 0.09), skin * 0.8),
        (_ellipse(0.5 + dx, 0.78, 0.16, mouth_ry), np.array([150, 45, 50], np.float32)),
    ]
    return layers


def _background(rng: np.random.Generator, w: int, h: int, n_faces: int) -> np.ndarray:
    """Cluttered background: colour gradient, rectangles, ellipses, bars, skin blobs, pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = ((xx * math.cos(angle) + yy * math.sin(angle)) / max(w, h) + 1) / 2
    img = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.float32)
    for _ in range(int(rng.integers(15, 40))):
        bw, bh = rng.uniform(4, w / 3), rng.uniform(4, h / 3)
        x, y = rng.uniform(-bw / 2, w - bw / 2), rng.uniform(-bh / 2, h - bh / 2)
        colour = rng.uniform(0, 255, 3)
        kind = rng.integers(3)
        if kind == 0:
            xa, ya, xb, yb = int(max(x, 0)), int(max(y, 0)), int(min(x + bw, w)), int(min(y + bh, h))
            img[ya:yb, xa:xb] = img[ya:yb, xa:xb] * 0.3 + colour * 0.7
        elif kind == 1:
            _paint(img, x, y, bw, bh, [(_ellipse(0.5, 0.5, 0.5, 0.5), colour)], alpha=0.8, ss=1)
        else:
            xa, xb = int(max(x, 0)), int(min(x + max(bw / 8, 2), w))
            img[:, xa:xb] = img[:, xa:xb] * 0.5 + colour * 0.5
    for _ in range(max(1, n_faces // 3)):  # skin-coloured blobs without features: hard negatives
        s = float(np.exp(rng.uniform(math.log(4), math.log(60))))
        x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
        _paint(img, x, y, s / 1.2, s, [(_ellipse(0.5, 0.5, 0.5, 0.5), SKIN[rng.integers(len(SKIN))])], ss=2)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return img


def _overlaps(box: tuple[float, float, float, float], placed: list[tuple[float, float, float, float]]) -> bool:
    x, y, w, h = box
    for px, py, pw, ph in placed:
        iw = min(x + w, px + pw) - max(x, px)
        ih = min(y + h, py + ph) - max(y, py)
        if iw > 0 and ih > 0 and iw * ih > 0.1 * min(w * h, pw * ph):
            return True
    return False


def render_image(
    rng: np.random.Generator, width: int, height: int, n_faces: int, face_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3) and its faces (N, 10): ``x y w h blur expression illumination invalid occlusion
    pose`` with integer boxes."""
    img = _background(rng, width, height, n_faces)
    lo, hi = face_range
    faces: list[list[float]] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(n_faces):
        for _try in range(20):
            fh = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
            fh = min(fh, height * 0.8)
            fw = max(fh / rng.uniform(1.15, 1.35), 2.0)
            box = (float(rng.integers(0, max(int(width - fw), 1))), float(rng.integers(0, max(int(height - fh), 1))))
            box = (box[0], box[1], float(round(fw)), float(round(fh)))
            if not _overlaps(box, placed):
                break
        else:
            continue
        placed.append(box)
        x, y, w, h = box
        blur = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
        expression = int(rng.random() < 0.1)
        illumination = int(rng.random() < 0.1)
        invalid = int(rng.random() < 0.04)
        occlusion = int(rng.choice(3, p=[0.7, 0.2, 0.1]))
        pose = int(rng.random() < 0.15)
        alpha = (1.0, 0.8, 0.6)[blur] * (0.35 if invalid else 1.0)
        _paint(img, x, y, w, h, _face_layers(rng, bool(pose), bool(expression)), alpha=alpha)
        if illumination:
            img[int(y) : int(y + h), int(x) : int(x + w)] *= 0.55
        if occlusion:
            frac = rng.uniform(0.1, 0.3) if occlusion == 1 else rng.uniform(0.35, 0.6)
            colour = rng.uniform(0, 255, 3)
            if rng.random() < 0.5:
                _paint(img, x, y + h * (1 - frac), w, h * frac, [(lambda u, v: u >= -1, colour)], ss=1)
            else:
                _paint(img, x, y, w * frac, h, [(lambda u, v: u >= -1, colour)], ss=1)
        faces.append([x, y, w, h, blur, expression, illumination, invalid, occlusion, pose])
    return np.clip(img, 0, 255).astype(np.uint8), np.asarray(faces, np.float64).reshape(-1, 10)


def setting_indices(faces: np.ndarray, min_height: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """1-based indices of the faces that count in each setting (valid faces at least ``min_height`` tall)."""
    min_height = min_height or SETTING_MIN_HEIGHT
    valid = faces[:, 7] == 0
    return {s: np.flatnonzero(valid & (faces[:, 3] >= min_height[s])) + 1 for s in SETTINGS}


def _cell(items: list[Any]) -> np.ndarray:
    arr = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        arr[i, 0] = item
    return arr


def _write_mats(folder: Path, split: str, images: list[tuple[str, str, np.ndarray]], min_height) -> None:
    """``wider_face_<split>.mat`` (+ the easy/medium/hard files for ``val``) in the official cell structure."""
    import scipy.io

    events = sorted({e for e, _, _ in images}, key=lambda e: int(e.split("--")[0]))
    by_event = {e: [(n, f) for ev, n, f in images if ev == e] for e in events}
    face = {
        "event_list": _cell([np.array([e]) for e in events]),
        "file_list": _cell([_cell([np.array([n]) for n, _ in by_event[e]]) for e in events]),
        "face_bbx_list": _cell([_cell([f[:, :4].copy() for _, f in by_event[e]]) for e in events]),
    }
    for k, attr in enumerate(ATTRIBUTES):
        face[f"{attr}_label_list"] = _cell(
            [_cell([f[:, 4 + k : 5 + k].copy() for _, f in by_event[e]]) for e in events]
        )
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(folder / f"wider_face_{split}.mat"), face)
    if split != "val":
        return
    for setting in SETTINGS:
        gt_list = _cell(
            [
                _cell([setting_indices(f, min_height)[setting].astype(np.int32).reshape(-1, 1) for _, f in by_event[e]])
                for e in events
            ]
        )
        scipy.io.savemat(
            str(folder / f"wider_{setting}_val.mat"),
            {"event_list": face["event_list"], "file_list": face["file_list"], "gt_list": gt_list},
        )


def write_widerface(
    out_dir: str | Path,
    n_train: int = 12,
    n_val: int = 8,
    seed: int = 0,
    width: int = 320,
    faces: tuple[int, int] = (0, 12),
    face_range: tuple[float, float] = (4.0, 100.0),
    events: tuple[str, ...] = EVENTS[:4],
    min_height: dict[str, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic WiderFace tree into ``out_dir`` (see module doc); returns ``out_dir``.

    Images are ``width`` wide (the real set: 1024) and 0.6–1.3 times as tall; ``faces`` is the range of faces
    per image (the first image of each split has none); ``face_range`` the face heights in pixels.
    """

    if n_train < 1 or n_val < 1:
        raise UsageError(f"need at least one train and one val image, got {n_train} and {n_val}")
    if width < 32:
        raise UsageError(f"width must be at least 32 px, got {width}")
    if not 0 <= faces[0] <= faces[1]:
        raise UsageError(f"faces must be a (min, max) range, got {faces}")
    if not 1 <= face_range[0] <= face_range[1]:
        raise UsageError(f"face_range must be a (min, max) height range in pixels, got {face_range}")
    if not events or any("--" not in e for e in events):
        raise UsageError("event names must look like '<number>--<Name>'")
    from bhsearch.data.synthetic import building

    names = ("WIDER_train", "WIDER_val", "eval_tools", "wider_face_split")  # the split files are checked: last
    with building(out_dir, names, overwrite) as stage:
        _write_widerface(stage, n_train, n_val, seed, width, faces, face_range, events, min_height)
    return Path(out_dir)


def _write_widerface(out: Path, n_train, n_val, seed, width, faces, face_range, events, min_height) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    split_dir = out / "wider_face_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, n_images in (("train", n_train), ("val", n_val)):
        images: list[tuple[str, str, np.ndarray]] = []
        for i in range(n_images):
            event = events[i % len(events)]
            number, label = event.split("--", 1)
            name = f"{number}_{label}_{label}_{split}_{i}"
            height = int(round(width * rng.uniform(0.6, 1.3)))
            n_faces = 0 if i == 0 else int(rng.integers(faces[0], faces[1] + 1))
            img, face_rows = render_image(rng, width, height, n_faces, face_range)
            path = out / f"WIDER_{split}" / "images" / event / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=95)
            images.append((event, name, face_rows))
        images.sort(key=lambda item: (int(item[0].split("--")[0]), item[1]))
        lines = []
        for event, name, rows in images:
            lines.append(f"{event}/{name}.jpg")
            lines.append(str(len(rows)))
            body = rows if len(rows) else np.zeros((1, 10))
            lines.extend(" ".join(str(int(v)) for v in row) + " " for row in body)
        (split_dir / f"wider_face_{split}_bbx_gt.txt").write_text("\n".join(lines) + "\n")
        (split_dir / f"wider_face_{split}_filelist.txt").write_text(
            "".join(f"{event}/{name}.jpg\n" for event, name, _ in images)
        )
        _write_mats(split_dir, split, images, min_height)
        if split == "val":
            _write_mats(out / "eval_tools" / "ground_truth", split, images, min_height)


def val_keys(out_dir: str | Path) -> list[str]:
    """``"<event>/<name>"`` of every validation image of a written tree (in file order)."""
    lines = (Path(out_dir) / "wider_face_split" / "wider_face_val_filelist.txt").read_text().split()
    return [image_key(*ln.split("/", 1)) for ln in lines]


__all__ = ["EVENTS", "SETTING_MIN_HEIGHT", "render_image", "setting_indices", "val_keys", "write_widerface"]
