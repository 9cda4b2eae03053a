"""TinyPerson reader (flags, validation, corner files), TileDataset, synthetic set and registry."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from bhsearch.data import registry
from bhsearch.errors import DataError, UsageError
from bhsearch.tasks.tinyperson import synthetic
from bhsearch.tasks.tinyperson.reader import (
    ImageGroupedSampler,
    RandomHorizontalFlip,
    TileDataset,
    TinyPersonDataset,
    collate_tiles,
    resolve_tinyperson,
)


def _image(path, width, height):
    """A PNG whose pixel (x, y) is (x % 256, y % 256, (x // 256) * 16 + y // 256): every crop is checkable."""
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx % 256, yy % 256, (xx // 256) * 16 + yy // 256], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _ann(i, image_id, bbox, **flags):
    return {
        "id": i,
        "image_id": image_id,
        "bbox": bbox,
        "category_id": flags.pop("category_id", 1),
        "area": bbox[2] * bbox[3] if len(bbox) == 4 else 0,
        "iscrowd": flags.pop("iscrowd", 0),
        **flags,
    }


@pytest.fixture
def hand_set(tmp_path):
    pixels = _image(tmp_path / "img" / "a.png", 700, 600)
    _image(tmp_path / "img" / "b.png", 300, 200)
    _image(tmp_path / "img" / "dense.png", 300, 200)
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 700, "height": 600},
            {"id": 2, "file_name": "b.png", "width": 300, "height": 200},
            {"id": 3, "file_name": "dense.png", "width": 300, "height": 200},
        ],
        "annotations": [
            _ann(0, 1, [10, 10, 8, 16]),
            _ann(1, 1, [630, 100, 10, 10], category_id=2),  # crosses the x=640 cut
            _ann(2, 1, [300, 300, 100, 80], ignore=True),
            _ann(3, 1, [50, 400, 6, 12], uncertain=True),
            _ann(4, 1, [80, 400, 30, 30], iscrowd=1),
            _ann(5, 1, [690, 590, 20, 20]),  # leaves the image: clipped to 10x10
            _ann(6, 3, [5, 5, 4, 8], in_dense_image=True),
        ],
        "categories": [{"id": 1, "name": "sea_person"}, {"id": 2, "name": "earth_person"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, tmp_path / "img", data, pixels


def test_reader_flags_and_records(hand_set):
    path, root, _, pixels = hand_set
    with pytest.warns(UserWarning, match="1 boxes extend outside"):
        ds = TinyPersonDataset(path, root)
    assert len(ds) == 3
    a, b, dense = ds.records
    np.testing.assert_allclose(a.boxes, [[10, 10, 18, 26], [630, 100, 640, 110], [690, 590, 700, 600]])
    assert len(a.ignore_boxes) == 3 and a.uncertain == 1 and not a.dense
    assert len(b.boxes) == 0 and dense.dense
    target = ds.target(0)
    assert target["labels"].tolist() == [1, 1, 1]  # both categories merged to person
    s = ds.summary()
    assert (s["images"], s["boxes"], s["ignore_boxes"], s["uncertain"], s["dense_images"], s["empty_images"]) == (
        3,
        4,
        3,
        1,
        1,
        1,
    )
    assert s["clipped"] == 1 and s["crowd"] == 1
    np.testing.assert_array_equal(ds.read_region(0, (100, 50, 180, 90)), pixels[50:90, 100:180])
    with pytest.warns(UserWarning):
        assert len(TinyPersonDataset(path, root, include_dense=False)) == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["annotations"].append(_ann(9, 1, [1, 1, -3, 4])), r"annotation 9: negative box size"),
        (lambda d: d["annotations"].append(_ann(9, 7, [1, 1, 3, 4])), r"annotation 9 refers to unknown image id 7"),
        (
            lambda d: d["annotations"].append(_ann(9, 1, [1, float("nan"), 3, 4])),
            r"annotation 9: bbox has a non-finite",
        ),
        (lambda d: d["annotations"].append(_ann(9, 1, [1, 2, 3])), r"annotation 9: 'bbox' must be \[x, y, w, h\]"),
        (lambda d: d.pop("annotations"), r"missing 'annotations' list"),
        (
            lambda d: d["images"].append({"id": 9, "file_name": "nope.png", "width": 5, "height": 5}),
            r"image file not found: .*nope\.png",
        ),
        (lambda d: d["images"].append(dict(d["images"][0])), r"duplicate image id 1"),
    ],
)
def test_reader_rejects_bad_annotations(hand_set, mutate, message):
    path, root, data, _ = hand_set
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"ann\.json: " + message):
        TinyPersonDataset(path, root)


def test_reader_error_mode_bad_json_and_size_mismatch(hand_set, tmp_path):
    path, root, data, _ = hand_set
    with pytest.raises(DataError, match=r"annotation 5: box .* leaves image 1"):
        TinyPersonDataset(path, root, out_of_bounds="error")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        TinyPersonDataset(bad, root)
    with pytest.raises(DataError, match="missing.json: annotation file not found"):
        TinyPersonDataset(tmp_path / "missing.json", root)
    data["images"][1]["width"] = 301
    path.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = TinyPersonDataset(path, root)
    with pytest.raises(DataError, match=r"b\.png: image is 300x200 but the annotation file says 301x200"):
        ds.read_region(1)


def test_corner_records_read_the_right_pixels(tmp_path):
    pixels = _image(tmp_path / "img" / "big.png", 900, 700)
    data = {
        "images": [{"id": 5, "file_name": "big.png", "width": 400, "height": 300, "corner": [450, 350, 850, 650]}],
        "annotations": [_ann(0, 5, [10, 20, 8, 16])],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(data))
    ds = TinyPersonDataset(tmp_path / "c.json", tmp_path / "img")
    rec = ds.records[0]
    assert (rec.width, rec.height, rec.corner) == (400, 300, (450, 350, 850, 650))
    np.testing.assert_array_equal(ds.read_region(0), pixels[350:650, 450:850])
    np.testing.assert_allclose(rec.boxes, [[10, 20, 18, 36]])  # boxes stay in the sub-image frame


def test_size_from_image_header_and_lazy_exports(tmp_path):
    _image(tmp_path / "img" / "x.png", 123, 45)
    (tmp_path / "x.json").write_text(json.dumps({"images": [{"id": 0, "file_name": "x.png"}], "annotations": []}))
    rec = TinyPersonDataset(tmp_path / "x.json", tmp_path / "img").records[0]
    assert (rec.width, rec.height) == (123, 45)
    import bhsearch.data as data

    assert data.TileDataset is TileDataset and callable(data.merge_detections) and callable(data.load_pickle)


def test_tile_dataset_targets_and_pixels(hand_set):
    path, root, _, pixels = hand_set
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = TinyPersonDataset(path, root, include_dense=False)
    tiles = TileDataset(ds, (640, 512), 30)
    wins = [tuple(w) for _, w, _ in tiles.items]
    assert wins[:4] == [(0, 0, 640, 512), (60, 0, 700, 512), (0, 88, 640, 600), (60, 88, 700, 600)]
    assert wins[4:] == [(0, 0, 300, 200)]
    img, tgt = tiles[1]
    assert img.shape == (3, 512, 640) and img.dtype.is_floating_point and img.min() >= 0 and img.max() <= 1
    np.testing.assert_allclose((img.permute(1, 2, 0).numpy() * 255).round(), pixels[0:512, 60:700])
    np.testing.assert_allclose(tgt["boxes"].numpy(), [[570, 100, 580, 110]])  # (630,100,640,110) shifted by 60
    assert tgt["labels"].tolist() == [1] and tgt["tile"].tolist() == [60, 0, 700, 512] and int(tgt["image_id"]) == 1
    np.testing.assert_allclose(tgt["ignore_boxes"].numpy(), [[240, 300, 340, 380], [20, 400, 50, 430]])
    # box (630, 100, 640, 110) ends exactly at x=640, so it is fully inside tile 0 as well
    assert len(tiles[0][1]["boxes"]) == 2
    assert tiles[3][1]["boxes"].tolist() == [[570.0, 12.0, 580.0, 22.0], [630.0, 502.0, 640.0, 512.0]]
    assert TileDataset(ds, keep_empty=False).stats()["tiles"] == 4  # only b.png has no positives
    images, targets = collate_tiles([tiles[0], tiles[4]])
    assert images[1].shape == (3, 200, 300) and len(targets) == 2
    flipped_img, flipped = TileDataset(ds, transform=RandomHorizontalFlip(p=1.0))[1]
    np.testing.assert_allclose(flipped["boxes"].numpy(), [[60, 100, 70, 110]])  # 640 - (580, 570)
    np.testing.assert_array_equal(flipped_img.numpy(), img.flip(-1).numpy())
    order = list(ImageGroupedSampler(tiles, seed=1))
    assert sorted(order) == list(range(5))
    groups = [tiles.image_index(i) for i in order]
    assert groups == sorted(groups, key=groups.index)  # tiles of one image are contiguous


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp")
    info = synthetic.write_tinyperson(out, n_train=3, n_test=2, seed=5, min_size=300, max_size=420, persons=(6, 12))
    return out, info


def test_synthetic_tinyperson_layout_and_flags(synth_dir):
    out, info = synth_dir
    train_json, train_root, test_json, test_root = resolve_tinyperson(out)
    assert train_json.name == "tiny_set_train.json" and test_json.parent.name == "task"
    assert resolve_tinyperson(out / "tiny_set") == (train_json, train_root, test_json, test_root)
    plain = TinyPersonDataset(train_json, train_root)
    with_dense = TinyPersonDataset(train_json.with_name("tiny_set_train_with_dense.json"), train_root)
    assert len(plain) == 2 and len(with_dense) == 3 and with_dense.summary()["dense_images"] == 1
    assert plain.summary()["dense_images"] == 0
    test = TinyPersonDataset(test_json, test_root)
    assert {c["id"] for c in json.loads(test_json.read_text())["categories"]} == {1}
    assert all(300 <= r.width <= 420 for r in test.records)
    assert test.read_region(0).shape == (test.records[0].height, test.records[0].width, 3)
    assert info["stats"]["boxes"] > 0 and 2.5 <= info["stats"]["size_mean"] <= 40
    raw = json.loads((train_json.with_name("tiny_set_train_with_dense.json")).read_text())
    assert {a["category_id"] for a in raw["annotations"]} <= {1, 2}
    assert all(set(a) >= {"ignore", "uncertain", "in_dense_image", "iscrowd", "area"} for a in raw["annotations"])


def test_synthetic_tinyperson_is_deterministic(synth_dir, tmp_path):
    out, _ = synth_dir
    synthetic.write_tinyperson(tmp_path, n_train=3, n_test=2, seed=5, min_size=300, max_size=420, persons=(6, 12))
    for rel in ("annotations/tiny_set_train_with_dense.json", "test/labeled_images/syn_test_00001.jpg"):
        assert (tmp_path / "tiny_set" / rel).read_bytes() == (out / "tiny_set" / rel).read_bytes()


def test_smooth_noise_is_finite_and_refuses_non_finite_values(monkeypatch):
    """The backgrounds' smooth noise: finite, bounded, without numpy warnings (OpenBLAS can leave stale FP flags
    that numpy reports as "invalid value encountered in matmul"); a real NaN is an error, not a warning."""
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        noise = synthetic._lowfreq(rng, 300, 420, 64)
    assert noise.shape == (300, 420) and np.isfinite(noise).all() and np.abs(noise).max() < 1.7
    monkeypatch.setattr(synthetic, "_smooth_matrix", lambda n, cells, cell: np.full((n, cells), np.nan, np.float32))
    with pytest.raises(FloatingPointError, match="non-finite"):
        synthetic._lowfreq(rng, 30, 42, 8)


def test_synthetic_corner_file_matches_original(synth_dir):
    out, info = synth_dir
    _, _, test_json, test_root = resolve_tinyperson(out)
    full = TinyPersonDataset(test_json, test_root)
    corner = TinyPersonDataset(info["corner_json"], test_root)
    assert len(corner) == 4 * len(full)
    rec = corner.records[3]
    x0, y0, x1, y1 = rec.corner
    np.testing.assert_array_equal(corner.read_region(3), full.read_region(0)[y0:y1, x0:x1])


def test_synthetic_size_distribution_matches_tinyperson():
    sizes = synthetic.sample_person_sizes(np.random.default_rng(0), 200_000)
    assert 16.5 < sizes.mean() < 19.5 and 12 < sizes.std() < 18
    assert 0.66 < (sizes <= 20).mean() < 0.76


def test_registry_errors_and_detection(synth_dir, tmp_path):
    out, _ = synth_dir
    with pytest.raises(UsageError, match="KIND one of: cifar100, imagenet32"):
        registry.open_classification("mnist:/x")
    with pytest.raises(UsageError, match="KIND one of: tinyperson, synthetic-tinyperson"):
        registry.open_detection("cifar100:/x")
    with pytest.raises(UsageError, match="does not exist"):
        registry.open_detection(f"tinyperson:{tmp_path / 'none'}")
    with pytest.raises(DataError, match="no tiny_set/annotations"):
        resolve_tinyperson(tmp_path)
    ds = registry.open_detection(f"tinyperson:{out}", "test")
    assert isinstance(ds, TinyPersonDataset)
    tiles = registry.open_detection(f"tinyperson:{out}", "train", tile=(256, 256), overlap=30)
    assert isinstance(tiles, TileDataset) and tiles.train and len(tiles) >= 2 * 2
    img, tgt = tiles[0]
    rec = tiles.dataset.records[tiles.image_index(0)]
    assert img.shape[1:] == (min(256, rec.height), 256) and tgt["boxes"].shape[1] == 4


def _decodes_per_image(tmp_path, width, height):
    (tmp_path / "img").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    pixels = pixels.repeat(8, axis=0).repeat(8, axis=1)
    Image.fromarray(pixels).save(tmp_path / "img" / "big.jpg", quality=90)
    data = {
        "images": [{"id": 1, "file_name": "big.jpg", "width": width, "height": height}],
        "annotations": [_ann(0, 1, [width - 20, height - 30, 10, 20])],
        "categories": [{"id": 1, "name": "p"}],
    }
    (tmp_path / "big.json").write_text(json.dumps(data))
    ds = TinyPersonDataset(tmp_path / "big.json", tmp_path / "img")
    tiles = TileDataset(ds, train=False)
    for i in ImageGroupedSampler(tiles, seed=0):
        img, tgt = tiles[i]
        x0, y0, x1, y1 = tgt["tile"].tolist()
        assert img.shape == (3, y1 - y0, x1 - x0)
    return len(tiles), ds.cache.decodes


def test_large_image_decoded_once_for_all_tiles(tmp_path):
    assert _decodes_per_image(tmp_path, 1304, 1000) == (9, 1)


@pytest.mark.slow
def test_6000_pixel_image_decoded_once(tmp_path):
    assert _decodes_per_image(tmp_path, 6000, 4000) == (90, 1)
