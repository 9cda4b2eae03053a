"""The wheel carries the design spaces and studies; bhsearch works from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPACES = {"hrnet-stage1-width.yaml", "hrnet.yaml", "resnet.yaml"}
STUDIES = {"cifar-proxy.yaml", "demo.yaml", "tinyperson.yaml", "widerface.yaml"}


def test_resources_are_package_data():
    res = files("bhsearch.resources")
    assert {p.name for p in (res / "spaces").iterdir() if p.name.endswith(".yaml")} == SPACES
    assert {p.name for p in (res / "studies").iterdir() if p.name.endswith(".yaml")} == STUDIES
    from bhsearch.solver import spaces_dir

    assert spaces_dir() == Path(str(res / "spaces"))


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_top_level_studies_are_the_packaged_ones(name):
    """``bhsearch tune studies/demo.yaml`` (README) reads the same file the wheel ships."""
    assert (ROOT / "studies" / name).read_bytes() == (files("bhsearch.resources") / "studies" / name).read_bytes()


def test_study_space_path_resolves_from_any_directory(tmp_path, monkeypatch):
    from bhsearch.solver import load_space, resolve_space_path

    monkeypatch.chdir(tmp_path)  # no spaces/ here
    assert resolve_space_path("spaces/resnet.yaml") == Path(str(files("bhsearch.resources") / "spaces" / "resnet.yaml"))
    assert load_space(tmp_path / "spaces" / "resnet.yaml", "resnet50").size > 0  # as Study.absolute() writes it
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "resnet.yaml").write_text("family: resnet\n")  # a user's own file wins
    assert resolve_space_path("spaces/resnet.yaml") == Path("spaces/resnet.yaml")
    assert resolve_space_path("elsewhere/resnet.yaml") == Path("elsewhere/resnet.yaml")


def _build_wheel(dest: Path) -> Path:
    """Build from a copy of the sources (setuptools writes build/ and *.egg-info beside them)."""
    src = dest / "src"
    shutil.copytree(ROOT / "bhsearch", src / "bhsearch", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dest.glob("bhsearch-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_lists_the_spaces_and_studies(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"bhsearch/resources/spaces/{n}" for n in SPACES} <= names
    assert {f"bhsearch/resources/studies/{n}" for n in STUDIES} <= names


@pytest.mark.slow
def test_installed_wheel_works_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "bhsearch", *args],
            capture_output=True,
            text=True,
            cwd=elsewhere,
            env=env,
            timeout=120,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import bhsearch; print(bhsearch.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
    )
    assert where.stdout.strip().startswith(str(target))
    solved = run("solve", "--base", "resnet50", "--input", "640x512", "--top", "3", "--json")
    assert solved.returncode == 0, solved.stderr
    assert '"rows"' in solved.stdout or '"candidates"' in solved.stdout
    listed = run("spaces", "--json")
    assert listed.returncode == 0, listed.stderr
    import json

    spaces = json.loads(listed.stdout)["spaces"]
    assert {Path(s["path"]).name for s in spaces} == SPACES and all(s["candidates"] for s in spaces)
    assert all(s["path"].startswith(str(target)) for s in spaces)
