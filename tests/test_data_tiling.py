"""Tile windows, the 0.7 keep rule, ignore regions and merging of per-tile detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bhsearch.data.tiling import (
    clip_boxes_to_tile,
    detections_to_coco,
    merge_detections,
    split_targets,
    tile_windows,
)
from bhsearch.errors import UsageError


def _coverage(width, height, wins):
    cov = np.zeros((height, width), np.int32)
    for x0, y0, x1, y1 in wins:
        cov[y0:y1, x0:x1] += 1
    return cov


def test_windows_hand_case():
    wins = tile_windows(1300, 600)
    xs = sorted({w[0] for w in wins})
    ys = sorted({w[1] for w in wins})
    assert xs == [0, 610, 660] and ys == [0, 88]  # stride 610/482, last shifted inside
    assert all(w[2] - w[0] == 640 and w[3] - w[1] == 512 for w in wins)
    assert _coverage(1300, 600, wins).min() >= 1


@pytest.mark.parametrize("size", [(640, 512), (641, 513), (1250, 994), (2500, 1800), (6000, 4000), (333, 2000)])
def test_windows_cover_inside_and_overlap(size):
    width, height = size
    wins = tile_windows(width, height, (640, 512), 30)
    assert _coverage(width, height, wins).min() >= 1
    for x0, y0, x1, y1 in wins:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert x1 - x0 == min(640, width) and y1 - y0 == min(512, height)
    xs = sorted({w[0] for w in wins})
    assert all(b - a <= 610 for a, b in zip(xs, xs[1:], strict=False))  # consecutive tiles overlap by >= 30 px
    assert max(w[2] for w in wins) == width and max(w[3] for w in wins) == height


def test_windows_exact_fit_and_errors():
    assert tile_windows(640 + 610, 512) == [(0, 0, 640, 512), (610, 0, 1250, 512)]  # no extra shifted tile
    assert tile_windows(300, 200) == [(0, 0, 300, 200)]
    assert len(tile_windows(6000, 4000)) == 10 * 9
    with pytest.raises(UsageError):
        tile_windows(100, 100, (64, 64), 64)
    with pytest.raises(UsageError):
        tile_windows(0, 100)


def test_keep_rule_hand_cases():
    win = (0, 0, 640, 512)
    boxes = np.array(
        [
            [10, 10, 30, 50],  # inside: kept unchanged
            [635, 100, 645, 110],  # half inside: sqrt(0.5) = 0.707 -> kept, clipped to 5 px wide
            [636, 200, 646, 210],  # 40% inside: sqrt(0.4) = 0.632 -> dropped
            [639.5, 300, 700, 301],  # clipped to 0.5 px wide -> dropped (< 1 px)
            [700, 10, 720, 30],  # outside
            [600, 500, 620, 530],  # 12/30 of height inside: sqrt(0.4) -> dropped
        ],
        np.float32,
    )
    kept, idx = clip_boxes_to_tile(boxes, win)
    assert idx.tolist() == [0, 1]
    np.testing.assert_allclose(kept, [[10, 10, 30, 50], [635, 100, 640, 110]])
    # shifted window: coordinates become tile-relative
    kept, idx = clip_boxes_to_tile(boxes, (610, 0, 1250, 512))
    assert idx.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(kept[0], [25, 100, 35, 110])
    # exactly at the threshold: 49 of 100 px^2 inside -> sqrt(0.49) = 0.7 -> kept
    kept, idx = clip_boxes_to_tile([[633, 0, 643, 10]], (0, 0, 640, 512), 0.7)
    assert idx.tolist() == [0] and kept[0, 2] - kept[0, 0] == 7


def test_ignore_boxes_kept_apart():
    boxes = np.array([[100, 100, 110, 120], [630, 10, 660, 20]], np.float32)
    ignore = np.array([[600, 300, 700, 400], [900, 0, 950, 50]], np.float32)
    t = split_targets(boxes, ignore, (0, 0, 640, 512))
    assert t["box_index"].tolist() == [0] and t["dropped"] == 1
    np.testing.assert_allclose(t["ignore_boxes"], [[600, 300, 640, 400]])  # any overlap kept, never positive
    assert len(t["boxes"]) == 1


def test_merge_shifts_back_and_nms_across_overlap():
    per_tile = [
        {"tile": (0, 0, 640, 512), "boxes": [[620, 100, 638, 130], [10, 10, 20, 30]], "scores": [0.9, 0.5]},
        # the same person seen from the next tile (x offset 610), slightly shifted: IoU > 0.5 with the first
        {
            "tile": torch.tensor([610, 0, 1250, 512]),
            "boxes": torch.tensor([[11.0, 101, 29, 131]]),
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([1]),
        },
        # a different person in the second tile
        {"tile": (610, 0, 1250, 512), "boxes": np.array([[300, 300, 320, 340]]), "scores": np.array([0.7])},
    ]
    out = merge_detections(per_tile)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.5])
    np.testing.assert_allclose(out["boxes"].numpy(), [[620, 100, 638, 130], [910, 300, 930, 340], [10, 10, 20, 30]])
    assert out["labels"].tolist() == [1, 1, 1]
    assert len(merge_detections(per_tile, max_dets=1)["scores"]) == 1
    coco = detections_to_coco(7, out)
    assert coco[1] == {"image_id": 7, "category_id": 1, "bbox": [910.0, 300.0, 20.0, 40.0], "score": pytest.approx(0.7)}
    # class-agnostic: a different label does not protect a duplicate
    dup = [{"tile": (0, 0, 10, 10), "boxes": [[0, 0, 10, 10], [0, 0, 10, 9.5]], "scores": [0.6, 0.5], "labels": [1, 2]}]
    assert len(merge_detections(dup)["scores"]) == 1
    assert merge_detections([])["boxes"].shape == (0, 4)
