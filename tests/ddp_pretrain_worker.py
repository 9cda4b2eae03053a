"""Started by tests/test_train_ddp.py under torchrun: one ``run_pretrain`` whose rank 0 stalls mid-run.

``python -m torch.distributed.run --standalone --nproc_per_node N tests/ddp_pretrain_worker.py ARGS_JSON``
with ``ARGS_JSON`` = ``{"spec", "data", "out", "config", "stall_at", "marker", "pids"}``. Every process
writes its pid to ``pids/rank<R>`` (so the test can ``kill -9`` it); rank 0 reads its training images one
by one and, at the ``stall_at``-th image, writes ``marker`` and sleeps until it is killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


class Stall:
    """A classification dataset that stops (sleeps) at its ``at``-th item read, after writing ``marker``."""

    def __init__(self, ds, at: int, marker: Path):
        self.ds, self.at, self.marker, self.calls = ds, at, marker, 0
        self.num_classes = ds.num_classes

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.at:
            self.marker.write_text(str(self.calls))
            time.sleep(3600)
        return self.ds[i]


def main() -> int:
    args = json.loads(sys.argv[1])
    from bhsearch.data.registry import open_classification
    from bhsearch.train.pretrain import PretrainConfig, run_pretrain

    rank = int(os.environ["RANK"])
    pids = Path(args["pids"])
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"rank{rank}").write_text(str(os.getpid()))
    data = args["data"]
    if rank == 0:
        train, test = open_classification(data, "train"), open_classification(data, "test")
        data = (Stall(train, int(args["stall_at"]), Path(args["marker"])), test)
    run_pretrain(args["spec"], data, PretrainConfig(**args["config"]), args["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
