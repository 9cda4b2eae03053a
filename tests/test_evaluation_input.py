"""``bhsearch evaluate`` refuses inconsistent ground truth with a one-line DataError."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bhsearch.errors import DataError
from bhsearch.tasks.tinyperson.evaluate import evaluate


def _gt(images, area=100.0):
    return {
        "images": images,
        "annotations": [{"id": 1, "image_id": 1, "bbox": [10, 10, 10, 10], "area": area, "category_id": 1}],
        "categories": [{"id": 1, "name": "person"}],
    }


def test_duplicate_image_ids_and_negative_area_are_refused(tmp_path):
    image = {"id": 1, "file_name": "a.jpg", "width": 640, "height": 512}
    with pytest.raises(DataError, match=r"images\[1\]: duplicate image id 1"):
        evaluate(_gt([image, dict(image, file_name="b.jpg")]), [])
    with pytest.raises(DataError, match=r"annotations\[0\].*'area' must not be negative, got -5"):
        evaluate(_gt([image], area=-5.0), [])
    det = [{"image_id": 1, "bbox": [10, 10, 10, 10], "score": 0.9, "category_id": 1}]
    assert evaluate(_gt([image]), det)["AP50_tiny"] == pytest.approx(100.0)

    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(_gt([image, image])))
    dets_path.write_text(json.dumps(det))
    proc = subprocess.run(
        [sys.executable, "-m", "bhsearch", "evaluate", "--gt", str(gt_path), "--dets", str(dets_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "duplicate image id 1" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
