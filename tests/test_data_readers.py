"""Safe unpickler and the CIFAR-100 / ImageNet32 readers on files in the real formats."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from bhsearch.data import synthetic
from bhsearch.data.cifar import Cifar100
from bhsearch.data.imagenet32 import ImageNet32
from bhsearch.data.safe_pickle import load_pickle, loads
from bhsearch.data.synthetic import hwc_to_planes
from bhsearch.errors import DataError


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_safe_pickle_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"data": _SystemCall(marker)}))
    with pytest.raises(DataError, match=r"evil\.pkl.*refused.*system"):
        load_pickle(path)
    assert not marker.exists()


def test_safe_pickle_refuses_builtins_eval():
    with pytest.raises(DataError, match="builtins.eval"):
        loads(pickle.dumps(_Eval()), source="x.pkl")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_safe_pickle_admits_numpy_and_containers(protocol):
    payload = {
        "data": np.arange(24, dtype=np.uint8).reshape(4, 6),
        "labels": [1, 2, 3],
        "name": b"batch",
        "mean": np.linspace(0, 1, 5),
        "t": (1, 2.5, None),
        "n": np.int64(7),
    }
    out = loads(pickle.dumps(payload, protocol=protocol))
    assert out["data"].dtype == np.uint8 and out["data"].tolist() == payload["data"].tolist()
    assert out["labels"] == [1, 2, 3] and out["name"] == b"batch" and out["t"] == (1, 2.5, None)
    np.testing.assert_allclose(out["mean"], payload["mean"])
    assert out["n"] == 7


def test_safe_pickle_truncated_empty_missing(tmp_path):
    good = pickle.dumps({"data": np.zeros((10, 3072), np.uint8)})
    trunc = tmp_path / "trunc"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"trunc: not a readable pickle \(truncated"):
        load_pickle(trunc)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty: empty file"):
        load_pickle(empty)
    with pytest.raises(DataError, match="nothere: file not found"):
        load_pickle(tmp_path / "nothere")
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00garbage that is not a pickle")
    with pytest.raises(DataError, match="junk: not a readable pickle"):
        load_pickle(junk)


def _known_rows(n=3):
    """Images whose R, G, B planes are constant 10, 20, 30, with pixel (row 1, col 2) = (200, 100, 50)."""
    img = np.zeros((n, 32, 32, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    img[:, 1, 2] = (200, 100, 50)
    rows = np.zeros((n, 3072), np.uint8)
    rows[:, :1024], rows[:, 1024:2048], rows[:, 2048:] = 10, 20, 30
    rows[:, 1 * 32 + 2], rows[:, 1024 + 34], rows[:, 2048 + 34] = 200, 100, 50
    return img, rows


def _write_cifar(folder, rows, fine, coarse=None):
    folder.mkdir(parents=True, exist_ok=True)
    coarse = [f // 5 for f in fine] if coarse is None else coarse
    for split in ("train", "test"):
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": rows, "fine_labels": fine, "coarse_labels": coarse}, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump(
            {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]},
            fh,
            protocol=2,
        )


def test_cifar_plane_order_and_roots(tmp_path):
    img, rows = _known_rows()
    _write_cifar(tmp_path / "cifar-100-python", rows, [0, 57, 99])
    for root in (tmp_path, tmp_path / "cifar-100-python"):
        ds = Cifar100(root, "train")
        np.testing.assert_array_equal(ds.data, img)
        assert ds[1][1] == 57 and ds.classes[57] == "f57"
    coarse = Cifar100(tmp_path, "test", label="coarse")
    assert coarse.num_classes == 20 and coarse.targets.tolist() == [0, 11, 19]
    assert Cifar100(tmp_path, transform=lambda a: a.shape)[0][0] == (32, 32, 3)


def test_cifar_bad_files(tmp_path):
    _, rows = _known_rows()
    _write_cifar(tmp_path / "cifar-100-python", rows, [0, 5, 100])
    with pytest.raises(DataError, match=r"cifar-100-python/train: 'fine_labels' outside 0\.\.99"):
        Cifar100(tmp_path, "train")
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(DataError, match=r"cifar-100-python/test: not a readable pickle"):
        Cifar100(tmp_path, "test")
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python/test: file not found"):
        Cifar100(tmp_path, "test")
    with pytest.raises(DataError, match="not found"):
        Cifar100(tmp_path / "missing")


def test_synthetic_cifar_readable_and_balanced(tmp_path):
    synthetic.write_cifar100(tmp_path, n_train=300, n_test=200, seed=3)
    train, test = Cifar100(tmp_path, "train"), Cifar100(tmp_path, "test")
    assert train.data.shape == (300, 32, 32, 3) and train.data.dtype == np.uint8 and len(test) == 200
    assert train.targets.min() >= 0 and train.targets.max() <= 99
    assert np.bincount(train.targets, minlength=100).max() == 3  # balanced
    assert train.classes[0] == "disk_red_plain" and len(set(train.classes)) == 100
    coarse = Cifar100(tmp_path, "train", label="coarse")
    np.testing.assert_array_equal(coarse.targets, train.targets // 5)
    raw = (tmp_path / "cifar-100-python" / "train").read_bytes()  # Python 2 layout, as the official files
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    as_bytes = pickle.loads(raw, encoding="bytes")
    np.testing.assert_array_equal(hwc_to_planes(train.data), as_bytes[b"data"])
    assert pickle.loads(raw, encoding="latin1")["fine_labels"] == train.targets.tolist()
    again = tmp_path / "again"
    synthetic.write_cifar100(again, n_train=300, n_test=200, seed=3)
    np.testing.assert_array_equal(Cifar100(again, "train").data, train.data)  # deterministic


@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_synthetic_imagenet32(tmp_path, fmt):
    synthetic.write_imagenet32(tmp_path, n_batches=2, per_batch=60, n_val=40, seed=1, fmt=fmt)
    train, val = ImageNet32(tmp_path, "train"), ImageNet32(tmp_path, "val")
    assert train.data.shape == (120, 32, 32, 3) and len(val) == 40 and len(train.files) == 2
    assert train.targets.min() >= 0 and train.targets.max() <= 999 and train.num_classes == 1000
    assert train.mean is not None and train.mean.shape == (3072,)
    suffix = "_npz" if fmt == "npz" else ""
    raw_path = tmp_path / f"Imagenet32_val{suffix}" / ("val_data.npz" if fmt == "npz" else "val_data")
    raw = dict(np.load(raw_path)) if fmt == "npz" else load_pickle(raw_path)
    np.testing.assert_array_equal(val.targets, np.asarray(raw["labels"]) - 1)
    assert ImageNet32(tmp_path, "train", batches=[2]).data.shape[0] == 60


def test_imagenet32_plane_order_and_errors(tmp_path):
    img, rows = _known_rows(2)
    np.savez(tmp_path / "val_data.npz", data=rows, labels=np.array([1, 1000]))
    val = ImageNet32(tmp_path, "val")
    np.testing.assert_array_equal(val.data, img)
    assert val.targets.tolist() == [0, 999]
    np.savez(tmp_path / "val_data.npz", data=rows, labels=np.array([0, 5]))
    with pytest.raises(DataError, match=r"val_data\.npz: 'labels' outside 1\.\.1000"):
        ImageNet32(tmp_path, "val")
    (tmp_path / "val_data.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(DataError, match=r"val_data\.npz: not a readable \.npz"):
        ImageNet32(tmp_path, "val")
    with pytest.raises(DataError, match="train_data_batch_3"):
        ImageNet32(tmp_path, "train", batches=[3])
    with open(tmp_path / "train_data_batch_1", "wb") as fh:
        pickle.dump({"data": rows[:, :3000], "labels": [1, 2]}, fh)
    with pytest.raises(DataError, match="train_data_batch_1: 'data' rows have 3000 values"):
        ImageNet32(tmp_path, "train")
