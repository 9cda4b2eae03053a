"""Dataset references ``KIND:PATH`` (the ``--data`` option) resolved to the real readers.

Kinds: ``cifar100:DIR``, ``imagenet32:DIR``, ``imagenet:DIR`` (ILSVRC2012 JPEG folders, ``bhsearch.data.imagenet``),
``tinyperson:DIR``, ``aitod:DIR``, ``widerface:DIR`` read user data; ``synthetic-cifar100:DIR``,
``synthetic-imagenet32:DIR``, ``synthetic-imagenet:DIR``, ``synthetic-tinyperson:DIR``,
``synthetic-aitod:DIR``, ``synthetic-widerface:DIR`` first generate a small CPU-sized set into DIR (only if DIR
holds none yet) and then read it with the same real readers. ``DETECTION_KINDS`` are the tiled kinds
(TinyPerson, AI-TOD: ``bhsearch finetune``); the WiderFace kinds (``FACE_KINDS``) are fine-tuned by
``bhsearch.train.finetune_widerface``, and ``open_detection`` reads them too. Which benchmark a kind belongs
to: ``bhsearch.tasks.benchmark_for_kind``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError

CLASSIFICATION_KINDS = (
    "cifar100",
    "imagenet32",
    "imagenet",
    "synthetic-cifar100",
    "synthetic-imagenet32",
    "synthetic-imagenet",
)
DETECTION_KINDS = ("tinyperson", "synthetic-tinyperson", "aitod", "synthetic-aitod")
FACE_KINDS = ("widerface", "synthetic-widerface")
KINDS = CLASSIFICATION_KINDS + DETECTION_KINDS + FACE_KINDS

# Small defaults suited to a CPU: seconds to generate, enough to learn something.
SYNTHETIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic-cifar100": {"n_train": 5000, "n_test": 1000, "seed": 0},
    "synthetic-imagenet32": {"n_batches": 2, "per_batch": 2000, "n_val": 1000, "seed": 0},
    "synthetic-imagenet": {"n_classes": 10, "n_train": 8, "n_val": 4, "seed": 0},
    "synthetic-tinyperson": {"n_train": 12, "n_test": 6, "seed": 0, "min_size": 800, "max_size": 1600},
    "synthetic-widerface": {},
    "synthetic-aitod": {
        "n_trainval": 6,
        "n_test": 3,
        "seed": 0,
    },  # write_widerface's defaults, as bhsearch.train.finetune_widerface.open_widerface
}


def parse_ref(ref: str, allowed: Sequence[str] = KINDS) -> tuple[str, Path]:
    """Split ``KIND:PATH``; unknown kinds or an empty path raise ``UsageError`` listing the kinds."""
    kind, sep, path = str(ref).partition(":")
    if not sep or kind not in allowed or not path:
        raise UsageError(f"dataset reference {ref!r} must be KIND:PATH with KIND one of: {', '.join(allowed)}")
    return kind, Path(path).expanduser()


def ensure_synthetic(kind: str, path: Path) -> Path:
    """Generate the synthetic set for ``kind`` into ``path`` unless it is already there.

    A set is there when the file its writer renames in last exists; an incomplete one is replaced.
    """
    from bhsearch.data import synthetic
    from bhsearch.tasks.tinyperson.synthetic import write_tinyperson

    params = SYNTHETIC_DEFAULTS[kind]
    if kind == "synthetic-cifar100":
        if not (path / "cifar-100-python" / "train").is_file():
            synthetic.write_cifar100(path, **params, overwrite=True)
    elif kind == "synthetic-imagenet32":
        if not (path / "Imagenet32_val" / "val_data").is_file():
            synthetic.write_imagenet32(path, **params, overwrite=True)
    elif kind == "synthetic-imagenet":
        if not (path / "val").is_dir():  # renamed in last by write_imagenet
            synthetic.write_imagenet(path, **params, overwrite=True)
    elif kind == "synthetic-widerface":
        # the file open_widerface checks: both generate the same set
        if not (path / "wider_face_split" / "wider_face_val_bbx_gt.txt").is_file():
            from bhsearch.tasks.widerface.synthetic import write_widerface

            write_widerface(path, **params, overwrite=True)
    elif kind == "synthetic-aitod":
        if not (path / "AI-TOD" / "annotations" / "aitod_test_v1.json").is_file():
            from bhsearch.tasks.aitod.synthetic import write_aitod

            write_aitod(path, **params, overwrite=True)
    elif not (path / "tiny_set" / "annotations" / "task" / "tiny_set_test_all.json").is_file():
        write_tinyperson(path, **params, overwrite=True)
    return path


def _existing(path: Path, kind: str) -> Path:
    if not path.exists():
        raise UsageError(f"{kind}: path {path} does not exist")
    return path


def open_classification(ref: str, split: str = "train", transform: Callable | None = None, **kwargs: Any):
    """A classification dataset for ``ref``; ``split`` is ``train`` or ``test`` (``val`` for ImageNet32 and ImageNet)."""
    kind, path = parse_ref(ref, CLASSIFICATION_KINDS)
    if kind.startswith("synthetic-"):
        ensure_synthetic(kind, path)
    else:
        _existing(path, kind)
    if kind.endswith("cifar100"):
        from bhsearch.data.cifar import Cifar100

        return Cifar100(path, "test" if split == "val" else split, transform=transform, **kwargs)
    if kind.endswith("imagenet"):
        from bhsearch.data.imagenet import ImageNetFolder

        return ImageNetFolder(path, "val" if split == "test" else split, transform=transform, **kwargs)
    from bhsearch.data.imagenet32 import ImageNet32

    return ImageNet32(path, "val" if split == "test" else split, transform=transform, **kwargs)


def open_detection(
    ref: str,
    split: str = "train",
    *,
    tile: Sequence[int] | None = None,
    overlap: int = 30,
    train: bool | None = None,
    include_dense: bool = True,
    **tile_kwargs: Any,
):
    """A ``TinyPersonDataset`` for ``ref`` and ``split`` (``train``/``test``); with ``tile=(w, h)`` a ``TileDataset``.

    ``train`` (default: ``split == "train"``) selects training tiles (0.7 rule) or test-time tiles.
    ``tile_kwargs`` go to ``TileDataset`` (``min_keep``, ``keep_empty``, ``transform``). A WiderFace ``ref``
    gives a ``WiderFaceDataset`` (``test`` is its ``val`` split; ``include_dense`` does not apply).
    """
    kind, path = parse_ref(ref, DETECTION_KINDS + FACE_KINDS)
    if split not in ("train", "test"):
        raise UsageError(f"detection split must be 'train' or 'test', got {split!r}")
    if kind.startswith("synthetic-"):
        ensure_synthetic(kind, path)
    else:
        _existing(path, kind)
    from bhsearch.tasks.tinyperson.reader import TileDataset, TinyPersonDataset, resolve_tinyperson

    if kind in FACE_KINDS:
        from bhsearch.tasks.widerface.reader import WiderFaceDataset

        dataset = WiderFaceDataset(path, "val" if split == "test" else split)
    elif kind.endswith("aitod"):
        from bhsearch.tasks.aitod.reader import resolve_aitod

        ann, img_root = resolve_aitod(path, "trainval" if split == "train" else "test")
        dataset = TinyPersonDataset(ann, img_root, labels="categories")
    else:
        train_json, train_root, test_json, test_root = resolve_tinyperson(path)
        ann, img_root = (train_json, train_root) if split == "train" else (test_json, test_root)
        dataset = TinyPersonDataset(ann, img_root, include_dense=include_dense)
    if tile is None:
        return dataset
    return TileDataset(dataset, tile, overlap, train=(split == "train") if train is None else train, **tile_kwargs)
