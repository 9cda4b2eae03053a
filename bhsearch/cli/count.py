"""``bhsearch count``: analytic per-stage cost of one spec, optionally cross-checked."""

from __future__ import annotations

import argparse

from bhsearch.errors import UsageError

ORDER = 12

DESCRIPTION = """\
Per-stage analytic cost of SPEC (a name such as bh-resnet50, a spec id, or a JSON/YAML spec
file) at --input WIDTHxHEIGHT, without building the network.

Units: params in millions (all parameters, BN affine included; "conv" = conv and linear weights
only); GMACs = 10^9 multiply-accumulates of convolutions and linear layers (what the paper and
fvcore call "GFLOPs"); paper GFLOPs = MACs + 2 per batch-norm output + 1 per ReLU output + 1 per
max-pool input (+ 1 per upsample output) element, the convention of the paper's Table 4; acts =
output elements of every convolution, in millions.

--verify builds the network and counts it with fvcore (conv/linear MACs, its batch-norm term left
out) and ptflops (aten backend for MACs; pytorch backend, count_functional=False, for paper
FLOPs); exit code 1 if anything differs. --profile FILE adds the latency predicted from a
'bhsearch profile' table next to a measurement on the table's device (--runtime selects the
table's torch or onnxruntime entries, --stat their median or minimum, compared with the same statistic
of the measurement); a table marked by its quality checks is warned about on stderr.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "count",
        help="per-stage params / MACs / paper FLOPs / activations of a spec (analytic)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", metavar="SPEC", help="spec name (e.g. bh-resnet50), spec id, or JSON/YAML file")
    p.add_argument("--input", default="640x512", metavar="WxH", help="input size WIDTHxHEIGHT (default 640x512)")
    p.add_argument("--num-classes", metavar="N", help="add a classifier head (global pool + linear), ResNet only")
    p.add_argument("--verify", action="store_true", help="cross-check with fvcore and ptflops on the built module")
    p.add_argument("--profile", metavar="FILE", help="latency table: print predicted and measured latency")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnxruntime", "compile"],
        help="runtime of the table entries to predict from and to measure in (default torch)",
    )
    p.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="statistic of the table entries and of the measurement: median (default) or min of the repetitions",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def stage_table(report, spec, title: str):
    from rich.table import Table

    w, h = report.input_size
    table = Table(title=title, caption=f"input {w}x{h}; see `bhsearch count --help` for units", caption_justify="left")
    for name, justify in (
        ("stage", "left"),
        ("output C×H×W", "right"),
        ("stride", "right"),
        ("params M", "right"),
        ("conv params M", "right"),
        ("GMACs", "right"),
        ("paper GFLOPs", "right"),
        ("acts M", "right"),
    ):
        table.add_column(name, justify=justify)
    for st in report.stages:
        c, sh, sw = st.out_shape
        stride = f"{h / sh:.3g}" if sh else "–"
        table.add_row(
            st.name,
            f"{c}×{sh}×{sw}",
            stride,
            f"{st.params / 1e6:.3f}",
            f"{st.conv_params / 1e6:.3f}",
            f"{st.macs / 1e9:.3f}",
            f"{st.flops / 1e9:.3f}",
            f"{st.activations / 1e6:.2f}",
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        f"{report.params / 1e6:.3f}",
        f"{report.conv_params / 1e6:.3f}",
        f"{report.macs / 1e9:.3f}",
        f"{report.flops / 1e9:.3f}",
        f"{report.activations / 1e6:.2f}",
        style="bold",
    )
    return table


def verify_table(result):
    from rich.table import Table

    table = Table(title="cross-check on the built module (exact integers)")
    for name in ("quantity", "analytic", "fvcore", "ptflops", "match"):
        table.add_column(name, justify="left" if name == "quantity" else "right")
    a, fv, pt = result["analytic"], result["fvcore"], result["ptflops"]
    checks = result["checks"]

    def mark(key: str) -> str:
        oks = [v for k, v in checks.items() if k.startswith(key)]
        return "✓" if oks and all(oks) else ("✗" if oks else "")

    table.add_row("params", f"{a['params']:,}", f"{fv['params']:,}", f"{pt['params']:,}", mark("params"))
    fv_macs = fv["macs"] + fv["linear_bias"]
    table.add_row("conv+linear MACs", f"{a['macs']:,}", f"{fv_macs:,}", f"{pt['macs']:,}", mark("macs"))
    table.add_row("paper FLOPs", f"{a['flops']:,}", "–", f"{pt['flops']:,}", mark("flops"))
    return table


def warn_marked_table(table, command: str) -> None:
    """One stderr line per quality warning of a latency table predicted from."""
    import sys

    for w in table.warnings:
        print(f"bhsearch {command}: WARNING: latency table {table.path} is marked: {w['message']}", file=sys.stderr)


def run(args) -> int:
    import json

    from bhsearch.cli.solve import make_console, parse_int
    from bhsearch.cost import count
    from bhsearch.spec import get_spec, parse_input_size, spec_name

    spec = get_spec(args.spec)
    size = parse_input_size(args.input)
    num_classes = parse_int(args.num_classes, "--num-classes") if args.num_classes else None
    if num_classes and args.verify:
        raise UsageError("--verify checks the backbone alone; drop --num-classes")
    report = count(spec, size, num_classes=num_classes)
    out = {"name": spec_name(spec), **report.to_dict(), "spec": spec.to_dict()}
    if num_classes:
        out["num_classes"] = num_classes

    latency = None
    if args.profile:
        import bhsearch.latency as lat

        table = lat.load_table(args.profile)
        warn_marked_table(table, "count")
        rt, stat = args.runtime, args.stat
        predicted = {"inference": lat.predict_latency(spec, size, table, "inference", stat, runtime=rt)}
        predicted["train"] = lat.predict_latency(spec, size, table, "train", stat) if rt == "torch" else None
        measured = lat.measure_latency(spec, size, **table.measure_kwargs(), runtime=rt)
        latency = {
            "table": str(args.profile),
            "runtime": rt,
            "stat": stat,
            "predicted_inference_s": predicted["inference"],
            "predicted_train_s": predicted["train"],
            "measured_inference_s": measured[f"{stat}_s"],
            "measured": measured,
            "error": predicted["inference"] / measured[f"{stat}_s"] - 1,
            "table_warnings": [w["message"] for w in table.warnings],
        }
        out["latency"] = latency

    verified = None
    if args.verify:
        from bhsearch.verify import verify_counts

        verified = verify_counts(spec, size)
        out["verify"] = {k: v for k, v in verified.items() if k not in ("spec_id", "input_size")}

    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        console = make_console()
        name = spec_name(spec)
        title = f"{name} — {spec.id}" if name else spec.id
        console.print(stage_table(report, spec, title))
        if verified is not None:
            console.print(verify_table(verified))
        if latency is not None:
            m = latency["measured"]
            console.print(
                f"latency ({m.get('device_name', m.get('device'))}, batch {m.get('batch_size')}, {m.get('dtype')}): "
                f"predicted {1e3 * latency['predicted_inference_s']:.1f} ms, measured "
                f"{1e3 * latency['measured_inference_s']:.1f} ms ({latency['stat']}), error {100 * latency['error']:+.1f}%"
                + (
                    ""
                    if latency["predicted_train_s"] is None
                    else f"; predicted train step {1e3 * latency['predicted_train_s']:.1f} ms"
                )
                + ("" if latency["runtime"] == "torch" else f" ({latency['runtime']})")
            )
    if verified is not None and not verified["ok"]:
        failed = ", ".join(k for k, v in verified["checks"].items() if not v)
        import sys

        print(f"bhsearch count: verification failed: {failed}", file=sys.stderr)
        return 1
    return 0
