"""`compress(...)`: the paper's whole pipeline in one resumable run.

The stages (:mod:`obbslim.pipeline.stages`) each work in their own sub-folder of the run dir, each
finished by a ``stage.json`` marker, then report.md is written.

Resuming works like make: a stage is skipped when its marker says done, its output exists and its
inputs and settings (the marker's ``key``, which holds the upstream markers' ids) are unchanged; an
interrupted training stage continues from its last.pt; a stage whose key changed runs again from
scratch, and so do the stages after it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any, Callable

import torch

from obbslim.data.labels import load_data_yaml
from obbslim.engine.runs import write_yaml
from obbslim.errors import ObbslimError
from obbslim.model import read_checkpoint
from obbslim.options import CompressConfig
from obbslim.options.train import SPARSITY_WEIGHTINGS
from obbslim.pipeline.report import claim, write_report
from obbslim.pipeline.stages import SPEC_BY_NAME, Context, Stage
from obbslim.utils.device import select_device
from obbslim.utils.io import atomic_write_text, claim_run_dir, run_path
from obbslim.utils.lock import RunLock
from obbslim.utils.threads import default_threads

ARGS_FILE = "compress.json"
MARKER = "stage.json"
#: a stage that runs in a second process beside another on CPU (both need only the pruned model)
BESIDE = {"4_distill": "4_finetune"}
#: the exit status of that process when SIGINT/SIGTERM stopped its stage (its last.pt is saved)
INTERRUPTED = 3


class StageInterrupted(Exception):
    """A training stage stopped on SIGINT/SIGTERM: its last.pt is saved, a rerun continues it."""

    def __init__(self, stage: str, signum: int | None):
        super().__init__(stage)
        self.stage, self.signum = stage, signum


def compress(*args: Any, **options: Any) -> dict[str, Any]:
    """Baseline -> sparsity training -> pruning -> distillation (and plain fine-tuning, the ablation)
    -> benchmark -> report.md, in ``project/name``, with the options of
    :class:`~obbslim.options.CompressConfig`.

    Exactly one of ``prune_ratio`` (fraction of prunable BN channels removed) and ``target_flops``
    (fraction of the GFLOPs kept). ``pretrained`` initialises the baseline (train's ``pretrained``, e.g.
    COCO yolov5s.pt). ``teacher`` (a checkpoint) replaces the baseline training.
    ``resume`` (a compress run dir, or True for the newest in ``project``) reruns with the stored
    options (only device, workers, cache_images, verbose and threads may change); ``exist_ok`` reuses
    ``project/name`` with the options given. In both cases complete stages are skipped (see the module
    doc). Returns ``{run_dir, report, stages: {stage: marker}, ran: [stages run now], benchmark,
    stopped, signal}``; ``stopped`` is 'signal' when a training stage was interrupted (rerun to go on).
    """
    cfg = CompressConfig.of(*args, **options)
    if cfg.resume:
        run_dir = _find_run(cfg.resume, cfg.project)
    else:
        _check_args(cfg)
        run_dir = claim_run_dir(run_path(cfg.project, cfg.name), cfg.exist_ok)
    with RunLock(run_dir, log=print if cfg.verbose else None):  # this run's until it ends
        return _compress(cfg, run_dir)


def _compress(cfg: CompressConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.resume:
        stored = CompressConfig.from_record(json.loads((run_dir / ARGS_FILE).read_text()))
        cfg = stored.replace(**{k: getattr(cfg, k) for k in CompressConfig.runtime_names()})
    else:
        cfg = _portable(cfg, run_dir)
        atomic_write_text(run_dir / ARGS_FILE, json.dumps(cfg.to_record(), indent=2) + "\n")
    pipe = Pipeline(run_dir, cfg)
    try:
        pipe.run_all()
    except StageInterrupted as e:
        pipe.log(f"compress: stage {e.stage} interrupted; continue with: obbslim compress --resume {run_dir}")
        return {**pipe.result(), "stopped": "signal", "signal": e.signum}
    report = write_report(run_dir, pipe.markers, cfg)
    if cfg.verbose:
        print(Path(pipe.markers["5_benchmark"]["info"]["table"]).read_text().split("\n\n")[0])
        print(f"\ncompress: report -> {report}")
        print(claim(pipe.markers))
    return {**pipe.result(), "report": str(report), "stopped": None, "signal": None}


def _check_args(o: CompressConfig) -> None:
    """Fail before any work on a bad combination, with the option names of the CLI."""
    if (o.prune_ratio is None) == (o.target_flops is None):
        raise ObbslimError("give exactly one of --prune-ratio and --target-flops")
    if not o.teacher and o.epochs_base < 1:
        raise ObbslimError(f"--epochs-base must be >= 1 without --teacher, got {o.epochs_base}")
    if not o.data:
        raise ObbslimError("a dataset is required: --data DATA.yaml")
    if o.sparsity_weighting not in SPARSITY_WEIGHTINGS:
        choices = " or ".join(SPARSITY_WEIGHTINGS)
        raise ObbslimError(f"--sparsity-weighting {o.sparsity_weighting!r}: use {choices}")
    if o.teacher is not None:
        if not str(o.teacher).endswith(".pt"):
            raise ObbslimError(f"--teacher {o.teacher}: expected a checkpoint .pt")
        if not Path(o.teacher).is_file():
            raise ObbslimError(f"--teacher {o.teacher}: file not found")
    if o.pretrained is not None:
        if o.teacher is not None:
            raise ObbslimError("--pretrained initialises the baseline training, which --teacher skips")
        if not Path(o.pretrained).is_file():
            raise ObbslimError(f"--pretrained {o.pretrained}: file not found")
    if isinstance(o.data, (str, Path)) and not Path(o.data).is_file():
        raise ObbslimError(f"--data {o.data}: dataset YAML not found")


def _portable(o: CompressConfig, run_dir: Path) -> CompressConfig:
    """Absolute paths, and dicts (data, hyp given in Python) written to YAML files in the run dir, so the
    options are plain JSON and every stage can be reproduced with a shell command."""
    data, hyp = o.data, o.hyp
    if isinstance(data, dict):
        d = load_data_yaml(data)
        write_yaml(
            run_dir / "data.yaml", {k: d[k] for k in ("path", "train", "val", "test", "names") if d.get(k)}
        )
        data = run_dir / "data.yaml"
    if isinstance(hyp, dict):
        write_yaml(run_dir / "hyp.yaml", hyp)
        hyp = run_dir / "hyp.yaml"
    paths = {
        k: None if v is None else str(Path(v).resolve())
        for k, v in (("data", data), ("hyp", hyp), ("teacher", o.teacher), ("pretrained", o.pretrained))
    }
    model = o.model
    if str(model).endswith((".pt", ".yaml", ".yml")) and Path(model).is_file():
        model = str(Path(model).resolve())
    return o.replace(**paths, model=model, project=str(o.project))


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


def read_marker(stage_dir: Path) -> dict | None:
    try:
        return json.loads((Path(stage_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(stage_dir: Path, marker: dict) -> None:
    atomic_write_text(Path(stage_dir) / MARKER, json.dumps(marker, indent=2, default=str) + "\n")


class Pipeline:
    """Runs the stages in order; each stage's marker is kept in ``markers`` for the next ones."""

    def __init__(self, run_dir: Path, cfg: CompressConfig):
        self.dir, self.cfg = run_dir, cfg
        self.markers: dict[str, dict] = {}
        self.ran: list[str] = []
        self.log: Callable[..., None] = print if cfg.verbose else (lambda *a, **k: None)

    def result(self) -> dict:
        bench = self.markers.get("5_benchmark")
        rows = None
        if bench and Path(bench["info"]["json"]).is_file():
            rows = json.loads(Path(bench["info"]["json"]).read_text())["rows"]
        return {"run_dir": str(self.dir), "stages": self.markers, "ran": self.ran, "benchmark": rows}

    def run_all(self) -> None:
        """Every stage in order: a spec built from the finished ones, then skipped, continued or run."""
        ctx = Context(self.cfg, self.dir, self.markers)
        for name, spec in SPEC_BY_NAME.items():
            if name in self.markers:  # it ran beside another stage
                continue
            threads = self.beside_threads() if name in BESIDE else None
            if threads and self.run_pair(spec, SPEC_BY_NAME[BESIDE[name]], *threads):
                continue
            stage = spec(ctx)
            if stage.given is not None:
                self.log(f"compress: {stage.name} skipped, the teacher is {self.cfg.teacher}")
                self.markers[stage.name] = stage.given
            else:
                self.markers[stage.name] = self.run_stage(stage)

    def beside_threads(self) -> tuple[int, int] | None:
        """(this process's, the second process's) CPU threads when a BESIDE stage runs beside its partner:
        on CPU with 2+ threads, unless ``serial``."""
        if self.cfg.serial or select_device(self.cfg.device).type != "cpu":
            return None
        n = int(self.cfg.threads or default_threads())
        return (n - n // 2, n // 2) if n >= 2 else None

    def run_pair(self, main_spec: Callable, side_spec: Callable, n_main: int, n_side: int) -> bool:
        """Run ``side_spec``'s stage in a second process while this one runs ``main_spec``'s, each on its
        share of the threads. Returns False (nothing run) when either is complete already."""
        main_cfg, side_cfg = self.cfg.replace(threads=n_main), self.cfg.replace(threads=n_side)
        main = main_spec(Context(main_cfg, self.dir, self.markers))
        side = side_spec(Context(side_cfg, self.dir, self.markers))
        if self.complete(main) or self.complete(side):
            return False
        log_path = self.dir / f"{side.name}.log"
        self.log(f"compress: {side.name} running beside {main.name} in a second process ({n_side} + {n_main} "
                 f"CPU threads; --serial: one after the other) -> log {log_path}")  # fmt: skip
        with open(log_path, "w") as log:
            proc = start_beside(self.dir, side_cfg, self.markers, side.name, log)
            try:
                self.markers[main.name] = self.run_stage(main)
            finally:  # stopped or failed here: the second process saves its last.pt and stops too
                if proc.poll() is None and main.name not in self.markers:
                    proc.terminate()
                rc = proc.wait()
        if rc == INTERRUPTED:
            raise StageInterrupted(side.name, None)
        tail = log_path.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-12:]
        if rc != 0:
            raise ObbslimError(f"compress: {side.name} failed in its process beside {main.name} (exit {rc}); "
                               f"the end of {log_path}:\n" + "\n".join(tail))  # fmt: skip
        self.markers[side.name] = read_marker(self.dir / side.name)
        self.ran.append(side.name)
        done = [t for t in tail if "epochs completed" in t]
        self.log(f"compress: {side.name} done: {done[-1].strip() if done else 'see ' + str(log_path)}")
        return True

    def complete(self, stage: Stage) -> dict | None:
        """The stage's marker when it is done with the same key and its outputs still exist (then it is
        skipped); else None."""
        old = read_marker(self.dir / stage.name)
        done = (
            old
            and old.get("done")
            and old.get("key") == stage.key
            and all(Path(p).exists() for p in old.get("outputs", {}).values())
        )
        return old if done else None

    def run_stage(self, stage: Stage) -> dict:
        """Skip when complete with the same key; else run (or continue) it and write the done marker."""
        sdir = self.dir / stage.name
        done = self.complete(stage)
        if done:
            self.log(f"compress: {stage.name} complete, skipped ({sdir})")
            return done
        old = read_marker(sdir)
        partial = old if old and not old.get("done") and old.get("key") == stage.key else None
        if partial is None:  # a fresh start: nothing stale from another configuration survives
            if sdir.exists():
                shutil.rmtree(sdir)
            sdir.mkdir(parents=True)
            _write_marker(sdir, {"stage": stage.name, "done": False, "key": stage.key})
        self.log(f"compress: {stage.name} {'resuming' if partial else 'running'} -> {sdir}")
        t0, c0 = time.time(), time.process_time()
        outputs, info = stage.finish(sdir, self._call(stage, sdir, partial is not None))
        marker = {
            "stage": stage.name,
            "done": True,
            "key": stage.key,
            "id": uuid.uuid4().hex,
            "outputs": {k: str(v) for k, v in outputs.items()},
            "info": {
                "wall_s": round(time.time() - t0, 2),
                "cpu_s": round(time.process_time() - c0, 2),
                **info,
            },
            "command": stage.command_line,
        }
        _write_marker(sdir, marker)
        self.ran.append(stage.name)
        return marker

    def _call(self, stage: Stage, sdir: Path, partial: bool) -> Any:
        """The stage's call; an interrupted training stage continues from its last.pt instead."""
        last = sdir / "weights" / "last.pt"
        if not (stage.resumable and partial and last.is_file()):
            res = stage.fn(**stage.args)
        else:
            ck = read_checkpoint(last)
            if ck["epoch"] + 1 >= ck["train_args"]["epochs"]:  # finished, the marker was not written
                return {"last": str(last), "best_epoch": ck.get("best_epoch", -1), "stopped": None}
            c = self.cfg
            res = stage.fn(
                resume=str(last), project=self.dir, device=c.device, workers=c.workers,
                threads=stage.args.get("threads", c.threads),
                cache_images=c.cache_images, verbose=c.verbose,
            )
        if stage.resumable and res.get("stopped") == "signal":
            raise StageInterrupted(stage.name, res.get("signal"))
        return res


def start_beside(run_dir: Path, cfg: CompressConfig, markers: dict, stage: str, log: IO) -> subprocess.Popen:
    """Start ``stage`` of the compress run ``run_dir`` on ``cfg.threads`` threads in a second process
    (:mod:`obbslim.pipeline.beside`, given the job as JSON on its stdin) whose output goes to ``log``."""
    job = {"run_dir": str(run_dir), "cfg": cfg.to_record(), "threads": cfg.threads, "markers": markers,
           "stage": stage}  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads or 1)}
    proc = subprocess.Popen([sys.executable, "-m", "obbslim.pipeline.beside"], stdin=subprocess.PIPE,
                            stdout=log, stderr=subprocess.STDOUT, env=env, text=True)  # fmt: skip
    proc.stdin.write(json.dumps(job, default=str))
    proc.stdin.close()
    return proc


def set_threads(threads: int | None = None) -> int:
    """torch intra-op threads = ``threads``, else ``$OMP_NUM_THREADS``, else every core (what the demo
    uses: it expects the machine to itself)."""
    n = int(threads or default_threads(reserve=0))
    torch.set_num_threads(n)
    return n
