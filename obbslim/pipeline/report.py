"""report.md of a compress run: the tables and plots of every stage in one page, with the commands that
reproduce each stage. Images are linked by paths relative to the run dir (nothing is copied).

Times: "training" is train()'s own clock over all invocations of the stage (resumes included); "stage
wall" is the last invocation of the stage, data scanning, plots and validation included."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from obbslim.options import CompressConfig
from obbslim.pipeline.stages import ROW_NAMES, STAGES, TITLES
from obbslim.utils.io import atomic_write_text


def _rel(path: str | Path, run_dir: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(p)


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


# Xu & Bai (ISPDS 2022) on DOTA: 76.18% mAP after pruning and distillation against 74.48% for YOLOv5,
# with 58.9% fewer parameters and 37.0% fewer FLOPs
PAPER_PARAMS, PAPER_GFLOPS, MAP_TOLERANCE = -58.9, -37.0, 0.02


def claim(markers: dict[str, dict]) -> str:
    """The paper's claim in one sentence and whether this run supports it: pruned+distill within
    MAP_TOLERANCE of the baseline's mAP50 (or above), at least the paper's cuts in parameters and FLOPs,
    and distillation at least as good as plain fine-tuning. Then what the slimming itself did: the share
    of prunable BN scales below 1e-2 after sparsity training, and the mAP50 the pruned model keeps before
    any fine-tuning. Empty when the benchmark has not run."""
    bench = markers.get("5_benchmark")
    if not bench:
        return ""
    rows = {r["name"]: r for r in json.loads(Path(bench["outputs"]["json"]).read_text())["rows"]}
    base, kd, ft = rows.get("baseline"), rows.get("pruned+distill"), rows.get("pruned+finetune")
    if not (base and kd and ft):
        return ""
    dp, dg = kd["change"]["params_m"], kd["change"]["gflops"]
    ok = (kd["mAP50"] >= base["mAP50"] - MAP_TOLERANCE and dp <= PAPER_PARAMS and dg <= PAPER_GFLOPS
          and kd["mAP50"] >= ft["mAP50"])  # fmt: skip
    text = (
        f"Claim (Xu & Bai 2022): network slimming with distillation instead of fine-tuning keeps the "
        f"baseline's accuracy with {-PAPER_PARAMS:.1f}% fewer parameters and {-PAPER_GFLOPS:.1f}% fewer "
        f"FLOPs. This run {'supports' if ok else 'does not support'} it: pruned+distill mAP50 "
        f"{kd['mAP50']:.3f} against "
        f"{base['mAP50']:.3f} for the baseline and {ft['mAP50']:.3f} for plain fine-tuning, with {dp:+.1f}% "
        f"parameters and {dg:+.1f}% GFLOPs."
    )
    sparse = markers.get("2_sparse")
    results = Path(sparse["outputs"]["weights"]).parent.parent / "results.csv" if sparse else None
    last = list(csv.DictReader(open(results))) if results and results.is_file() else []
    pruned = (markers.get("3_prune") or {}).get("info", {}).get("mAP50") or {}
    if last and pruned.get("before"):
        frac = float(last[-1]["gamma_lt_1e-2"])
        keep = pruned["pruned_folded"] / pruned["before"]
        text += (
            f" Slimming: {frac:.0%} of the prunable BN scales ended below 1e-2, and the pruned model kept "
            f"{keep:.0%} of the sparse model's mAP50 before any fine-tuning."
        )
    return text


def stage_table(markers: dict[str, dict], run_dir: Path) -> str:
    lines = [
        "| stage | what | output | epochs | best mAP50 (epoch) | training (s) | stage wall (s) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for stage in STAGES:
        m = markers.get(stage)
        if m is None:
            continue
        info = m.get("info", {})
        out = m.get("outputs", {}).get("weights") or m.get("outputs", {}).get("table", "")
        what = TITLES[stage] + (f" (skipped: {m['skipped']})" if m.get("skipped") else "")
        best = info.get("best_mAP50")
        if best is not None:
            best_txt = f"{best:.4f} ({info.get('best_epoch')})"
        elif isinstance(info.get("mAP50"), dict):  # the prune stage: mAP right after pruning (folded)
            best_txt = _fmt(info["mAP50"].get("pruned_folded"))
        else:
            best_txt = "-"
        lines.append(
            f"| {stage} | {what} | `{_rel(out, run_dir)}` | {info.get('epochs', '-')} | {best_txt} | "
            f"{_fmt(info.get('train_s'), '.1f')} | {_fmt(info.get('wall_s'), '.1f')} |"
        )
    return "\n".join(lines)


def write_report(run_dir: str | Path, markers: dict[str, dict], o: CompressConfig) -> Path:
    """Write run_dir/report.md from the stage markers; returns its path."""
    run_dir = Path(run_dir)
    crit = f"ratio {o.prune_ratio}" if o.prune_ratio is not None else f"target FLOPs {o.target_flops}"
    lines = [
        f"# Compression report: {run_dir.name}",
        "",
        f"Data `{o.data}`, model `{o.teacher or o.model}`{' (given teacher)' if o.teacher else ''}, "
        f"imgsz {o.imgsz}, batch {o.batch}; sparsity lambda {o.sparsity:g} ({o.sparsity_schedule}), pruning "
        f"by {crit}; epochs: baseline {'-' if o.teacher else o.epochs_base}, sparse {o.epochs_sparse}, "
        f"fine-tune/distill {o.epochs_distill}.",
        "",
        "## Benchmark",
        "",
        f"Rows: {', '.join(ROW_NAMES)}.",
        "",
    ]
    bench = markers.get("5_benchmark")
    if bench:
        lines.append(Path(bench["outputs"]["table"]).read_text().strip())
        lines += [
            "",
            "![mAP50 against latency](5_benchmark/map_vs_latency.png)",
            "![mAP50 against GFLOPs](5_benchmark/map_vs_gflops.png)",
        ]
    verdict = claim(markers)
    if verdict:
        lines += ["", verdict]
    lines += ["", "## Stages", "", stage_table(markers, run_dir), ""]
    prune = markers.get("3_prune")
    if prune:
        text = Path(prune["outputs"]["report"]).read_text()
        body = text.split("## Per-layer widths")[0].replace("# Pruning report", "").strip()
        rep_name = f"3_prune/{Path(prune['outputs']['report']).name}"
        plot_name = f"3_prune/{Path(prune['outputs']['plot']).name}"
        lines += [
            "## Pruning",
            "",
            body,
            "",
            f"Per-layer widths: [{rep_name}]({rep_name}).",
            "",
            f"![conv widths before and after pruning]({plot_name})",
            "",
        ]
    if (run_dir / "2_sparse" / "gamma_hist.png").is_file():
        lines += [
            "## BN scales during sparsity training",
            "",
            "![log10 |gamma| histogram per epoch](2_sparse/gamma_hist.png)",
            "",
        ]
    curves = [
        s
        for s in ("1_baseline", "2_sparse", "4_finetune", "4_distill")
        if (run_dir / s / "results.png").is_file()
    ]
    if curves:
        lines += ["## Training curves", ""]
        for s in curves:
            lines += [f"### {s}: {TITLES[s]}", "", f"![{s} results]({s}/results.png)", ""]
    lines += ["## Reproduce each stage", "", "```sh"]
    for stage in STAGES:
        m = markers.get(stage)
        if m and m.get("command"):
            lines += [f"# {stage}: {TITLES[stage]}", m["command"]]
    lines += ["```", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
