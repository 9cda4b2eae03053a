"""CLI end to end (subprocess): solve, count, spaces; errors exit 2 with one line; solve stays torch-free."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest


def bhsearch(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bhsearch", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_solve_table_marks_paper_spec():
    proc = bhsearch("solve", "--base", "resnet50", "--input", "640x512")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "★ bh-resnet50" in out
    assert "resnet50 (base)" in out
    assert "resnet:bottleneck:k3s1p:7-6-2-1:s2-2-2-2" in out
    assert "27.115" in out and "26.905" in out


def test_solve_json():
    proc = bhsearch("solve", "--base", "resnet50", "--input", "640x512", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["base"]["flops"] == 26_904_657_920
    assert len(data["candidates"]) == data["feasible"]
    paper = [c for c in data["candidates"] if c["is_paper"]]
    assert [c["name"] for c in paper] == ["bh-resnet50"]
    assert paper[0]["flops"] == 27_115_028_480


def test_solve_hrnet_json_top():
    proc = bhsearch("solve", "--base", "hrnet32", "--json", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["candidates"]) == 3
    assert data["references"][0]["name"] == "bh-hrnet32"


def test_solve_csv(tmp_path):
    target = tmp_path / "out.csv"
    proc = bhsearch("solve", "--top", "4", "--sort", "bh", "--csv", str(target))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(target.open()))
    assert rows[0]["is_base"] == "True" and rows[0]["name"] == "resnet50"
    assert [r["rank"] for r in rows[1:5]] == ["1", "2", "3", "4"]
    assert rows[-1]["name"] == "bh-resnet50"
    bh = [float(r["bh_score"]) for r in rows[1:5]]
    assert bh == sorted(bh, reverse=True)
    proc = bhsearch("solve", "--top", "2", "--csv", "-")
    assert proc.returncode == 0
    assert len(list(csv.DictReader(io.StringIO(proc.stdout)))) == 4  # base, 2 rows, paper reference


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "--base", "resnet5O"], "unknown spec"),
        (["solve", "--input", "640x"], "input size"),
        (["solve", "--tolerance", "-1"], "--tolerance must be >= 0"),
        (["solve", "--tolerance", "abc"], "--tolerance must be a number"),
        (["solve", "--tolerance", "0.0001"], "no candidate"),
        (["solve", "--match", "energy"], "match must be one of"),
        (["solve", "--match", "latency"], "needs a latency profile"),
        (["solve", "--max-train-memory", "8 parsecs"], "--max-train-memory"),
        (["solve", "--top", "0"], "--top must be >= 1"),
        (["count", "resnet5O"], "unknown spec"),
        (["count", "resnet50", "--input", "x3"], "input size"),
        (["count", "resnet50", "--profile", "/nonexistent/table.json"], "no such latency table"),
    ],
)
def test_errors_are_one_line_exit_2(args, message):
    proc = bhsearch(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"bhsearch {args[0]}: error:") and message in lines[0]
    assert "Traceback" not in proc.stderr


def test_malformed_space_yaml(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("family: resnet\nblocks: [[1, 4], [1, 4]\nstems: [k7s2p]\n")
    proc = bhsearch("solve", "--space", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "space.yaml: malformed YAML" in proc.stderr
    bad.write_text("family: resnet\nblocks: [[1, 4], [1, 4]]\nstems: [k7s2p]\n")
    proc = bhsearch("solve", "--space", str(bad))
    assert proc.returncode == 2 and "field 'blocks': has 2 stages" in proc.stderr


def test_solve_does_not_import_torch_or_ray():
    code = (
        "import sys, io, contextlib\n"
        "from bhsearch.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['solve', '--base', 'resnet50', '--input', '640x512']) == 0\n"
        "    assert main(['solve', '--base', 'hrnet18', '--json', '--top', '2']) == 0\n"
        "    assert main(['count', 'bh-resnet50', '--json']) == 0\n"
        "    assert main(['spaces', '--json']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'pandas', 'numpy', 'torchvision') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_count_json_and_table():
    proc = bhsearch("count", "bh-resnet50", "--input", "640x512", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["params"], data["macs"], data["flops"]) == (10_948_160, 26_738_688_000, 27_115_028_480)
    assert [s["name"] for s in data["stages"]] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    proc = bhsearch("count", "resnet50", "--input", "224x224", "--num-classes", "1000")
    assert proc.returncode == 0, proc.stderr
    assert "head" in proc.stdout and "4.089" in proc.stdout and "25.557" in proc.stdout


@pytest.mark.slow  # a fresh process imports torch, timm (via ptflops) and fvcore: ~10 s of CPU
def test_count_verify_subprocess():
    proc = bhsearch("count", "resnet:bottleneck:k3s1pc8:2-1-1:w4-8-4:s2-2-2", "--input", "41x29", "--verify", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["verify"]["ok"] is True
    assert data["verify"]["ptflops"]["macs"] == data["macs"] == data["verify"]["fvcore"]["macs"]
    assert data["verify"]["ptflops"]["flops"] == data["flops"]


def test_count_verify_table(capsys):
    from bhsearch.cli import main

    assert (
        main(["count", "resnet:bottleneck:k3s1pc8:2-1-1:w4-8-4:s2-2-2", "--input", "41x29", "--verify", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["verify"]["ok"] is True
    assert data["verify"]["ptflops"]["macs"] == data["macs"] == data["verify"]["fvcore"]["macs"]
    assert data["verify"]["ptflops"]["flops"] == data["flops"]
    assert main(["count", "resnet:basic:k7s2p:1-1:w4-8", "--input", "33x31", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "cross-check" in out and out.count("✓") == 3 and "✗" not in out


def test_spaces():
    proc = bhsearch("spaces", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = {s["name"]: s for s in data["specs"]}
    assert names["bh-resnet50"]["id"] == "resnet:bottleneck:k3s1p:7-6-2-1:s2-2-2-2"
    spaces = {s["family"]: s for s in data["spaces"]}
    assert spaces["resnet"]["candidates"] == 221_184 and spaces["resnet"]["error"] is None
    assert spaces["hrnet"]["candidates"] > 0
    proc = bhsearch("spaces")
    assert proc.returncode == 0 and "bh-hrnet32" in proc.stdout


def test_help_explains_units():
    for cmd in ("solve", "count"):
        proc = bhsearch(cmd, "--help")
        assert proc.returncode == 0
        text = " ".join(proc.stdout.split())
        assert "multiply-accumulates" in text and "GFLOPs" in text


def test_count_with_profile(tmp_path, capsys):
    from bhsearch.cli import main
    from bhsearch.latency import network_units
    from bhsearch.latency.table import FORMAT, VERSION

    spec = "resnet:basic:k3s2p:1-1:w4-8"
    units = {u.key: {"inference_s": 1e-4, "train_s": 3e-4} for u in network_units(spec, "32x32")}
    table = {
        "format": FORMAT,
        "version": VERSION,
        "settings": {"device": "cpu", "batch_size": 1, "dtype": "float32", "norm": "bn", "threads": 1},
        "units": units,
        "overhead": {"32x32": {"inference_s": 1e-3, "train_s": 2e-3}},
    }
    path = tmp_path / "lat.json"
    path.write_text(json.dumps(table))
    assert main(["count", spec, "--input", "32x32", "--profile", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    lat = data["latency"]
    assert lat["predicted_inference_s"] == pytest.approx(1e-3 + 1e-4 * len(units))
    assert lat["measured_inference_s"] > 0
    assert main(["count", spec, "--input", "32x32", "--profile", str(path)]) == 0
    assert "predicted" in capsys.readouterr().out
