"""Study files: valid studies load; invalid ones name the file, the line, the field and what is allowed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bhsearch.errors import UsageError
from bhsearch.tune.study import Study, load_study, parse_study

ROOT = Path(__file__).resolve().parents[1]

VALID = """\
name: t
base: resnet50
width_mult: 0.125
input_size: 640x512
search:
  algorithm: optuna
  num_samples: 3
stages:
  pretrain:
    data: synthetic-cifar100:data/c
    epochs: 2
    batch_size: 32
  finetune:
    data: synthetic-tinyperson:data/t
    epochs: 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UsageError) as info:
        load_study(write(tmp_path, text))
    return str(info.value)


def test_valid_study_and_derived_values(tmp_path):
    study = load_study(write(tmp_path, VALID))
    assert study.max_epochs == 3
    assert study.target_metric == "AP50_tiny"
    assert study.stages.pretrain.options == {"epochs": 2, "batch_size": 32}
    roles = [role for role, _ in study.reference_specs()]
    assert roles == ["base", "paper"]
    _, paper = study.reference_specs()[1]
    assert paper.blocks == (7, 6, 2, 1) and paper.widths == (8, 16, 32, 64)
    absolute = study.absolute(tmp_path)
    assert absolute.stages.pretrain.data == f"synthetic-cifar100:{tmp_path / 'data/c'}"
    assert Path(absolute.storage) == tmp_path / "runs"


def test_proxy_only_study_ranks_by_top1(tmp_path):
    text = VALID.split("  finetune:")[0]
    study = load_study(write(tmp_path, text))
    assert study.target_metric == "top1" and study.max_epochs == 2


def test_unknown_field_names_line_and_allowed(tmp_path):
    msg = error_of(tmp_path, VALID.replace("  num_samples: 3", "  num_samples: 3\n  sampler: tpe"))
    assert msg.startswith(f"{tmp_path / 'study.yaml'}:8: search.sampler: unknown field 'sampler'")
    assert "allowed: algorithm, num_samples, seed" in msg


def test_bad_literal_names_line_and_allowed(tmp_path):
    msg = error_of(tmp_path, VALID.replace("algorithm: optuna", "algorithm: bayes"))
    assert ":6: search.algorithm:" in msg
    assert "'optuna', 'random' or 'grid'" in msg


def test_bad_types_and_ranges(tmp_path):
    assert ":7: search.num_samples:" in error_of(tmp_path, VALID.replace("num_samples: 3", "num_samples: 0"))
    assert ":11: stages.pretrain.epochs:" in error_of(tmp_path, VALID.replace("epochs: 2", "epochs: two"))
    msg = error_of(tmp_path, VALID.replace("data: synthetic-cifar100:data/c", "data: mnist:data/c"))
    assert ":10: stages.pretrain.data:" in msg and "synthetic-cifar100" in msg


def test_unknown_base_and_input_size(tmp_path):
    msg = error_of(tmp_path, VALID.replace("base: resnet50", "base: resnet51"))
    assert ":2: base: unknown spec 'resnet51'" in msg and "resnet50" in msg
    assert ":4: input_size:" in error_of(tmp_path, VALID.replace("640x512", "640x"))


def test_missing_fields(tmp_path):
    msg = error_of(tmp_path, "name: t\nbase: resnet50\n")
    assert "stages: required field is missing" in msg
    msg = error_of(tmp_path, VALID.replace("    epochs: 1\n", ""))
    assert "stages.finetune.epochs: required field is missing" in msg


def test_stage_option_checked_against_training_config(tmp_path):
    msg = error_of(tmp_path, VALID.replace("batch_size: 32", "batch_sise: 32"))
    assert ":12: stages.pretrain.batch_sise: unknown pretrain setting" in msg and "batch_size" in msg
    msg = error_of(tmp_path, VALID.replace("batch_size: 32", "width_mult: 0.5"))
    assert "stages.pretrain.width_mult: not allowed" in msg and "top-level width_mult" in msg


def test_metric_must_fit_stages(tmp_path):
    msg = error_of(tmp_path, VALID + "scheduler:\n  metric: top1\n")
    assert "proxy metric" in msg
    assert "unknown metric 'mAP'" in error_of(tmp_path, VALID + "scheduler:\n  metric: mAP\n")
    # AI-TOD's AP is a known metric, but not one TinyPerson fine-tuning reports
    assert "is not reported when fine-tuning on tinyperson" in error_of(tmp_path, VALID + "scheduler:\n  metric: AP\n")


def test_malformed_yaml_and_not_a_mapping(tmp_path):
    assert "malformed YAML" in error_of(tmp_path, "name: [t\n")
    assert "must be a mapping" in error_of(tmp_path, "- a\n- b\n")
    with pytest.raises(UsageError, match="no such study file"):
        load_study(tmp_path / "absent.yaml")


def test_unsafe_yaml_tags_are_refused(tmp_path):
    msg = error_of(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n")
    assert "malformed YAML" in msg


def test_parse_study_from_dict_round_trip():
    study = parse_study({"name": "x", "base": "hrnet18", "stages": {"pretrain": {"data": "cifar100:/d", "epochs": 1}}})
    assert Study.model_validate(study.model_dump()) == study
    assert [r for r, _ in study.reference_specs()] == ["base", "paper"]


@pytest.mark.parametrize("name", ["demo.yaml", "tinyperson.yaml", "cifar-proxy.yaml"])
def test_shipped_studies_validate(name):
    study = load_study(ROOT / "studies" / name)
    assert study.max_epochs >= 1


def test_cli_error_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, VALID.replace("algorithm: optuna", "algorithm: bayes"))
    proc = subprocess.run(
        [sys.executable, "-m", "bhsearch", "tune", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "search.algorithm" in lines[0] and "Traceback" not in proc.stderr


def test_booleans_are_not_numbers(tmp_path):
    assert "num_samples must be a number, got true" in error_of(
        tmp_path, VALID.replace("num_samples: 3", "num_samples: true")
    )
    assert "width_mult must be a number" in error_of(tmp_path, VALID.replace("width_mult: 0.125", "width_mult: yes"))


def test_prefilter_score_defaults_to_activations():
    from bhsearch.tune.study import PrefilterConfig

    assert PrefilterConfig(keep=8).score == "activations"
