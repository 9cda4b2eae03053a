"""Training-free scores: each pinned on a tiny fixed network against an independent route (hand
algebra in numpy), determinism, the cost baselines against the solver, and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from bhsearch.errors import UsageError
from bhsearch.scores.candidates import cost_scores, parse_scores, score_spec
from bhsearch.scores.zero_cost import gradnorm, naswot, synflow, zen


def tiny_chain(bn: bool = False) -> nn.Module:
    torch.manual_seed(3)
    layers = [nn.Conv2d(3, 4, 3, padding=1, bias=False)]
    layers += [nn.BatchNorm2d(4)] if bn else []
    layers += [nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False)]
    return nn.Sequential(*layers)


def test_synflow_is_depth_times_the_synaptic_flow_of_a_linear_positive_chain():
    """With |W| and an all-ones input every ReLU is active: R is linear in each layer's weights, so
    (Euler) sum |W * dR/dW| over one layer is R, and over the two layers 2R."""
    net = tiny_chain()
    x = torch.randn(2, 3, 6, 5)
    with torch.no_grad():
        w1, w2 = (m.weight.abs().double() for m in net if isinstance(m, nn.Conv2d))
        r = float(nn.functional.conv2d(nn.functional.conv2d(torch.ones(1, 3, 6, 5).double(), w1, padding=1), w2).sum())
    assert synflow(net, x) == pytest.approx(math.log10(2 * r), abs=1e-12)
    assert synflow(tiny_chain(bn=True), x) == pytest.approx(math.log10(2 * r), abs=1e-12)  # BN removed
    assert float(next(net.parameters()).detach().min()) < 0  # the caller's module is untouched


def test_naswot_equals_the_hamming_kernel_log_determinant():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 6, 1, bias=False), nn.ReLU())
    x = torch.randn(5, 2, 2, 2)
    w = net[0].weight.detach().numpy()[:, :, 0, 0]
    codes = (np.einsum("oi,nihw->nohw", w, x.numpy()) > 0).reshape(5, -1).astype(int)
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    kernel = codes.shape[1] - hamming
    sign, logdet = np.linalg.slogdet(kernel.astype(float))
    assert sign > 0
    assert naswot(net, x) == pytest.approx(logdet, abs=1e-9)


def test_gradnorm_equals_the_hand_gradient_of_a_pooled_linear_layer():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False))
    x = torch.randn(6, 3, 4, 4)
    gen = torch.Generator().manual_seed(7)  # the score's own draws: head N(0, 1/F), then labels
    head = (torch.randn(4, 100, generator=gen) / 2.0).numpy().astype(np.float64)
    labels = torch.randint(0, 100, (6,), generator=gen).numpy()
    w = net[0].weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    xm = x.numpy().mean(axis=(2, 3)).astype(np.float64)  # (N, 3): pooling commutes with a 1x1 conv
    logits = xm @ w.T @ head
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(6), labels] -= 1
    grad = ((p / 6) @ head.T).T @ xm  # dL/dW, (4, 3)
    assert gradnorm(net, x, seed=7) == pytest.approx(np.linalg.norm(grad), rel=1e-5)


@pytest.mark.parametrize("bn", [False, True])
def test_zen_equals_the_hand_computation(bn):
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), *([nn.BatchNorm2d(4)] if bn else []))
    shape = (8, 3, 3, 3)
    gen = torch.Generator().manual_seed(5)  # Zen's draws in order: weights, x, epsilon
    w = torch.randn(4, 3, 1, 1, generator=gen).numpy()[:, :, 0, 0].astype(np.float64)
    x = torch.randn(shape, generator=gen).numpy().astype(np.float64)
    x2 = x + 0.01 * torch.randn(shape, generator=gen).numpy().astype(np.float64)
    z1, z2 = np.einsum("oi,nihw->nohw", w, x), np.einsum("oi,nihw->nohw", w, x2)
    bn_term = 0.0
    if bn:

        def norm(z):
            return (z - z.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(z.var(axis=(0, 2, 3), keepdims=True) + 1e-5)

        bn_term = 0.5 * math.log(z2.var(axis=(0, 2, 3)).mean())
        z1, z2 = norm(z1), norm(z2)
    expected = math.log(np.abs(z1 - z2).reshape(8, -1).sum(1).mean()) + bn_term
    assert zen(net, torch.zeros(shape), seed=5) == pytest.approx(expected, rel=1e-5)


def test_scores_are_deterministic_and_seeded():
    kw = dict(width_mult=0.125, batch=[2, 4])
    sizes = [(96, 64), (32, 32)]
    names = ["zen", "synflow", "naswot", "gradnorm", "params", "bh_share"]
    a = score_spec("resnet18", names, sizes, seed=0, **kw)
    b = score_spec("resnet18", names, sizes, seed=0, **kw)
    c = score_spec("resnet18", names, sizes, seed=1, **kw)
    keys = [k for k in a if "@" in k]
    assert len(keys) == 8 and all(math.isfinite(a[k]) for k in keys)
    assert all(a[k] == b[k] for k in keys)
    assert a["zen@96x64"] != c["zen@96x64"] and a["params"] == c["params"]


def test_cost_baselines_match_the_solver_and_the_cost_model():
    from bhsearch import count, get_spec
    from bhsearch.solver import solve

    for base in ("resnet50", "hrnet32"):
        result = solve(base, "640x512", top=4)
        for cand in [result.base, *result.candidates]:
            costs = cost_scores(cand.spec, (640, 512))
            assert costs["bh_share"] == pytest.approx(cand.bh_score, abs=1e-15)
            assert costs["params"] == cand.params and costs["flops"] == cand.flops
    assert cost_scores(get_spec("bh-resnet50"), (640, 512))["flops"] == count(get_spec("bh-resnet50"), "640x512").flops


def test_parse_scores():
    assert parse_scores("zen, params,zen") == ["zen", "params"]
    with pytest.raises(UsageError, match="unknown score jacov"):
        parse_scores("zen,jacov")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bhsearch", "score", *args], capture_output=True, text=True)


def test_cli_json_and_errors(tmp_path):
    out = _cli(
        "--spec",
        "resnet18",
        "--spec",
        "bh-resnet50",
        "--score",
        "naswot,params,bh_share",
        "--width-mult",
        "0.125",
        "--input",
        "128x96",
        "--small",
        "none",
        "--json",
        "--csv",
        str(tmp_path / "s.csv"),
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["id"] for r in rows] == ["resnet:basic:k7s2p:2-2-2-2", "resnet:bottleneck:k3s1p:7-6-2-1:s2-2-2-2"]
    assert set(rows[0]) == {"id", "naswot@128x96", "params", "bh_share", "seconds"}
    assert (tmp_path / "s.csv").read_text().startswith("id,naswot@128x96,")
    for bad, message in (
        (("--score", "jacov"), "unknown score"),
        (("--batch", "1"), "batch must be at least 2"),
        (("--width-mult", "nan"), "--width-mult"),
    ):
        proc = _cli("--spec", "resnet18", *bad)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
