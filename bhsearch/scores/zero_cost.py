"""Training-free scores of a network at initialisation, each from its paper's definition.

Every function takes a module whose ``forward`` returns a tensor or a mapping of feature maps (our
backbones return ``c2..c5``, the maps an FPN reads) and a batch of inputs, and returns one float
(larger is "better" for every score). The features of all returned levels are used together,
because a detector for tiny objects reads the high-resolution levels as much as the deep one
(MAE-DET, which scores only the last stage, weights the stride-4/8 stages by zero).

- :func:`synflow` — Tanaka et al., *Pruning neural networks without any data by iteratively
  conserving synaptic flow*, NeurIPS 2020; as a NAS proxy: Abdelfattah et al., *Zero-Cost Proxies
  for Lightweight NAS*, ICLR 2021. Weights replaced by their absolute values, normalisation layers
  removed, an all-ones input, R = sum of the outputs; score = Σ |θ ⊙ ∂R/∂θ| over conv/linear
  weights, reported as log10 (the raw sum overflows float64 for deep high-resolution networks).
- :func:`naswot` — Mellor et al., *Neural Architecture Search without Training*, ICML 2021. Binary
  ReLU activation codes c_i of the N inputs; K_H[i, j] = N_A − Hamming(c_i, c_j); score = log |det K_H|.
- :func:`gradnorm` — Abdelfattah et al. 2021: Σ over conv/linear weights of ‖∂L/∂θ‖₂ for one
  batch; L is cross-entropy of a fixed random linear head on the globally pooled features of every
  level against random labels (a backbone has no task head of its own).
- :func:`zen` — Lin et al., *Zen-NAS: A Zero-Shot NAS for High-Performance Image Recognition*, ICCV
  2021. Weights ~ N(0, 1), BN affine (1, 0) in training mode, x ~ N(0, 1), x' = x + 0.01·ε;
  score = log E_batch Σ |f(x) − f(x')| + Σ_BN log sqrt(mean batch variance of the BN's input) (the
  reference code's L1 form and BN scaling, the batch variance read directly).

All are deterministic for a seed: they work on a copy of the module, draw from their own
``torch.Generator`` and leave the global RNG untouched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

ZERO_COST_SCORES = ("synflow", "naswot", "gradnorm", "zen")
ZEN_MIXUP = 1e-2


def _levels(out) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, Mapping) else [out]


def _features(out) -> torch.Tensor:
    """All returned levels, flattened per sample and concatenated: (N, total elements)."""
    return torch.cat([t.flatten(1) for t in _levels(out)], 1)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _without_norm(model: nn.Module) -> nn.Module:
    """A copy with every BatchNorm / GroupNorm replaced by identity."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.BatchNorm2d, nn.GroupNorm)):
                setattr(parent, name, nn.Identity())
    return model


def synflow(model: nn.Module, inputs: torch.Tensor) -> float:
    """log10 of the SynFlow score (module docstring)."""
    net = _without_norm(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    x = torch.ones_like(inputs[:1], dtype=torch.float64)
    net.zero_grad(set_to_none=True)
    torch.sum(_features(net(x))).backward()
    total = sum(float((w.detach() * w.grad).abs().sum()) for w in _weights(net) if w.grad is not None)
    return math.log10(total) if total > 0 else float("-inf")


def naswot(model: nn.Module, inputs: torch.Tensor) -> float:
    """log |det K_H| of the ReLU codes of ``inputs`` (module docstring)."""
    net = copy.deepcopy(model).eval()
    n = inputs.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def hook(_module, _inp, out):
        c = (out.detach().flatten(1) > 0).to(torch.float64)
        kernel.add_(c @ c.T + (1 - c) @ (1 - c).T)  # N_A − Hamming distance, summed over ReLU calls

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            net(inputs)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if float(sign) != 0 else float("-inf")


def gradnorm(model: nn.Module, inputs: torch.Tensor, seed: int = 0, num_classes: int = 100) -> float:
    """Σ ‖∂L/∂θ‖₂ over conv/linear weights for one batch (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).train()
    pooled = torch.cat([t.mean(dim=(2, 3)) if t.dim() == 4 else t for t in _levels(net(inputs))], 1)
    head = torch.randn(pooled.shape[1], num_classes, generator=gen, dtype=pooled.dtype) / math.sqrt(pooled.shape[1])
    labels = torch.randint(0, num_classes, (inputs.shape[0],), generator=gen)
    weights = _weights(net)
    loss = nn.functional.cross_entropy(pooled @ head, labels)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return float(sum(float(g.norm()) for g in grads if g is not None))


def gaussian_init(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Zen-NAS initialisation: conv/linear weights ~ N(0, 1), biases 0, norm affine (1, 0)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model


def zen(model: nn.Module, inputs: torch.Tensor, seed: int = 0, repeat: int = 1) -> float:
    """Zen-score (module docstring); ``inputs`` give only the shape, the inputs are Gaussian."""
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(repeat):
        net = gaussian_init(copy.deepcopy(model), gen).train()
        x = torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype)
        x2 = x + ZEN_MIXUP * torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype)
        log_bn = []

        def hook(_module, inp, _out, log_bn=log_bn):
            var = inp[0].detach().double().var(dim=(0, 2, 3), unbiased=False)
            log_bn.append(0.5 * math.log(float(var.mean())))

        with torch.no_grad():
            f1 = _features(net(x))
            handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
            try:
                f2 = _features(net(x2))
            finally:
                for h in handles:
                    h.remove()
        delta = float((f1 - f2).abs().sum(1).mean())
        scores.append(math.log(delta) + sum(log_bn))
    return float(sum(scores) / len(scores))


SCORERS = {"synflow": synflow, "naswot": naswot, "gradnorm": gradnorm, "zen": zen}
SEEDED = ("gradnorm", "zen")

__all__ = ["SCORERS", "ZERO_COST_SCORES", "gaussian_init", "gradnorm", "naswot", "synflow", "zen"]
