"""ImageNet JPEG folders: the reader on the synthetic layouts, bad input, crops, pre-training, CLI and studies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bhsearch.data import synthetic
from bhsearch.data.imagenet import ImageNetFolder, center_crops, devkit_wnids, random_resized_crops
from bhsearch.errors import DataError
from bhsearch.train.pretrain import PretrainConfig, _as_batches, data_defaults, decode_crop, run_pretrain

WNIDS = synthetic.synthetic_wnids(4)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same 4-class set (3 train + 2 val images per class, seed 1) in the three validation layouts."""
    root = tmp_path_factory.mktemp("imagenet")
    for layout in ("folders", "devkit", "kaggle"):
        synthetic.write_imagenet(root / layout, n_classes=4, n_train=3, n_val=2, seed=1, val_layout=layout)
    return {layout: root / layout for layout in ("folders", "devkit", "kaggle")}


def copy(layout: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(layout, tmp_path / "copy"))


def test_train_split_labels_follow_sorted_wnids(layouts):
    ds = ImageNetFolder(layouts["folders"], "train")
    assert ds.classes == sorted(WNIDS) == WNIDS and ds.num_classes == 4 and ds.layout == "folders"
    assert len(ds) == 12 and ds.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(Path(path).parent.name == WNIDS[label] for path, label in ds.samples)
    img, label = ds[0]  # the greyscale JPEG: decoded to 3 channels
    assert label == 0 and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert 64 <= img.shape[0] <= 96 and 64 <= img.shape[1] <= 96
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    colour, _ = ds[3]
    assert not np.array_equal(colour[..., 0], colour[..., 2])


def test_flat_val_with_devkit_or_kaggle_labels_like_folders(layouts):
    by_name = {}
    for layout, root in layouts.items():
        ds = ImageNetFolder(root, "val")
        assert ds.layout == layout and len(ds) == 8 and ds.classes == WNIDS
        by_name[layout] = {Path(p).name: label for p, label in ds.samples}
    assert by_name["folders"] == by_name["devkit"] == by_name["kaggle"]
    assert sorted(by_name["folders"]) == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 9)]
    assert np.bincount(list(by_name["folders"].values())).tolist() == [2, 2, 2, 2]
    # the devkit's ILSVRC2012_IDs are not in wnid order, and its non-leaf synset is dropped
    ids = devkit_wnids(layouts["devkit"] / "ILSVRC2012_devkit_t12" / "data" / "meta.mat")
    assert sorted(ids.values()) == WNIDS and sorted(ids) == [1, 2, 3, 4]
    assert [ids[i] for i in (1, 2, 3, 4)] != WNIDS


def test_registry_and_synthetic_kind(tmp_path):
    from bhsearch.data.registry import open_classification

    ref = f"synthetic-imagenet:{tmp_path / 'in'}"
    train, test = open_classification(ref, "train"), open_classification(ref, "test")
    assert (len(train), len(test), train.num_classes, test.split) == (80, 40, 10, "val")
    assert train.classes == synthetic.synthetic_wnids(10)
    mtime = (tmp_path / "in" / "val").stat().st_mtime_ns
    open_classification(ref, "train")  # generated once, then only read
    assert (tmp_path / "in" / "val").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="no train/ or val/ folder"):
        open_classification(f"imagenet:{tmp_path / 'in' / 'train'}", "train")


def test_bad_input_is_one_clear_error(layouts, tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        ImageNetFolder(empty)
    with pytest.raises(DataError, match="no train/ or val/ folder"):
        ImageNetFolder(tmp_path / "empty" / "train")
    (empty / "train" / WNIDS[0]).mkdir()
    with pytest.raises(DataError, match=f"{WNIDS[0]}: no images"):
        ImageNetFolder(empty)

    root = copy(layouts["devkit"], tmp_path)
    gt = root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="7 labels for the 8 images"):
        ImageNetFolder(root, "val")
    gt.write_text("\n".join(["99"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"ground_truth.txt:1: ILSVRC2012_ID 99 is not a class"):
        ImageNetFolder(root, "val")
    gt.unlink()
    with pytest.raises(DataError, match="a flat val/ folder needs ILSVRC2012_validation_ground_truth.txt"):
        ImageNetFolder(root, "val")
    ImageNetFolder(root, "train")  # the train split does not need the validation labels

    kaggle = copy(layouts["kaggle"], tmp_path / "k")
    csv = kaggle / "LOC_val_solution.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match="no label for ILSVRC2012_val_00000008.JPEG"):
        ImageNetFolder(kaggle, "val")

    folders = copy(layouts["folders"], tmp_path / "f")
    (folders / "val" / WNIDS[1]).rename(folders / "val" / "n99999999")
    with pytest.raises(DataError, match="'n99999999' is not among the 4 train classes"):
        ImageNetFolder(folders, "val")

    broken = copy(layouts["folders"], tmp_path / "b")
    bad = sorted((broken / "train" / WNIDS[2]).iterdir())[0]
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    ds = ImageNetFolder(broken, "train")
    with pytest.raises(DataError, match=f"{bad.name}: not a readable image"):
        ds[6]
    cfg = PretrainConfig(image_size=32, decode="worker")
    batches, _ = _as_batches(ds, None, 0, "train", cfg)
    with pytest.raises(DataError, match="not a readable image"):
        batches.__getitems__([6])


def test_crops_are_seeded_and_exact():
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in ((90, 70), (64, 96))]
    state = torch.random.get_rng_state()
    a = random_resized_crops(images, 48, (0.08, 1.0), seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert a.shape == (2, 3, 48, 48) and a.dtype == torch.uint8
    assert torch.equal(a, random_resized_crops(images, 48, (0.08, 1.0), seed=7))
    assert not torch.equal(a, random_resized_crops(images, 48, (0.08, 1.0), seed=8))
    square = torch.randint(0, 256, (3, 73, 73), dtype=torch.uint8, generator=gen)
    # Resize(round(64 / 0.875) = 73) is a no-op here; CenterCrop(64) starts at round(4.5) = 4
    assert torch.equal(center_crops([square], 64, 0.875)[0], square[:, 4:68, 4:68])
    assert center_crops(images, 64, 0.875).shape == (2, 3, 64, 64)


def test_decode_in_workers_or_on_the_device_gives_the_same_batches(layouts):
    ds = ImageNetFolder(layouts["folders"], "train")
    out = {}
    for decode in ("worker", "device"):
        cfg = PretrainConfig(image_size=40, crop="resize", resize_scale=(0.08, 1.0), decode=decode)
        batches, collate = _as_batches(ds, None, 0, "train", cfg, torch.device("cpu"))
        images, labels = collate(batches.__getitems__([5, 0, 11]))
        if decode == "device":
            images = decode_crop(images, cfg, "cpu")  # what the training step does on the device
        out[decode] = images
        assert labels.tolist() == [1, 0, 3]
    assert out["worker"].shape == (3, 40, 40, 3) and torch.equal(out["worker"], out["device"])
    loader = torch.utils.data.DataLoader(batches, batch_sampler=[[5, 0, 11]], collate_fn=collate, num_workers=1)
    ((encoded, labels),) = list(loader)
    assert torch.equal(decode_crop(encoded, cfg, "cpu"), out["worker"])


def test_recipe_defaults_for_imagenet():
    assert data_defaults("imagenet:/x") == data_defaults("synthetic-imagenet:/x")
    assert data_defaults("imagenet:/x") == {"image_size": 224, "crop": "resize", "resize_scale": (0.08, 1.0)}
    assert data_defaults("imagenet32:/x") == {} and data_defaults(("train", "test")) == {}
    assert PretrainConfig(**data_defaults("imagenet:/x")).crop_pct == 0.875


def test_run_pretrain_on_synthetic_imagenet(tmp_path):
    cfg = PretrainConfig(
        epochs=1,
        batch_size=16,
        lr=0.05,
        width_mult=0.125,
        image_size=64,
        crop="resize",
        resize_scale=(0.08, 1.0),
        progress="off",
        num_threads=1,
    )
    ref = f"synthetic-imagenet:{tmp_path / 'data'}"
    res = run_pretrain("resnet18", ref, cfg, tmp_path / "run")
    assert res["epoch"] == 1 and len(res["history"]) == 1
    assert 0.0 <= res["top1"] <= 100.0 and res["top5"] >= res["top1"] and np.isfinite(res["loss"])
    again = run_pretrain("resnet18", ref, cfg, tmp_path / "run2")
    assert again["loss"] == res["loss"] and again["top1"] == res["top1"]  # deterministic
    saved = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert saved["num_classes"] == 10


def bhsearch(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "bhsearch", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_cli_pretrain_and_synth(tmp_path):
    res = bhsearch("data", "synth-imagenet", tmp_path / "d", "--classes", "3", "--train", "4", "--val", "2",
                   "--val-layout", "devkit", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["val"] == 6 and (tmp_path / "d" / "ILSVRC2012_devkit_t12" / "data").is_dir()
    res = bhsearch("pretrain", "--spec", "resnet18", "--width-mult", "0.125", "--data", f"imagenet:{tmp_path / 'd'}",
                   "--image-size", "32", "--epochs", "1", "--batch-size", "6", "--threads", "1", "--progress", "off",
                   "--out", tmp_path / "run", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["epoch"] == 1
    config = json.loads((tmp_path / "run" / "spec.json").read_text())["config"]
    # ImageNet's recipe defaults under the explicit --image-size
    assert (config["image_size"], config["crop"], config["resize_scale"]) == (32, "resize", [0.08, 1.0])
    res = bhsearch("pretrain", "--spec", "resnet18", "--data", f"imagenet:{tmp_path / 'absent'}", "--out",
                   tmp_path / "r2")  # fmt: skip
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    bad = tmp_path / "d" / "val" / "ILSVRC2012_val_00000003.JPEG"
    bad.write_bytes(b"GIF89a? no")
    res = bhsearch("pretrain", "--spec", "resnet18", "--width-mult", "0.125", "--data", f"imagenet:{tmp_path / 'd'}",
                   "--image-size", "32", "--epochs", "1", "--batch-size", "6", "--num-workers", "1", "--threads", "1",
                   "--progress", "off", "--out", tmp_path / "r3")  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"{bad}: not a readable image (" in lines[0]


def test_study_with_imagenet_data(layouts, tmp_path):
    from bhsearch.tune.runner import check_data
    from bhsearch.tune.study import load_study, stage_config

    text = f"""\
    name: inet
    base: resnet50
    width_mult: 0.125
    input_size: 640x512
    search:
      algorithm: random
      num_samples: 2
    stages:
      pretrain:
        data: imagenet:{layouts["devkit"]}
        epochs: 1
        image_size: 112
    """
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    study = load_study(path)
    config = stage_config(study, "pretrain")
    assert (config.image_size, config.crop, config.resize_scale) == (112, "resize", (0.08, 1.0))
    check_data(study)
    path.write_text(textwrap.dedent(text).replace(str(layouts["devkit"]), str(tmp_path / "nothing")))
    with pytest.raises(DataError, match=r"^stages.pretrain.data: imagenet:.*nothing"):
        check_data(load_study(path))
    path.write_text(textwrap.dedent(text).replace(f"imagenet:{layouts['devkit']}", "synthetic-imagenet:d"))
    assert load_study(path).stages.pretrain.data == "synthetic-imagenet:d"
