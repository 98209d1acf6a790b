"""The comparison table of the paper in one run: accuracy, size and speed of several checkpoints.

Per model: mAP50 (VOC07 11-point, OBB, on the data's val split, via ``obbslim.eval.metrics``),
parameters and GFLOPs (``model_info``, the checkpoint's model before BN fusion, FLOPs = 2 x MACs),
weight file MB (a *stripped* checkpoint: architecture record, class names and the EMA weights, or the
raw weights when there is no EMA, in fp16; no optimizer, no fp32 copy; what ``strip_checkpoint``
writes), and batch-1 latency: the median of ``runs`` timed forwards after ``warmup`` untimed ones, of
the BN-fused PyTorch model and, with ``onnx``, of the ONNX Runtime fp32 export (decode included, NMS
excluded in both). Each figure also gets its % change against the first model.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import onnxruntime
import torch
from torch import nn

from obbslim.data.dataset import build_dataloader
from obbslim.data.labels import load_data_yaml, load_split
from obbslim.deploy.export import export_onnx
from obbslim.errors import InputError, ObbslimError
from obbslim.eval.metrics import validate
from obbslim.eval.val import check_model_classes, check_scan
from obbslim.inference.detector import check_stride
from obbslim.inference.onnx_backend import OnnxModel
from obbslim.model import load, model_info, read_checkpoint
from obbslim.options import BenchmarkConfig
from obbslim.utils.device import select_device
from obbslim.utils.io import atomic_savefig, atomic_write_bytes, atomic_write_text
from obbslim.utils.text import plural
from obbslim.utils.threads import default_threads

COLUMNS = [  # (key, header, format)
    ("mAP50", "mAP50", "{:.4f}"),
    ("params_m", "params (M)", "{:.3f}"),
    ("gflops", "GFLOPs", "{:.2f}"),
    ("size_mb", "weights (MB)", "{:.2f}"),
    ("latency_torch_ms", "PyTorch (ms)", "{:.1f}"),
    ("latency_onnx_ms", "ONNX Runtime (ms)", "{:.1f}"),
]


def strip_checkpoint(weights: str | Path, out: str | Path | None = None) -> bytes:
    """The deployable checkpoint (YOLOv5's strip_optimizer): arch, names, EMA (else raw) weights in fp16.

    ``obbslim.model.load`` reads it. Returns the file's bytes; also writes them to `out` when given."""
    ckpt = read_checkpoint(weights)
    sd = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    small = {"arch": ckpt["arch"], "model": half, "ema": None, "names": ckpt.get("names"),
             "epoch": -1, "version": ckpt.get("version", 1)}  # fmt: skip
    buf = io.BytesIO()
    torch.save(small, buf)
    data = buf.getvalue()
    if out is not None:
        atomic_write_bytes(out, data)
    return data


def time_fn(fn: Callable[[], Any], runs: int, warmup: int, sync: Callable[[], None] | None = None) -> float:
    """Median wall time of `fn` in ms over `runs` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    ts = []
    for _ in range(max(runs, 1)):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


class OnnxAsTorch(nn.Module):
    """An OnnxModel dressed as the PyTorch model for ``validate`` (which only reads ``decoded``): the
    theta-probability columns it does not use are zero-filled."""

    def __init__(self, onnx_model: Any, nbins: int = 180):
        super().__init__()
        self.onnx_model, self.nbins = onnx_model, nbins
        self.names = onnx_model.names
        self._anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # validate reads the device

    def forward(self, x: torch.Tensor):
        d = self.onnx_model(x)
        return torch.cat((d, d.new_zeros(*d.shape[:2], self.nbins)), -1), None


def validate_onnx(onnx_model: Any, data: Any, imgsz: int | None = None, batch_size: int = 4) -> dict:
    """mAP of an ONNX export (fp32 or INT8) on the data's val split, letterboxed to its fixed size."""
    imgsz = imgsz or onnx_model.imgsz[0]
    loader = build_dataloader(data, "val", imgsz, batch_size, augment=False, rect=onnx_model.dynamic)
    return validate(OnnxAsTorch(onnx_model), loader, names=onnx_model.names, progress=False)


def _labels(weights: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(weights):
            raise ObbslimError(f"{len(names)} names for {len(weights)} weights")
        return [str(n) for n in names]
    stems = [Path(w).stem for w in weights]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{Path(w).parent.parent.name}/{Path(w).stem}" if stems.count(Path(w).stem) > 1 else Path(w).stem
            for w in weights]  # fmt: skip


def _change(v: float | None, v0: float | None) -> float | None:
    if v is None or v0 is None or not math.isfinite(v) or not v0:
        return None
    return 100.0 * (v - v0) / v0


def format_markdown(result: dict) -> str:
    """benchmark.md: the table (value and % change against the first row) and the settings."""
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in result["rows"])]
    head = ["model", *[c[1] for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
    for r in result["rows"]:
        cells = [r["name"]]
        for key, _, fmt in cols:
            v, ch = r.get(key), r["change"].get(key)
            cell = "n/a" if v is None else fmt.format(v)
            if v is not None:
                cell += " (n/a)" if ch is None else f" ({ch:+.1f}%)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    s = result["settings"]
    notes = [
        "",
        f"Data: {s['data']} (val split, {plural(s['n_val_images'], 'image')}); "
        f"input {s['imgsz']}x{s['imgsz']}; "
        f"device {s['device']}; threads: PyTorch {s['torch_threads']}"
        + (f", ONNX Runtime {s['ort_threads']}" if s.get("onnx") else "") + ".",
        f"Latency: batch 1, median of {s['runs']} runs after {s['warmup']} warm-up runs, forward + decode "
        "(no NMS); PyTorch model with BN fused"
        + ("; ONNX Runtime fp32 export" if s.get("onnx") else "") + ".",
        "mAP50: OBB, VOC07 11-point, IoU 0.5 (DOTA Task1 rule). params/GFLOPs: the model before BN "
        "fusion, FLOPs = 2 x MACs. weights MB: stripped checkpoint (arch + EMA weights in fp16, no "
        "optimizer). % change: against the first row.",
    ]  # fmt: skip
    return "\n".join(lines + notes) + "\n"


def plot_benchmark(result: dict, out: Path) -> list[Path]:
    """map_vs_latency.png and map_vs_gflops.png (each model a labelled point)."""
    # matplotlib takes about 0.5 s to import: only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    paths = []
    for fname, series, xlabel in (
        ("map_vs_latency.png", [("latency_torch_ms", "PyTorch"), ("latency_onnx_ms", "ONNX Runtime")],
         f"latency (ms, batch 1, {result['settings']['device']})"),
        ("map_vs_gflops.png", [("gflops", None)], f"GFLOPs at {result['settings']['imgsz']}"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        for key, label in series:
            pts = [(r[key], r["mAP50"], r["name"]) for r in rows if r.get(key) is not None]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=label)
            for x, y, name in pts:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mAP50 (VOC07)")
        ax.grid(alpha=0.3)
        if len(series) > 1 and any(r.get("latency_onnx_ms") is not None for r in rows):
            ax.legend()
        fig.tight_layout()
        try:
            paths.append(atomic_savefig(fig, out / fname))
        finally:
            plt.close(fig)
    return paths


def benchmark(*args: Any, **options: Any) -> dict:
    """``benchmark(weights, data, **options)`` with the options of :class:`~obbslim.options.BenchmarkConfig`:
    benchmark checkpoints (see the module doc for what each column measures).

    Returns ``{"rows": [{name, weights, mAP50, params, params_m, gflops, size_mb, latency_torch_ms,
    latency_onnx_ms, change: {key: % vs the first row (0 for the first row; None when undefined)}}],
    "settings": {...}}``; with ``out`` (None: no files), also writes ``benchmark.md``,
    ``benchmark.json``, ``map_vs_latency.png`` and ``map_vs_gflops.png`` there (and the ONNX exports
    under ``onnx/``).
    """
    cfg = BenchmarkConfig.of(*args, **options)
    if not cfg.weights:
        raise ObbslimError("benchmark: no weights given")
    if cfg.known is not None and len(cfg.known) != len(cfg.weights):
        raise ObbslimError(f"benchmark: {len(cfg.known)} known results for {len(cfg.weights)} checkpoints")
    d = load_data_yaml(cfg.data)
    for w in cfg.weights:  # fail before the (long) runs, with the file's name
        ck = read_checkpoint(w)
        arch = ck["arch"]
        own = SimpleNamespace(nc=arch.get("nc"), names=ck.get("names"), stride=arch.get("strides"))
        check_model_classes(own, d["names"], w, d.get("yaml_file"), cfg.verbose)
        check_stride(own, cfg.imgsz)
    labels = _labels(cfg.weights, cfg.names)
    dev = select_device(cfg.device)
    threads_before = torch.get_num_threads()
    torch_threads = int(cfg.threads) if cfg.threads else default_threads()
    out = Path(cfg.out) if cfg.out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    samples, scan = load_split(d, "val", verbose=False)
    check_scan(scan, d.get("yaml_file"))
    if cfg.verbose:
        print(scan.summary(), file=sys.stderr)
    if not samples:
        raise InputError("the val split has no usable images", d.get("yaml_file"))
    loader = build_dataloader(samples, "val", cfg.imgsz, cfg.batch, augment=False, workers=cfg.workers)
    if cfg.verbose:
        ort_txt = f", ONNX Runtime threads {torch_threads}" if cfg.onnx else ""
        n, size = len(loader.dataset), f"{cfg.imgsz}x{cfg.imgsz}"
        print(f"benchmark: {plural(len(cfg.weights), 'model')}, {plural(n, 'val image')}, {size}, {dev}, "
              f"PyTorch threads {torch_threads}{ort_txt}")  # fmt: skip
    torch.set_num_threads(torch_threads)  # restored below: the caller's setting is not ours to keep
    try:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_dir = out / "onnx" if out is not None else Path(tmp)
            known = cfg.known or [None] * len(cfg.weights)
            rows = [_row(cfg, w, label, loader, dev, onnx_dir, k)
                    for w, label, k in zip(cfg.weights, labels, known)]  # fmt: skip
    finally:
        torch.set_num_threads(threads_before)
    keys = [c[0] for c in COLUMNS]
    for r in rows:
        first = r is rows[0]
        r["change"] = {k: (0.0 if first and r[k] is not None else _change(r[k], rows[0][k])) for k in keys}
    result = {
        "rows": rows,
        "settings": {
            "data": str(cfg.data) if not isinstance(cfg.data, dict) else str(cfg.data.get("path", "")),
            "n_val_images": len(loader.dataset), "imgsz": cfg.imgsz, "device": str(dev),
            "onnx": bool(cfg.onnx),
            "runs": cfg.runs, "warmup": cfg.warmup, "torch_threads": torch_threads,
            "ort_threads": torch_threads, "batch": 1,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        },
    }  # fmt: skip
    if out is not None:
        _write(result, out, cfg.verbose)
    return result


def _row(cfg: BenchmarkConfig, w: Any, label: str, loader: Any, dev: torch.device, onnx_dir: Path,
         known: dict | None = None) -> dict:
    """One model's figures (mAP50, size, latency of the fused PyTorch model and of the ONNX export); mAP50
    and mAP50-95 are ``known``'s when given."""
    model = load(w, device=dev)
    info = model_info(model, imgsz=cfg.imgsz, print_fn=None)
    size_mb = len(strip_checkpoint(w)) / 1e6
    model.fuse()
    metrics = known or validate(model, loader, names=model.names, progress=False)
    x = torch.rand(1, model.in_ch, cfg.imgsz, cfg.imgsz, generator=torch.Generator().manual_seed(0)).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    with torch.inference_mode():
        lat_t = time_fn(lambda m=model, x=x: m(x), cfg.runs, cfg.warmup, sync)
    lat_o = None
    if cfg.onnx:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if dev.type == "cuda" else None
        p = export_onnx(w, imgsz=cfg.imgsz, out=onnx_dir / f"{label.replace('/', '_')}.onnx", verbose=False)
        om = OnnxModel(p, providers=providers or ["CPUExecutionProvider"], threads=torch.get_num_threads())
        xn = x.cpu().numpy()
        lat_o = time_fn(lambda om=om, xn=xn: om.run_numpy(xn), cfg.runs, cfg.warmup)
    row = {
        "name": label, "weights": str(w), "mAP50": float(metrics["mAP50"]),
        "mAP50_95": float(metrics["mAP50_95"]), "params": int(info["params"]),
        "params_m": info["params"] / 1e6, "gflops": float(info["gflops"]), "size_mb": size_mb,
        "latency_torch_ms": lat_t, "latency_onnx_ms": lat_o,
    }  # fmt: skip
    if cfg.verbose:
        o = f", ORT {lat_o:.1f} ms" if lat_o is not None else ""
        print(f"  {label}: mAP50 {row['mAP50']:.4f}, {row['params_m']:.2f}M params, "
              f"{row['gflops']:.1f} GFLOPs, {size_mb:.2f} MB, PyTorch {lat_t:.1f} ms{o}")  # fmt: skip
    return row


def _write(result: dict, out: Path, verbose: bool) -> None:
    md = format_markdown(result)
    atomic_write_text(out / "benchmark.md", md)
    atomic_write_text(out / "benchmark.json", json.dumps(result, indent=2) + "\n")
    plot_benchmark(result, out)
    if verbose:
        print(md)
        print(f"benchmark: wrote benchmark.md, benchmark.json and the plots to {out}")
