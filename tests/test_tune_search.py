"""Candidate pool, the Optuna define-by-run sampler, search plans and the fidelity-aware score (no Ray)."""

from __future__ import annotations

import pickle

import optuna
import pytest

from bhsearch.spec import get_spec
from bhsearch.tune.runner import PoolSampler, candidate_pool, genome, plan_search
from bhsearch.tune.study import parse_study
from bhsearch.tune.trial import FIDELITY_STEP, fidelity_score


def study(**search):
    return parse_study(
        {
            "name": "s",
            "base": "resnet50",
            "width_mult": 0.125,
            "space": {"tolerance": 2.0, "options": {"top": 12}},
            "search": {"num_samples": 5, **search},
            "stages": {"pretrain": {"data": "cifar100:/nowhere", "epochs": 2}},
        }
    )


@pytest.fixture(scope="module")
def pool():
    return candidate_pool(study())


def test_pool_starts_with_references_and_has_no_repeats(pool):
    assert [c.role for c in pool[:2]] == ["base", "paper"]
    assert pool[0].spec == get_spec("resnet50").scaled(0.125)
    assert pool[1].spec == get_spec("bh-resnet50").scaled(0.125)
    ids = [c.id for c in pool]
    assert len(ids) == len(set(ids)) and len(pool) >= 10
    assert all(c.role == "candidate" for c in pool[2:])


def test_genome_of_resnet_and_hrnet():
    layout, genes = genome(get_spec("bh-resnet50"))
    assert genes == (7, 6, 2, 1) and layout == "resnet:bottleneck:k3s1p:1-1-1-1:s2-2-2-2"
    layout, genes = genome(get_spec("hrnet18"))
    assert genes == (4, 1, 4, 4, 4, 4, 4, 4, 3, 4, 4, 4, 4)


def test_sampler_reproduces_reference_points_then_avoids_repeats(pool):
    sampler = PoolSampler(pool)
    paper = pool[1].id
    params = sampler.params_of(paper)
    assert set(params) == {"layout", "g0", "g1", "g2"}  # the last stage is closed by the pool
    assert sampler(optuna.trial.FixedTrial(params)) == {"spec_id": paper}
    again = sampler(optuna.trial.FixedTrial(params))["spec_id"]
    assert again != paper and again in {c.id for c in pool}
    restored = pickle.loads(pickle.dumps(sampler))  # Tune pickles the searcher for resume
    assert restored.issued == [paper, again]


def test_sampler_with_real_tpe_visits_distinct_candidates(pool):
    sampler = PoolSampler(pool)
    opt = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    seen = []
    for i in range(len(pool)):
        trial = opt.ask()
        seen.append(sampler(trial)["spec_id"])
        opt.tell(trial, float(i))
    assert sorted(seen) == sorted(c.id for c in pool)


def _queued(search) -> list[dict]:
    return [dict(c) for c in search.queue]


def test_random_plan_is_seeded_and_keeps_references_first(pool):
    search_a, n = plan_search(study(algorithm="random", seed=1), pool)
    search_b, _ = plan_search(study(algorithm="random", seed=1), pool)
    search_c, _ = plan_search(study(algorithm="random", seed=2), pool)
    ids = [c["spec_id"] for c in _queued(search_a)]
    assert n == 5 and ids == [c["spec_id"] for c in _queued(search_b)] and len(set(ids)) == 5
    assert ids[:2] == [pool[0].id, pool[1].id]
    assert ids != [c["spec_id"] for c in _queued(search_c)]
    assert search_a.inner is None  # the whole plan is the queue


def test_grid_plan_is_exhaustive(pool):
    search, n = plan_search(study(algorithm="grid"), pool)
    assert n == len(pool) and _queued(search) == [{"spec_id": c.id} for c in pool]


def test_optuna_plan_evaluates_references_first(pool):
    search, n = plan_search(study(algorithm="optuna"), pool)
    assert n == 5 and _queued(search) == []
    assert search.inner._points_to_evaluate == [PoolSampler(pool).params_of(pool[i].id) for i in (0, 1)]


def _with_noise(algorithm: str, repeats: int):
    data = study(algorithm=algorithm).model_dump()
    data["noise"] = {"repeats": repeats}
    return parse_study(data)


@pytest.mark.parametrize("algorithm", ["optuna", "random", "grid"])
def test_seed_repeats_of_the_references_come_first_and_are_never_searched(pool, algorithm):
    base, paper = pool[0].id, pool[1].id
    search, n = plan_search(_with_noise(algorithm, 3), pool)
    repeats = [{"spec_id": base, "repeat": 1}, {"spec_id": paper, "repeat": 1}]
    repeats += [{"spec_id": base, "repeat": 2}, {"spec_id": paper, "repeat": 2}]
    assert _queued(search)[:4] == repeats
    searched = 5 if algorithm != "grid" else len(pool)
    assert n == 4 + searched
    if algorithm == "optuna":  # the repeats never reach Optuna: it learns only from what it proposed
        assert search.suggest("t-repeat") == repeats[0] and "t-repeat" not in search.delegated
        search.on_trial_complete("t-repeat", {"score": 1.0})  # ignored: Optuna never issued it


def test_resumed_plan_skips_finished_repeats_and_reruns_interrupted_ones_first(pool):
    base, paper = pool[0].id, pool[1].id
    done = [base, f"{base}#r1"]
    search, n = plan_search(_with_noise("random", 3), pool, done=done, redo=[f"{paper}#r2"])
    queued = _queued(search)
    assert queued[:3] == [
        {"spec_id": paper, "repeat": 2},
        {"spec_id": paper, "repeat": 1},
        {"spec_id": base, "repeat": 2},
    ]
    assert {"spec_id": base} not in queued and {"spec_id": paper} in queued
    assert n == len(queued) == 3 + 4


def test_trial_keys_tell_repeats_from_search_trials():
    from bhsearch.tune.noise import config_key, repeat_configs, trial_key

    assert trial_key("a") == "a" and trial_key("a", 2) == "a#r2"
    assert config_key({"spec_id": "a", "repeat": 1}) == "a#r1" and config_key({"spec_id": "a"}) == "a"
    assert repeat_configs(["a", "b"], 1) == []


def test_fidelity_score():
    assert fidelity_score(12.5, 4, 4) == 12.5  # the final epoch: the metric itself
    assert fidelity_score(40.0, 2, 4) == 40.0 - 2 * FIDELITY_STEP
    assert fidelity_score(None, 1, 4) == -3 * FIDELITY_STEP
    assert fidelity_score(float("nan"), 4, 4) == 0.0
    # a trial stopped earlier ranks below every trial that got further, whatever its raw value
    assert fidelity_score(100.0, 3, 4) < fidelity_score(0.0, 4, 4)
    assert fidelity_score(99.0, 1, 4) < fidelity_score(1.0, 2, 4)


def _prefiltered(**prefilter):
    data = study().model_dump()
    data["prefilter"] = prefilter
    return parse_study(data)


def test_prefilter_keeps_the_best_scored_candidates():
    from bhsearch import count
    from bhsearch.tune.runner import solver_candidates

    full = solver_candidates(study())
    kept = solver_candidates(_prefiltered(score="params", keep=4))
    expected = sorted(full, key=lambda s: -count(s, "640x512").params)[:4]
    assert len(full) > 4 and [s.id for s in kept] == [s.id for s in expected]
    zen = solver_candidates(_prefiltered(score="zen", keep=2, width_mult=0.5))
    assert len(zen) == 2 and zen == solver_candidates(_prefiltered(score="zen", keep=2, width_mult=0.5))
    pool = candidate_pool(_prefiltered(score="params", keep=4))
    assert [c.role for c in pool][:1] == ["base"] and len(pool) <= 6  # references stay in front


def test_prefilter_score_is_checked():
    from bhsearch.errors import UsageError

    with pytest.raises(UsageError, match="unknown score 'jacov'"):
        _prefiltered(score="jacov", keep=3)
