"""report.md of a compress run: the tables and plots of every stage in one page, with the commands that
reproduce each stage. Images are linked by paths relative to the run dir (nothing is copied).

Times: "training" is train()'s own clock over all invocations of the stage (resumes included); "stage
wall" is the last invocation of the stage, data scanning, plots and validation included."""

from __future__ import annotations

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
