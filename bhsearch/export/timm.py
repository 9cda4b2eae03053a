"""timm models for bhsearch backbones (``import bhsearch.export.timm`` registers them).

Registered names: ``bh_resnet50``, ``bh_hrnet18``, ``bh_hrnet32`` (the paper's bottom-heavy
backbones), ``bhsearch_<name>`` for every named spec (``bhsearch_resnet50``,
``bhsearch_bh_resnet50``, ``bhsearch_hrnet32`` …), and ``bhsearch_spec`` which takes any spec
(``spec="export/spec.json"``, a name or an id)::

    import timm, bhsearch.export.timm
    features = timm.create_model("bh_resnet50", features_only=True)   # 4 maps, strides 4..32
    features.feature_info.channels(), features.feature_info.reduction()

``features_only`` goes through timm's ``FeatureGetterNet`` and the model's
``forward_intermediates``, which works for multi-branch HRNets as well. Weights saved by
``bhsearch export --to timm`` load with ``pretrained=True, pretrained_cfg_overlay=dict(file=...)``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices
from torch import nn

from bhsearch.errors import UsageError
from bhsearch.export.common import ExportSource, file_stem, readme_section, staged_output
from bhsearch.spec import NAMED_SPECS, get_spec

SHORT_NAMES = {"bh_resnet50": "bh-resnet50", "bh_hrnet18": "bh-hrnet18", "bh_hrnet32": "bh-hrnet32"}


def _pretrained_cfg(**extra: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 512, 640),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "body.conv1",
        "classifier": "head",
        "license": "mit",
        **extra,
    }


class BHSearchNet(nn.Module):
    """A bhsearch trunk as a timm model: ``forward_features``, ``forward_intermediates``,
    ``feature_info`` and an optional pooled linear ``head`` (``num_classes=0`` gives none)."""

    def __init__(
        self,
        spec: Any,
        norm: str = "bn",
        num_classes: int = 0,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__()
        if in_chans != 3:
            raise UsageError(f"bhsearch backbones take 3 input channels, got in_chans={in_chans}")
        if kwargs:
            raise UsageError(f"unknown bhsearch timm model argument(s): {', '.join(sorted(kwargs))}")
        from bhsearch.models import build_backbone

        self.spec = get_spec(spec)
        self.body = build_backbone(self.spec, norm=norm)
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"body.{info['module']}", "index": i}
            for i, (c, r, info) in enumerate(
                zip(self.spec.out_channels, self.spec.out_strides, self.body.feature_info, strict=True)
            )
        ]
        self.num_features = self.head_hidden_size = self.spec.out_channels[-1]
        self.drop_rate = drop_rate
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's intermediate-feature API: the maps at ``indices`` (default: all four)."""
        if output_fmt != "NCHW":
            raise UsageError("bhsearch models only give NCHW feature maps")
        take, _ = feature_take_indices(len(self.feature_info), indices)
        feats = list(self.body(x).values())
        intermediates = [feats[i] for i in take]
        if intermediates_only:
            return intermediates
        return feats[-1], intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ):
        """Drop the classifier (the trunk is needed whole: HRNet branches feed every level)."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return list(self.body(x).values())[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create(variant: str, spec: Any, pretrained: bool = False, **kwargs: Any) -> BHSearchNet:
    spec = get_spec(spec)
    levels = tuple(range(len(spec.out_channels)))
    feature_cfg = {"feature_cls": "getter", "out_indices": levels, **kwargs.pop("feature_cfg", {})}
    return build_model_with_cfg(
        BHSearchNet,
        variant,
        pretrained,
        pretrained_cfg=kwargs.pop("pretrained_cfg", None) or _pretrained_cfg(architecture=variant),
        feature_cfg=feature_cfg,
        spec=spec,
        **kwargs,
    )


def _named(variant: str, spec_name: str):
    def create(pretrained: bool = False, **kwargs: Any) -> BHSearchNet:
        return _create(variant, spec_name, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = variant
    create.__doc__ = f"bhsearch backbone {spec_name!r} ({get_spec(spec_name).id})."
    return create


def bhsearch_spec(pretrained: bool = False, spec: Any = None, **kwargs: Any) -> BHSearchNet:
    """Any bhsearch spec: ``timm.create_model("bhsearch_spec", spec="export/spec.json")``."""
    if spec is None:
        raise UsageError("bhsearch_spec needs spec=... (a name, a spec id, a dict or a spec.json path)")
    return _create("bhsearch_spec", spec, pretrained, **kwargs)


MODEL_NAMES: dict[str, str] = {**SHORT_NAMES, **{f"bhsearch_{n.replace('-', '_')}": n for n in NAMED_SPECS}}

for _variant, _spec_name in MODEL_NAMES.items():
    globals()[_variant] = register_model(_named(_variant, _spec_name))
register_model(bhsearch_spec)


README = """\
## timm

`{weights}` holds the backbone `{spec_id}` as a timm model (`BHSearchNet`, keys `body.*`).

```python
import timm
import bhsearch.export.timm  # registers bh_resnet50, bh_hrnet18, bh_hrnet32, bhsearch_*, bhsearch_spec

model = timm.create_model(
    "bhsearch_spec", spec="{spec_id}", features_only=True,
    pretrained=True, pretrained_cfg_overlay=dict(file="{folder}/{weights}"),
)
features = model(images)  # list of 4 maps; model.feature_info.channels() == {channels}
```
"""


def export(
    source: ExportSource,
    out: Any,
    detector: str | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] = (640, 512),
    **options: Any,
) -> Any:
    """Write ``<name>.timm.safetensors`` (trunk weights in timm key space) and a README section."""
    from bhsearch.detectors import load_state, read_safetensors, save_weights
    from bhsearch.export import ExportResult, weights_note
    from bhsearch.export.common import backbone_state

    norm = options.pop("norm", source.settings.get("norm", "bn"))
    if options:
        raise UsageError(f"the timm target takes no detector options, got {', '.join(sorted(options))}")
    net = BHSearchNet(source.spec, norm=norm)
    if source.weights is not None:
        load_state(net.body, backbone_state(read_safetensors(source.weights)), str(source.weights))
    scope = weights_note("backbone" if source.weights else None, source.weights).split(";")[0]
    weights = f"{file_stem(source.spec)}.timm.safetensors"
    with staged_output(out) as tmp:
        save_weights(net, tmp / weights)
        text = README.format(
            weights=weights, spec_id=source.spec.id, folder=out.as_posix(), channels=list(source.spec.out_channels)
        )
        readme_section(out, tmp, "timm", text)
    return ExportResult("timm", out, [weights, "README.md"], source.spec.id, {"weights": scope})


__all__ = ["MODEL_NAMES", "BHSearchNet", "bhsearch_spec", "export"]
