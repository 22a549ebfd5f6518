"""`ssm-profile analyze`: static analysis of a model's SSM parameter groups (no data needed)."""

from __future__ import annotations

import argparse

from .common import add_model_args, human_bytes, human_count, load_from_args, model_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="static analysis: parameter groups, costs, coupled units, dynamics",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--json", metavar="FILE", help="also write the full analysis as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--layers", action="store_true", help="print every layer's groups, not only totals")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..model.analysis import analyze

    if args.json:  # refuse before loading the model
        from pathlib import Path

        from ..base.outputs import Output, check_paths

        check_paths([Output(Path(args.json), "--json file", overwrite=args.overwrite)], [model_input(args.model)])
    loaded = load_from_args(args, with_tokenizer=False)
    result = analyze(loaded.model, name=loaded.source.name, source=vars(loaded.source))
    print_analysis(result, per_layer=args.layers)
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def print_analysis(result, per_layer: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped: wide enough that headers and numbers are not cut
        console = Console(width=max(console.width, 140))
    m, t = result.model, result.totals
    console.print(f"[bold]{m.name}[/bold]  {m.class_name} ({m.architecture}), "
                  f"{m.num_ssm_layers}/{m.num_layers} SSM layers, dims {m.dims}, {m.dtype}")
    console.print(f"parameters {human_count(t.parameters)} ({human_bytes(t.bytes)}); SSM mixers "
                  f"{t.ssm_share:.1%} of whole-model params; {human_count(t.flops_per_token)} FLOPs/token; "
                  f"recurrent state {human_bytes(t.state_bytes_per_sequence)}/sequence")

    table = Table(title="Parameter groups (summed over layers)")
    for col in ("group", "scope", "layers", "params", "% of model params", "bytes", "FLOPs/token", "state/seq"):
        table.add_column(col, justify="left" if col in ("group", "scope") else "right")
    for row in result.summary_by_group():
        table.add_row(row["group"], row["scope"], str(row["layers"]), human_count(row["numel"]),
                      f"{row['share']:.2%}", human_bytes(row["bytes"]), human_count(row["flops_per_token"]),
                      human_bytes(row["state_bytes"]) if row["state_bytes"] else "")
    console.print(table)

    if per_layer:
        lt = Table(title="Per layer")
        for col in ("layer", "group", "shape", "params", "‖W‖", "kurtosis", "outliers"):
            lt.add_column(col, justify="right" if col not in ("group", "shape") else "left")
        for g in result.groups:
            lt.add_row("" if g.layer is None else str(g.layer), g.group, " ".join(map(str, g.shapes)),
                       human_count(g.numel), f"{g.stats.l2_norm:.3g}", f"{g.stats.kurtosis:.2f}",
                       f"{g.stats.outlier_fraction:.2%}")
        console.print(lt)

    ut = Table(title="Coupled structural units (first SSM layer; same in every layer unless noted)")
    for col in ("unit", "count", "params/unit", "tensors", "stock config"):
        ut.add_column(col)
    first = result.layers()[0] if result.layers() else None
    for u in result.units:
        if u.layer in (first, None):
            ut.add_row(u.kind, str(u.count), human_count(u.params_per_unit), ", ".join(u.tensors), u.stock_config)
    console.print(ut)

    gated = [d for d in result.dynamics if d.assumes]
    horizon = "1/(1 - exp(g)) tokens (see below)" if gated else "1/(softplus(dt_bias)·|A|) tokens"
    if gated and len(gated) < len(result.dynamics):
        horizon = "Mamba rows 1/(softplus(dt_bias)·|A|), delta-rule rows 1/(1 - exp(g)) tokens"
    dt = Table(title=f"SSM dynamics (memory horizon = {horizon})")
    for col in ("layer", "kind", "|A| median", "dt min..max", "horizon p05", "median", "p95", "max"):
        dt.add_column(col, justify="right")
    for d in result.dynamics:
        h = d.horizon
        dt.add_row(str(d.layer), d.mixer_kind, f"{d.decay_rate['median']:.3g}",
                   f"{d.dt['min']:.3g}..{d.dt['max']:.3g}", f"{h['p05']:.3g}", f"{h['median']:.3g}",
                   f"{h['p95']:.3g}", f"{h['max']:.3g}")
    console.print(dt)
    labels = {"gated_delta": "Gated DeltaNet rows, per value head", "kda": "KDA rows, per head and key channel"}
    for kind in dict.fromkeys(d.mixer_kind for d in gated):  # a delta rule's horizon is not Mamba's: say its point
        rows = [d for d in gated if d.mixer_kind == kind]
        decay = ", ".join(f"layer {d.layer} {d.decay_per_token['min']:.3g}..{d.decay_per_token['max']:.3g}"
                          for d in rows)
        console.print(f"{labels.get(kind, kind)}: {rows[0].assumes}; dt = softplus(dt_bias). Decay per token: {decay}")
