"""`compress(...)`: the paper's whole pipeline in one resumable run.

Stages, each in its own sub-folder of the run dir, each finished by a ``stage.json`` marker:
1_baseline (train; skipped when a teacher is given), 2_sparse (sparsity training from the baseline),
3_prune (network slimming of the sparse model), 4_distill and 4_finetune (the pruned model fine-tuned
with and without distillation from the baseline), 5_benchmark (the comparison table), then report.md.

Resuming works like make: a stage is skipped when its marker says done, its output exists and its
inputs and settings (the marker's ``key``, which holds the upstream markers' ids) are unchanged; an
interrupted training stage continues from its last.pt; a stage whose key changed runs again from
scratch, and so do the stages after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from obbslim.errors import ObbslimError
from obbslim.utils.device import select_device

STAGES = ("1_baseline", "2_sparse", "3_prune", "4_distill", "4_finetune", "5_benchmark")
ROW_NAMES = ("baseline", "sparse", "pruned", "pruned+finetune", "pruned+distill")
RUNTIME_KEYS = ("device", "workers", "verbose", "threads")  # what a resume may change
ARGS_FILE = "compress.json"
MARKER = "stage.json"


class StageInterrupted(Exception):
    """A training stage stopped on SIGINT/SIGTERM: its last.pt is saved, a rerun continues it."""

    def __init__(self, stage: str, signum: int | None):
        super().__init__(stage)
        self.stage, self.signum = stage, signum


def compress(
    data: str | Path | dict | None = None,
    model: str | Path = "yolov5s-obb.yaml",
    teacher: str | Path | None = None,
    prune_ratio: float | None = None,
    target_flops: float | None = None,
    epochs_base: int = 100,
    epochs_sparse: int = 100,
    epochs_distill: int = 50,
    sparsity: float = 1e-3,
    sparsity_schedule: str = "constant",
    sparsity_weighting: str = "none",
    imgsz: int = 640,
    batch: int = 16,
    device: str = "",
    workers: int = 8,
    hyp: str | Path | dict | None = None,
    onnx: bool = False,
    project: str | Path = "runs/compress",
    name: str = "exp",
    exist_ok: bool = False,
    resume: str | Path | bool | None = None,
    val_every: int = 1,
    seed: int = 0,
    bench_runs: int = 50,
    bench_warmup: int = 10,
    threads: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Baseline -> sparsity training -> pruning -> distillation (and plain fine-tuning, the ablation)
    -> benchmark -> report.md, in ``project/name``.

    Exactly one of ``prune_ratio`` (fraction of prunable BN channels removed) and ``target_flops``
    (fraction of the GFLOPs kept). ``teacher`` (a checkpoint) replaces the baseline training.
    ``resume`` (a compress run dir, or True for the newest in ``project``) reruns with the stored
    arguments (only device, workers, verbose and threads may change); ``exist_ok`` reuses
    ``project/name`` with the arguments given. In both cases complete stages are skipped (see the module
    doc). Returns ``{run_dir, report, stages: {stage: marker}, ran: [stages run now], benchmark,
    stopped, signal}``; ``stopped`` is 'signal' when a training stage was interrupted (rerun to go on).
    """
    opts = {k: v for k, v in locals().items() if k not in ("resume", "exist_ok")}
    if resume:
        run_dir = _find_run(resume, project)
        stored = json.loads((run_dir / ARGS_FILE).read_text())
        opts = {**stored, **{k: opts[k] for k in RUNTIME_KEYS}}
    else:
        _check_args(opts)
        from obbslim.engine.runs import increment_path

        run_dir = increment_path(Path(project) / name, exist_ok)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        opts = _portable(opts, run_dir)
        from obbslim.utils.io import atomic_write_text

        atomic_write_text(run_dir / ARGS_FILE, json.dumps(opts, indent=2) + "\n")
    pipe = _Pipeline(run_dir, opts)
    try:
        pipe.run_all()
    except StageInterrupted as e:
        pipe.log(f"compress: stage {e.stage} interrupted; continue with: obbslim compress --resume {run_dir}")
        return {**pipe.result(), "stopped": "signal", "signal": e.signum}
    from obbslim.pipeline.report import write_report

    report = write_report(run_dir, pipe.markers, opts)
    bench = pipe.markers["5_benchmark"]["info"]
    if verbose:
        print(Path(bench["table"]).read_text().split("\n\n")[0])
        print(f"\ncompress: report -> {report}")
    return {**pipe.result(), "report": str(report), "stopped": None, "signal": None}


def _check_args(o: dict) -> None:
    """Fail before any work on a bad combination, with the option names of the CLI."""
    if (o["prune_ratio"] is None) == (o["target_flops"] is None):
        raise ObbslimError("give exactly one of --prune-ratio and --target-flops")
    if o["prune_ratio"] is not None and not 0 < o["prune_ratio"] < 1:
        raise ObbslimError(f"--prune-ratio {o['prune_ratio']} must be in (0, 1)")
    if o["target_flops"] is not None and not 0 < o["target_flops"] < 1:
        raise ObbslimError(f"--target-flops {o['target_flops']} must be in (0, 1)")
    if not o["data"]:
        raise ObbslimError("a dataset is required: --data DATA.yaml")
    for key in ("epochs_sparse", "epochs_distill") + (() if o["teacher"] else ("epochs_base",)):
        if int(o[key]) < 1:
            raise ObbslimError(f"--{key.replace('_', '-')} must be at least 1")
    if o["sparsity"] < 0:
        raise ObbslimError(f"--sparsity {o['sparsity']} must be >= 0")
    if o["sparsity_weighting"] not in ("none", "flops"):
        raise ObbslimError(f"--sparsity-weighting {o['sparsity_weighting']!r}: use none or flops")
    if o["teacher"] is not None:
        if not str(o["teacher"]).endswith(".pt"):
            raise ObbslimError(f"--teacher {o['teacher']}: expected a checkpoint .pt")
        if not Path(o["teacher"]).is_file():
            raise ObbslimError(f"--teacher {o['teacher']}: file not found")
    if isinstance(o["data"], (str, Path)) and not Path(o["data"]).is_file():
        raise ObbslimError(f"--data {o['data']}: dataset YAML not found")


def _portable(o: dict, run_dir: Path) -> dict:
    """Absolute paths, and dicts (data, hyp given in Python) written to YAML files in the run dir, so the
    arguments are plain JSON and every stage can be reproduced with a shell command."""
    from obbslim.engine.runs import write_yaml

    o = dict(o)
    if isinstance(o["data"], dict):
        from obbslim.data.labels import load_data_yaml

        d = load_data_yaml(o["data"])
        write_yaml(
            run_dir / "data.yaml", {k: d[k] for k in ("path", "train", "val", "test", "names") if d.get(k)}
        )
        o["data"] = str(run_dir / "data.yaml")
    if isinstance(o["hyp"], dict):
        write_yaml(run_dir / "hyp.yaml", o["hyp"])
        o["hyp"] = str(run_dir / "hyp.yaml")
    for k in ("data", "hyp", "teacher"):
        if o[k] is not None:
            o[k] = str(Path(o[k]).resolve())
    if str(o["model"]).endswith((".pt", ".yaml", ".yml")) and Path(o["model"]).is_file():
        o["model"] = str(Path(o["model"]).resolve())
    o["project"] = str(o["project"])
    return o


def _find_run(resume: str | Path | bool, project: str | Path) -> Path:
    if resume is True or resume == "":
        found = sorted(Path(project).glob(f"*/{ARGS_FILE}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ObbslimError(f"--resume: no compress run ({ARGS_FILE}) found under {project}")
        return found[-1].parent
    path = Path(resume)
    if not (path / ARGS_FILE).is_file():
        raise ObbslimError(f"--resume {path}: not a compress run dir (no {ARGS_FILE})")
    return path


def _cmd(*parts: Any, **flags: Any) -> str:
    """A shell command: ``obbslim`` + parts + --flag value (None skipped, True a bare flag)."""
    args = ["obbslim", *map(str, parts)]
    for k, v in flags.items():
        if v is None or v is False:
            continue
        flag = "--" + k.rstrip("_").replace("_", "-")
        if v is True:
            args.append(flag)
        elif isinstance(v, (list, tuple)):
            args += [flag, *map(str, v)]
        else:
            args += [flag, str(v)]
    return shlex.join(args)


def read_marker(stage_dir: Path) -> dict | None:
    try:
        return json.loads((Path(stage_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(stage_dir: Path, marker: dict) -> None:
    from obbslim.utils.io import atomic_write_text

    atomic_write_text(Path(stage_dir) / MARKER, json.dumps(marker, indent=2, default=str) + "\n")


class _Pipeline:
    """Runs the stages in order; each stage's marker is kept in ``markers`` for the next ones."""

    def __init__(self, run_dir: Path, opts: dict):
        self.dir, self.o = run_dir, opts
        self.markers: dict[str, dict] = {}
        self.ran: list[str] = []
        self.log: Callable[..., None] = print if opts["verbose"] else (lambda *a, **k: None)

    def result(self) -> dict:
        bench = self.markers.get("5_benchmark")
        rows = None
        if bench and Path(bench["info"]["json"]).is_file():
            rows = json.loads(Path(bench["info"]["json"]).read_text())["rows"]
        return {"run_dir": str(self.dir), "stages": self.markers, "ran": self.ran, "benchmark": rows}

    # ---------------------------------------------------------------- generic stage handling

    def _stage(
        self, stage: str, key: dict, body: Callable[[Path, dict | None], tuple[dict, dict, str]]
    ) -> dict:
        """Skip when complete with the same key; else run ``body(stage_dir, unfinished_marker)`` ->
        (outputs, info, command) and write the done marker."""
        sdir = self.dir / stage
        old = read_marker(sdir)
        if (
            old
            and old.get("done")
            and old.get("key") == key
            and all(Path(p).exists() for p in old.get("outputs", {}).values())
        ):
            self.log(f"compress: {stage} complete, skipped ({sdir})")
            self.markers[stage] = old
            return old
        partial = old if old and not old.get("done") and old.get("key") == key else None
        if partial is None:  # a fresh start: nothing stale from another configuration survives
            if sdir.exists():
                shutil.rmtree(sdir)
            sdir.mkdir(parents=True)
            _write_marker(sdir, {"stage": stage, "done": False, "key": key})
        self.log(f"compress: {stage} {'resuming' if partial else 'running'} -> {sdir}")
        t0, c0 = time.time(), time.process_time()
        outputs, info, command = body(sdir, partial)
        marker = {
            "stage": stage,
            "done": True,
            "key": key,
            "id": uuid.uuid4().hex,
            "outputs": {k: str(v) for k, v in outputs.items()},
            "info": {
                "wall_s": round(time.time() - t0, 2),
                "cpu_s": round(time.process_time() - c0, 2),
                **info,
            },
            "command": command,
        }
        _write_marker(sdir, marker)
        self.markers[stage] = marker
        self.ran.append(stage)
        return marker

    def _train_common(self) -> dict:
        o = self.o
        return dict(
            imgsz=o["imgsz"],
            batch=o["batch"],
            device=o["device"],
            workers=o["workers"],
            hyp=o["hyp"],
            val_every=o["val_every"],
            seed=o["seed"],
            verbose=o["verbose"],
        )

    def _train_stage(
        self,
        stage: str,
        key: dict,
        fresh: Callable[[], dict],
        resume: Callable[[str], dict],
        command: str,
        weights: str = "best",
    ) -> dict:
        """A training stage: a fresh run, or the continuation of an interrupted one (train(resume=...))."""

        def body(sdir: Path, partial: dict | None):
            from obbslim.model import read_checkpoint

            last = sdir / "weights" / "last.pt"
            if partial is not None and last.is_file():
                ck = read_checkpoint(last)
                if ck["epoch"] + 1 >= ck["train_args"]["epochs"]:  # finished, the marker was not written
                    res = {"last": str(last), "best_epoch": ck.get("best_epoch", -1), "stopped": None}
                else:
                    res = resume(str(last))
            else:
                res = fresh()
            if res.get("stopped") == "signal":
                raise StageInterrupted(stage, res.get("signal"))
            return self._train_outputs(sdir, weights), self._train_info(sdir), command

        return self._stage(stage, key, body)

    @staticmethod
    def _train_outputs(sdir: Path, weights: str) -> dict:
        best, last = sdir / "weights" / "best.pt", sdir / "weights" / "last.pt"
        return {"weights": best if weights == "best" and best.is_file() else last, "last": last}

    @staticmethod
    def _train_info(sdir: Path) -> dict:
        """Best mAP50, its epoch, the epochs done and the training time, from last.pt."""
        from obbslim.model import read_checkpoint

        ck = read_checkpoint(sdir / "weights" / "last.pt")
        bf = ck.get("best_fitness")
        return {
            "epochs": int(ck["epoch"]) + 1,
            "best_mAP50": float(bf) if bf is not None and bf >= 0 else None,
            "best_epoch": int(ck.get("best_epoch", -1)),
            "train_s": round(float(ck.get("train_time", 0.0)), 2),
        }

    # ---------------------------------------------------------------- the stages

    def run_all(self) -> None:
        o, d = self.o, self.dir
        dev = str(select_device(o["device"]))  # one device for pruning and benchmarking
        common = self._train_common()
        cli_common = dict(
            imgsz=o["imgsz"],
            batch=o["batch"],
            device=o["device"] or None,
            workers=o["workers"],
            hyp=o["hyp"],
            val_every=o["val_every"],
            seed=o["seed"],
            project=d,
            exist_ok=True,
        )
        from obbslim.distill import distill
        from obbslim.engine.train import train

        def resume_train(last: str) -> dict:
            return train(resume=last, device=o["device"], workers=o["workers"], verbose=o["verbose"])

        def resume_distill(last: str) -> dict:
            return distill(
                resume=last, project=d, device=o["device"], workers=o["workers"], verbose=o["verbose"]
            )

        def training(stage: str, key: dict, cli: str, weights: str = "best", **args: Any) -> dict:
            """One training stage: the same arguments make the call and the printed command."""
            fn, again = (distill, resume_distill) if cli == "distill" else (train, resume_train)
            return self._train_stage(
                stage,
                key,
                lambda: fn(**args, project=d, name=stage, exist_ok=True, **common),
                again,
                _cmd(cli, **args, name=stage, **cli_common),
                weights=weights,
            )

        # 1. baseline (or the given teacher)
        if o["teacher"]:
            base = {
                "id": f"teacher:{o['teacher']}:{Path(o['teacher']).stat().st_mtime_ns}",
                "outputs": {"weights": o["teacher"]},
            }
            self.markers["1_baseline"] = {
                "stage": "1_baseline",
                "done": True,
                "skipped": "teacher given",
                **base,
                "info": {},
                "command": None,
            }
            self.log(f"compress: 1_baseline skipped, the teacher is {o['teacher']}")
        else:
            key = {"data": o["data"], "model": o["model"], "epochs": o["epochs_base"], **_key(common)}
            base = training(
                "1_baseline", key, "train", data=o["data"], model=o["model"], epochs=o["epochs_base"]
            )
        base_w = base["outputs"]["weights"]

        # 2. sparsity training, from the baseline weights (its last.pt: the sparsest, what gets pruned)
        key = {
            "base": base["id"],
            "epochs": o["epochs_sparse"],
            "sparsity": o["sparsity"],
            "schedule": o["sparsity_schedule"],
            **({"weighting": o["sparsity_weighting"]} if o["sparsity_weighting"] != "none" else {}),
            **_key(common),
        }
        sparse = training(
            "2_sparse",
            key,
            "train",
            weights="last",
            data=o["data"],
            model=base_w,
            epochs=o["epochs_sparse"],
            sparsity=o["sparsity"],
            sparsity_schedule=o["sparsity_schedule"],
            sparsity_weighting=o["sparsity_weighting"] if o["sparsity_weighting"] != "none" else None,
            noautoanchor=True,
        )
        sparse_w = sparse["outputs"]["weights"]

        # 3. pruning, reported with and without folding (mAP50 on val before and after)
        key = {
            "sparse": sparse["id"],
            "ratio": o["prune_ratio"],
            "target_flops": o["target_flops"],
            "imgsz": o["imgsz"],
        }
        pruned_w = d / "3_prune" / "pruned.pt"

        def prune_body(sdir: Path, partial: dict | None):
            from obbslim.prune import prune_checkpoint

            rep = prune_checkpoint(
                sparse_w,
                pruned_w,
                ratio=o["prune_ratio"],
                target_flops=o["target_flops"],
                imgsz=o["imgsz"],
                data=o["data"],
                batch=o["batch"],
                device=dev,
                verbose=o["verbose"],
            )
            info = {"params": rep["params"], "gflops": rep["gflops"], "mAP50": rep.get("mAP50")}
            cmd = _cmd(
                "prune",
                weights=sparse_w,
                ratio=o["prune_ratio"],
                target_flops=o["target_flops"],
                imgsz=o["imgsz"],
                data=o["data"],
                batch=o["batch"],
                device=dev,
                out=pruned_w,
            )
            return {"weights": pruned_w, "report": rep["report"], "plot": rep["plot"]}, info, cmd

        pruned = self._stage("3_prune", key, prune_body)

        # 4. fine-tuning of the pruned model, with distillation from the baseline and without (ablation)
        key = {"pruned": pruned["id"], "teacher": base["id"], "epochs": o["epochs_distill"], **_key(common)}
        distilled = training(
            "4_distill",
            key,
            "distill",
            student=str(pruned_w),
            teacher=base_w,
            data=o["data"],
            epochs=o["epochs_distill"],
            noautoanchor=True,
        )
        key = {"pruned": pruned["id"], "epochs": o["epochs_distill"], **_key(common)}
        finetuned = training(
            "4_finetune",
            key,
            "train",
            data=o["data"],
            model=str(pruned_w),
            epochs=o["epochs_distill"],
            noautoanchor=True,
        )

        # 5. the comparison table
        order = (base, sparse, pruned, finetuned, distilled)
        weights = [m["outputs"]["weights"] for m in order]
        key = {
            "models": [m["id"] for m in order],
            "imgsz": o["imgsz"],
            "device": dev,
            "onnx": o["onnx"],
            "runs": o["bench_runs"],
            "warmup": o["bench_warmup"],
            "threads": o["threads"],
        }

        def bench_body(sdir: Path, partial: dict | None):
            from obbslim.deploy import benchmark

            benchmark(
                weights,
                o["data"],
                imgsz=o["imgsz"],
                device=dev,
                onnx=o["onnx"],
                runs=o["bench_runs"],
                warmup=o["bench_warmup"],
                threads=o["threads"],
                out=sdir,
                names=list(ROW_NAMES),
                batch_size=max(1, min(o["batch"], 8)),
                verbose=o["verbose"],
            )
            outs = {"table": sdir / "benchmark.md", "json": sdir / "benchmark.json"}
            cmd = _cmd(
                "benchmark",
                weights=weights,
                names=ROW_NAMES,
                data=o["data"],
                imgsz=o["imgsz"],
                device=dev,
                onnx=o["onnx"],
                runs=o["bench_runs"],
                warmup=o["bench_warmup"],
                threads=o["threads"],
                batch=max(1, min(o["batch"], 8)),
                out=sdir,
            )
            return outs, {k: str(v) for k, v in outs.items()}, cmd

        self._stage("5_benchmark", key, bench_body)


def _key(common: dict) -> dict:
    """The training settings that change a stage's result (not device, workers or verbosity); the hyp
    file by its content, so editing it reruns the training stages."""
    key = {k: v for k, v in common.items() if k not in ("device", "workers", "verbose")}
    if key.get("hyp") and Path(key["hyp"]).is_file():
        key["hyp_sha1"] = hashlib.sha1(Path(key["hyp"]).read_bytes()).hexdigest()
    return key


def set_threads(threads: int | None = None) -> int:
    """torch intra-op threads = ``threads`` or the CPU count (what the demo uses)."""
    import torch

    n = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n
