"""Shared pytest fixtures: one Ray session for the whole test run and small synthetic datasets.

Both are session-scoped and lazy: only tests that request them pay for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (2 CPUs, no dashboard, ~100 MB object store) started once per test session."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",  # a new instance even when a `ray start` cluster runs on this machine
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 1024 * 1024,
            logging_level="WARNING",
            log_to_driver=False,
        )
    yield ray
    if started:
        ray.shutdown()


@dataclass(frozen=True)
class SyntheticData:
    """Small synthetic datasets on disk, in the real formats (see ``bhsearch.data.synthetic``)."""

    root: Path
    cifar100: Path
    tinyperson: Path

    @property
    def cifar100_ref(self) -> str:
        return f"cifar100:{self.cifar100}"

    @property
    def tinyperson_ref(self) -> str:
        return f"tinyperson:{self.tinyperson}"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> SyntheticData:
    """600/200 CIFAR-100-format images and 4/3 TinyPerson-format images of 320–400 px, seed 0."""
    from bhsearch.data import synthetic
    from bhsearch.tasks.tinyperson.synthetic import write_tinyperson

    root = tmp_path_factory.mktemp("synthetic-data")
    cifar, tiny = root / "cifar100", root / "tinyperson"
    synthetic.write_cifar100(cifar, n_train=600, n_test=200, seed=0)
    write_tinyperson(tiny, n_train=4, n_test=3, seed=0, min_size=320, max_size=400, persons=(4, 12))
    return SyntheticData(root=root, cifar100=cifar, tinyperson=tiny)


@pytest.fixture
def readonly_dir(tmp_path) -> Path:
    """A folder nothing can be written into: a 0555 folder, or ``/sys`` when running as root."""
    import tempfile

    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    for candidate in (ro, Path("/sys")):
        try:
            Path(tempfile.mkdtemp(dir=candidate)).rmdir()
        except OSError:
            yield candidate
            break
    else:
        pytest.skip("no read-only folder available (root without a read-only /sys)")
    ro.chmod(0o755)
