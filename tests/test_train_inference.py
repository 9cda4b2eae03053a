"""Tiled whole-image inference: tiles → detector → shift back → NMS merge → COCO → TinyPerson AP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bhsearch.data.tiling import tile_windows
from bhsearch.tasks.tinyperson.reader import TinyPersonDataset
from bhsearch.train.inference import detections_to_coco, evaluate_model, predict_tiled

TILE, OVERLAP = (96, 64), 24
SQUARES = {  # image id -> boxes (x0, y0, x1, y1); several lie in tile overlaps and are seen by 2-4 tiles
    1: [(10, 10, 20, 22), (76, 45, 86, 57), (150, 20, 162, 30), (120, 108, 128, 118)],
    2: [(40, 5, 52, 15), (5, 50, 17, 58)],
}
SIZES = {1: (200, 130), 2: (96, 64)}


class WhiteSquareDetector(torch.nn.Module):
    """An oracle 'detector': every connected white region of a tile is a detection (score from its size)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen_sizes = []

    def forward(self, images):
        from scipy import ndimage

        out = []
        for img in images:
            self.seen_sizes.append(tuple(img.shape[-2:]))
            mask = (img.min(0).values > 0.9).numpy()
            labels, _ = ndimage.label(mask)
            boxes = [(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop) for sl in ndimage.find_objects(labels) if sl]
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            out.append({"boxes": b, "scores": 0.5 + (b[:, 2] - b[:, 0]) / 100, "labels": torch.ones(len(b))})
        return out


@pytest.fixture()
def square_set(tmp_path):
    from PIL import Image

    images, anns = [], []
    for image_id, (w, h) in SIZES.items():
        pixels = np.zeros((h, w, 3), np.uint8)
        for x0, y0, x1, y1 in SQUARES[image_id]:
            pixels[y0:y1, x0:x1] = 255
            # precondition of the oracle: no tile cuts a square (each tile sees it whole or not at all)
            for wx0, wy0, wx1, wy1 in tile_windows(w, h, TILE, OVERLAP):
                inside = wx0 <= x0 and x1 <= wx1 and wy0 <= y0 and y1 <= wy1
                outside = x1 <= wx0 or x0 >= wx1 or y1 <= wy0 or y0 >= wy1
                assert inside or outside, (image_id, (x0, y0, x1, y1), (wx0, wy0, wx1, wy1))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        Image.fromarray(pixels).save(tmp_path / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h})
    ann_path = tmp_path / "test.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "p"}]}))
    return TinyPersonDataset(ann_path, tmp_path)


def test_tiled_inference_shifts_back_and_merges_duplicates(square_set):
    model = WhiteSquareDetector()
    dets = predict_tiled(model, square_set, tile=TILE, overlap=OVERLAP, batch_size=3, device="cpu")
    windows = sum(len(tile_windows(w, h, TILE, OVERLAP)) for w, h in SIZES.values())
    assert len(model.seen_sizes) == windows
    assert max(model.seen_sizes) <= (TILE[1], TILE[0])
    got = {(d["image_id"], tuple(round(v) for v in d["bbox"])) for d in dets}
    want = {(i, (x0, y0, x1 - x0, y1 - y0)) for i, boxes in SQUARES.items() for x0, y0, x1, y1 in boxes}
    assert got == want  # every square once, in image coordinates (duplicates from overlaps merged)
    assert len(dets) == len(want)
    assert model.training  # predict_tiled restores the mode


def test_evaluate_model_gives_perfect_ap_for_the_oracle(square_set, tmp_path):
    out = tmp_path / "dets.json"
    metrics = evaluate_model(
        WhiteSquareDetector(), square_set, tile=TILE, overlap=OVERLAP, device="cpu", detections_out=out
    )
    assert metrics["AP50_tiny"] == pytest.approx(100.0)
    assert metrics["AP50_all"] == pytest.approx(100.0)
    assert metrics["num_detections"] == 6
    assert len(json.loads(out.read_text())) == 6


def test_evaluate_model_penalises_a_dropped_square(square_set):
    class Forgetful(WhiteSquareDetector):
        def forward(self, images):
            outs = super().forward(images)
            return [{k: v[1:] for k, v in o.items()} for o in outs]  # drop the largest square of each tile

    metrics = evaluate_model(Forgetful(), square_set, tile=TILE, overlap=OVERLAP, device="cpu")
    assert metrics["AP50_all"] < 100.0


def test_detections_to_coco_converts_xyxy_to_xywh():
    merged = {"boxes": torch.tensor([[1.0, 2.0, 4.0, 8.0]]), "scores": torch.tensor([0.25])}
    assert detections_to_coco(7, merged) == [
        {"image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.25}
    ]
