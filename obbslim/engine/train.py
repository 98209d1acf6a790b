"""The training loop (`obbslim train`): SGD + warmup + cosine LR, EMA, AMP, gradient accumulation,
OBB-mAP validation, checkpoints that resume exactly, clean stop on SIGINT/SIGTERM, DDP via torchrun.

Reading order: :func:`train` builds a :class:`TrainState` (:func:`build_state`) and runs :func:`fit`,
which calls :func:`train_one_epoch` (one :func:`train_step` per batch) and :func:`end_epoch`
(validation, results.csv, :func:`save_checkpoint`, the stop policies) until the schedule ends.
Callbacks (:mod:`obbslim.engine.callbacks`) add to a run without touching this file: network
slimming's sparsity and knowledge distillation are callbacks their commands pass in.

Epochs are 0-based in the progress bar, results.csv and checkpoints (``ckpt['epoch']`` is the last
completed epoch, -1 for none), as in YOLOv5.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from obbslim.cfg import load_hyp
from obbslim.data.dataset import build_dataloader, close_workers, set_epoch
from obbslim.data.labels import load_data_yaml, load_split
from obbslim.data.show import plot_batch, plot_labels
from obbslim.engine import distributed as ddp
from obbslim.engine.callbacks import Callback
from obbslim.engine.ema import ModelEMA
from obbslim.engine.loss import OBBLoss, scale_gains
from obbslim.engine.optim import (
    accumulate_steps,
    build_optimizer,
    lr_lambda,
    resolve_optimizer,
    scaled_weight_decay,
    set_lr,
)
from obbslim.engine.runs import ResultsCSV, plot_results, write_yaml
from obbslim.engine.trainer_utils import (
    StopRequest,
    find_resume_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from obbslim.errors import ObbslimError
from obbslim.eval.metrics import FITNESS, fitness, validate
from obbslim.model import build, check_anchors, ckpt_to_model, read_checkpoint, save
from obbslim.model.pretrained import load_pretrained
from obbslim.ops import poly2rbox
from obbslim.options import TrainConfig
from obbslim.utils.device import cpu_bf16_native, de_parallel, prefers_channels_last, select_device
from obbslim.utils.io import claim_run_dir, increment_path, run_path
from obbslim.utils.lock import RunLock
from obbslim.utils.text import plural
from obbslim.utils.threads import default_threads, use_threads

MAX_BAD_STEPS = 10  # consecutive NaN/inf losses before training stops
LOSS_KEYS = ("box", "obj", "cls", "theta")
METRIC_KEYS = ("mAP50", "mAP50_voc12", "mAP50_95", "precision", "recall", *(f"val_{k}" for k in LOSS_KEYS))
HALT = "halt"  # what train_step returns when a stop was requested


@dataclass
class TrainState:
    """One training run: its setup (options, device, data, run folder), what a checkpoint restores
    (model, EMA, optimizer, scaler, epoch, best) and the callbacks."""

    cfg: TrainConfig
    hyp: dict
    model: nn.Module  # DDP-wrapped under torchrun: de_parallel(model) is the OBBModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None = None  # rank 0 only
    criterion: OBBLoss | None = None
    callbacks: list[Callback] = field(default_factory=list)
    info: ddp.DistInfo = field(default_factory=ddp.DistInfo)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    save_dir: Path = Path(".")
    names: list[str] = field(default_factory=list)
    imgsz: int = 640
    train_loader: Any = None
    val_loader: Any = None
    csv: ResultsCSV | None = None  # rank 0 only
    lf: Callable[[float], float] = lambda x: 1.0  # LR multiplier per epoch
    warmup_iters: int = 0
    epoch: int = 0  # the epoch in progress
    completed: int = 0  # epochs complete
    start_epoch: int = 0  # the first epoch of this invocation
    epochs: int = 1  # the schedule's length (re-estimated under a time limit)
    best_fitness: float = -1.0
    best_epoch: int = -1
    metrics: dict = field(default_factory=dict)  # of the last validation
    bad_steps: int = 0  # consecutive non-finite losses
    extra_names: list[str] = field(default_factory=list)  # the callbacks' loss terms
    elapsed0: float = 0.0  # seconds trained by earlier invocations (resume)
    t0: float = 0.0  # when this invocation's loop started
    epoch_times: list[float] = field(default_factory=list)
    log: Callable[..., None] = print
    bf16: bool = False  # CPU bfloat16 autocast (--bf16 on a CPU with bf16 instructions)

    @property
    def amp(self) -> bool:
        return bool(self.cfg.amp) and self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        """On the CPU always (``utils.device.prefers_channels_last``), on CUDA by request."""
        return use_channels_last(self.cfg, self.device)

    def autocast(self) -> torch.autocast:
        """fp16 autocast under CUDA AMP, bf16 under ``--bf16`` on the CPU, else a no-op."""
        dtype = torch.bfloat16 if self.bf16 else None
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp or self.bf16)

    @property
    def last_pt(self) -> Path:
        return self.save_dir / "weights" / "last.pt"

    @property
    def best_pt(self) -> Path:
        return self.save_dir / "weights" / "best.pt"

    def train_time(self) -> float:
        return self.elapsed0 + time.time() - self.t0

    def trainable(self) -> list[nn.Module]:
        return [cb for cb in self.callbacks if isinstance(cb, nn.Module)]


@dataclass
class EpochStats:
    """What an epoch adds up: images seen, batches counted, the running mean of the loss items."""

    seen: int = 0
    steps: int = 0
    mloss: torch.Tensor | None = None
    halted: bool = False

    def add(self, items: torch.Tensor, n_images: int) -> None:
        self.seen, self.steps = self.seen + n_images, self.steps + 1
        self.mloss = (
            items.float() if self.mloss is None else self.mloss + (items.float() - self.mloss) / self.steps
        )


def train(*args: Any, callbacks: Sequence[Callback] = (), **options: Any) -> dict[str, Any]:
    """``train(data, model, epochs, **options)`` with the options of :class:`~obbslim.options.TrainConfig`
    (or ``train(config)``). Returns ``{run_dir, last, best, best_epoch, best_fitness, metrics,
    epochs_done, stopped, signal}`` (``stopped``: None, 'signal', 'patience' or 'stop_after').

    ``model`` is a spec ('yolov5s-obb.yaml') or a checkpoint (.pt) whose stored architecture is kept
    (a pruned model stays pruned). ``pretrained`` (a YOLOv5 or obbslim checkpoint, or a state dict)
    initialises every tensor of that model whose name and shape match (obbslim.model.pretrained); with a
    checkpoint as ``model`` it also allows other classes (its architecture, a new head). ``batch`` is
    the total over all DDP processes. ``stop_after`` ends this invocation after that many epochs (the
    schedule still spans ``epochs``; ``resume`` continues).
    ``time_limit`` (hours) replaces ``epochs`` by the number that fits, re-estimated after every epoch.
    best.pt is the epoch with the highest ``eval.metrics.fitness`` (``FITNESS``: 0.1 mAP50 + 0.9 mAP50-95).
    ``callbacks``: see :mod:`obbslim.engine.callbacks`. ``threads`` (None: the machine's default, see
    :mod:`obbslim.utils.threads`) holds for the call; ``workers`` None: min(8, cores - 1).
    """
    cfg = TrainConfig.of(*args, **options)
    with use_threads(cfg.threads):
        return _train(cfg, callbacks)


def _train(cfg: TrainConfig, callbacks: Sequence[Callback]) -> dict[str, Any]:
    info = ddp.dist_info()
    dev = select_device(cfg.device, info.local_rank, info.world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ddp.init(info, dev)
    state = None
    try:  # from here on SIGINT/SIGTERM stop cleanly at the next step; the run folder is locked until the end
        with StopRequest() as stop, ExitStack() as locks:
            state = build_state(cfg, list(callbacks), info, dev, locks)
            summary = fit(state, stop)
            ddp.barrier(info)  # every rank tears down together
            return summary
    finally:
        if state is not None:  # the loaders' workers persist across epochs: they end with the run
            close_workers(state.train_loader)
            close_workers(state.val_loader)
        state = None  # the DDP wrapper holds the process group: drop it before destroying the group
        ddp.cleanup(info)


# ---------------------------------------------------------------------------------------- the loop


def fit(state: TrainState, stop: StopRequest) -> dict[str, Any]:
    """Epochs until the schedule ends, a stop policy fires or a signal arrives; returns the summary."""
    state.t0 = time.time()
    stopped = None
    while state.epoch < state.epochs:
        te = time.time()
        stats = train_one_epoch(state, stop)
        if stats.halted:  # the epoch in progress does not count
            stopped = "signal"
            _save_on_signal(state, stop)
            break
        stopped = end_epoch(state, stats, te)
        if stopped:
            break
    return _summary(state, stopped, stop)


def train_one_epoch(state: TrainState, stop: StopRequest) -> EpochStats:
    """One pass over the training data: the LR (and warmup) per batch, a :func:`train_step` per batch,
    an optimizer step every ``accumulate`` batches and one at the end (no gradient crosses an epoch
    boundary: that keeps resume exact)."""
    state.model.train()
    for module in state.trainable():
        module.train()
    set_epoch(state.train_loader, state.epoch)
    stats, pending, last_step = EpochStats(), False, -1
    nb = len(state.train_loader)
    bar = _progress_bar(state, stop)
    for i, (imgs, targets, *_) in enumerate(bar):
        ni = i + nb * state.epoch
        accumulate = set_lr(
            state.optimizer, state.hyp, state.lf, state.epoch, ni, state.warmup_iters, state.cfg.batch
        )
        due = i - last_step >= accumulate
        items = train_step(state, imgs, targets, i, due, stop)
        if items is HALT:
            stats.halted = True
            break
        if items is None:  # skipped: non-finite loss
            continue
        pending, last_step = (False, i) if due else (True, last_step)
        stats.add(items, imgs.shape[0])
        _show_batch(state, bar, stats, imgs, targets, i)
    bar.close()
    stats.halted = stats.halted or (stop.requested and not state.info.enabled)  # the signal broke the loader
    if pending and not stats.halted:
        optimizer_step(state, state.epoch + 1.0)
    return stats


def train_step(
    state: TrainState, imgs: torch.Tensor, targets: torch.Tensor, i: int, step: bool, stop: StopRequest
) -> torch.Tensor | str | None:
    """Batch ``i``: forward, loss (plus the callbacks' terms), backward, and the optimizer step when
    ``step``. Returns the loss items; None when a non-finite loss skipped the batch; HALT on a stop."""
    imgs = imgs.to(state.device, non_blocking=True).float() / 255
    if state.channels_last:
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    targets = targets.to(state.device)
    with state.autocast():
        raw = state.model(imgs)
        loss, items = state.criterion(raw, targets)
        loss, items = add_extra_losses(state, raw, imgs, targets, loss, items)
    loss = loss * state.info.world_size  # DDP averages gradients over ranks
    flags = [float(not torch.isfinite(loss)), float(stop.requested)]
    bad, halt = ddp.all_reduce_sum(flags, state.info, state.device)  # every rank decides alike
    if halt:
        return HALT
    if skip_nonfinite(state, bool(bad), i):
        return None
    state.scaler.scale(loss).backward()
    if step:
        optimizer_step(state, state.epoch + (i + 1) / len(state.train_loader))
    return items


def add_extra_losses(
    state: TrainState,
    raw: list,
    imgs: torch.Tensor,
    targets: torch.Tensor,
    loss: torch.Tensor,
    items: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The callbacks' loss terms added to the loss, their named values appended to the items."""
    terms: dict[str, Any] = {}
    for cb in state.callbacks:
        out = cb.extra_loss(raw, imgs, targets)
        if out is not None:
            loss = loss + out[0]
            terms.update(out[1])
    if not terms:
        return loss, items
    state.extra_names = state.extra_names or list(terms)
    extra = [torch.as_tensor(terms[k], device=state.device, dtype=torch.float32) for k in state.extra_names]
    return loss, torch.cat([items.float(), torch.stack(extra).detach()])


def optimizer_step(state: TrainState, epoch_frac: float) -> None:
    """Unscale, the callbacks' ``after_backward``, clip, step, zero the gradients, update the EMA."""
    state.scaler.unscale_(state.optimizer)
    _average_trainable_grads(state)
    for cb in state.callbacks:
        cb.after_backward(state, epoch_frac)
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm=state.hyp["clip_grad_norm"])
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.update(state.model)


def end_epoch(state: TrainState, stats: EpochStats, te: float) -> str | None:
    """After an epoch: the loss means over all ranks, the time limit, validation, results.csv, last.pt
    and best.pt; then the stop policies. Returns why training stops now (None: it goes on)."""
    cfg, main = state.cfg, state.info.main
    if stats.mloss is None:  # every batch was skipped
        stats.mloss = torch.zeros(len(LOSS_KEYS) + len(state.extra_names))
    sums = ddp.all_reduce_sum(
        [stats.seen, stats.steps, *(stats.mloss * stats.steps).tolist()], state.info, state.device
    )
    seen, mloss = int(sums[0]), torch.tensor(sums[2:]) / max(sums[1], 1)
    state.completed = state.epoch + 1
    if cfg.time_limit:
        fit_time_limit(state, te)
    chunk_done = bool(cfg.stop_after) and state.epoch + 1 - state.start_epoch >= cfg.stop_after
    final = state.epoch + 1 >= state.epochs or chunk_done
    early = 0.0
    if main:
        do_val = state.val_loader is not None and (
            final or (not cfg.noval and (state.epoch + 1) % max(int(cfg.val_every), 1) == 0)
        )
        state.metrics = validate_epoch(state, final) if do_val else {}
        write_results_row(state, mloss, seen)
        save_checkpoint(state, state.last_pt)
        if do_val and state.best_epoch == state.epoch:
            save_checkpoint(state, state.best_pt)
        early = float(patience_exhausted(state, do_val, final))
    early = ddp.broadcast_value(early, state.info, state.device)
    state.epoch_times.append(time.time() - te)
    state.epoch += 1
    return stop_reason(state, bool(early), chunk_done)


# ---------------------------------------------------------------------------------------- policies


def skip_nonfinite(state: TrainState, bad: bool, i: int) -> bool:
    """The NaN/inf policy: skip the batch (the weights stay as they were) with a warning; after
    MAX_BAD_STEPS in a row, save last.pt and stop with a clear error. Returns whether to skip."""
    if not bad:
        state.bad_steps = 0
        return False
    state.bad_steps += 1
    where = f"epoch {state.epoch} batch {i} ({state.bad_steps} in a row)"
    print(f"WARNING: non-finite loss at {where}: step skipped", file=sys.stderr)
    if state.bad_steps >= MAX_BAD_STEPS:
        if state.info.main:
            save_checkpoint(state, state.last_pt)
        raise ObbslimError(
            f"the loss was NaN/inf for {state.bad_steps} consecutive batches (epoch {state.epoch}): training "
            f"stopped, {state.last_pt} saved. Try a lower lr0, check the labels, or train without AMP"
        )
    return True


def patience_exhausted(state: TrainState, validated: bool, final: bool) -> bool:
    """Early stop: no better fitness for ``patience`` epochs (decided on rank 0, never on the last epoch)."""
    if validated and state.epoch - state.best_epoch >= state.cfg.patience and not final:
        state.log(
            f"early stop: no improvement in {plural(state.cfg.patience, 'epoch')} "
            f"(best epoch {state.best_epoch})"
        )
        return True
    return False


def stop_reason(state: TrainState, early: bool, chunk_done: bool) -> str | None:
    """'patience', 'stop_after' (this invocation's share of a longer schedule is done) or None."""
    if early:
        return "patience"
    if chunk_done and state.epoch < state.epochs:
        return "stop_after"
    return None


def fit_time_limit(state: TrainState, te: float) -> None:
    """Under ``time_limit``: the epochs that still fit (rank 0 decides); the LR schedule follows."""
    per = np.mean(state.epoch_times) if state.epoch_times else time.time() - te
    left = max(state.cfg.time_limit * 3600 - (time.time() - state.t0), 0)
    state.epochs = int(
        ddp.broadcast_value(float(state.epoch + 1 + int(left // per)), state.info, state.device)
    )
    state.lf = lr_lambda(state.epochs, state.hyp["lrf"], state.hyp["lr_schedule"])
    _close_mosaic(state)


# ---------------------------------------------------------------------------------------- epoch end


def validate_epoch(state: TrainState, final: bool) -> dict:
    """OBB metrics of the EMA model on the val split; updates the best epoch.

    Without ``--threads`` it runs on every core: the one training keeps for the loader workers is free
    while they idle (half the validation time on 2 cores)."""
    with use_threads(state.cfg.threads or default_threads(reserve=0)):
        metrics = validate(
            state.ema.ema,
            state.val_loader,
            state.names,
            criterion=state.criterion,
            half=state.amp,
            verbose=final and state.cfg.verbose,
            progress=state.cfg.verbose,
        )
    metrics.pop("voc07", None)
    metrics.pop("voc12", None)  # per-class arrays: not weights_only-loadable in checkpoints
    if fitness(metrics) >= state.best_fitness:
        state.best_fitness, state.best_epoch = fitness(metrics), state.epoch
    state.log(
        f"  mAP50 {metrics['mAP50']:.4f} (VOC07) {metrics['mAP50_voc12']:.4f} (VOC12), "
        f"mAP50-95 {metrics['mAP50_95']:.4f}, P {metrics['precision']:.3f} R {metrics['recall']:.3f}"
    )
    return metrics


def write_results_row(state: TrainState, mloss: torch.Tensor, seen: int) -> None:
    keys = [*LOSS_KEYS, *state.extra_names]
    row = {
        "epoch": state.epoch,
        **dict(zip(keys, mloss.tolist())),
        "lr": state.optimizer.param_groups[1]["lr"],
    }
    row.update({k: state.metrics.get(k, "") for k in METRIC_KEYS})
    for cb in state.callbacks:
        row.update(cb.after_epoch(state, state.epoch))
    row.update(images=seen, time=round(state.train_time(), 2))
    state.csv.append(row)


def save_checkpoint(state: TrainState, path: Path) -> None:
    """last.pt / best.pt as plain data (``torch.load(weights_only=True)``): model, EMA, optimizer, scaler,
    RNG, the completed epochs and the best one, the run's options, the callbacks' names and the
    trainable callback's state."""
    trainable = state.trainable()
    extra = {k: v.detach().cpu() for k, v in trainable[0].state_dict().items()} if trainable else None
    save(
        de_parallel(state.model),
        path,
        ema=state.ema.ema,
        optimizer=state.optimizer,
        epoch=state.completed - 1,
        hyp=state.hyp,
        metrics=state.metrics,
        ema_updates=state.ema.updates,
        best_fitness=state.best_fitness,
        best_epoch=state.best_epoch,
        train_args={**state.cfg.to_record(), "epochs": state.epochs},
        callbacks=[cb.name for cb in state.callbacks if cb.recorded()],
        rng=rng_state(),
        scaler=state.scaler.state_dict(),
        train_time=state.train_time(),
        extra_state=extra,
    )


def _save_on_signal(state: TrainState, stop: StopRequest) -> None:
    if not state.info.main:
        return
    save_checkpoint(state, state.last_pt)
    sig = "SIGINT" if stop.signum == 2 else "SIGTERM" if stop.signum == 15 else "a signal"
    state.log(
        f"stopped by {sig} during epoch {state.epoch}: {state.last_pt} saved, "
        f"{plural(state.epoch, 'epoch')} complete; "
        f"continue with: obbslim train --resume {state.save_dir}"
    )


def _summary(state: TrainState, stopped: str | None, stop: StopRequest) -> dict[str, Any]:
    best = state.best_epoch >= 0
    if state.info.main:
        if not state.cfg.noplots:
            plot_results(state.save_dir / "results.csv")
        hours = state.train_time() / 3600
        best_txt = (
            f"best fitness {state.best_fitness:.3f} ({FITNESS}, epoch {state.best_epoch}) "
            f"-> {state.best_pt}"
            if best
            else (f"no validation, weights -> {state.last_pt}")
        )
        done = plural(state.epoch - state.start_epoch, "epoch")
        state.log(f"{done} completed in {hours:.3f} h. {best_txt}")
    return {
        "run_dir": str(state.save_dir),
        "last": str(state.last_pt),
        "best": str(state.best_pt) if best else None,
        "best_epoch": state.best_epoch,
        "best_fitness": state.best_fitness,
        "metrics": state.metrics,
        "epochs_done": state.epoch,  # an interrupted epoch does not count
        "stopped": stopped,
        "signal": stop.signum,
    }


def _progress_bar(state: TrainState, stop: StopRequest) -> tqdm:
    show = state.info.main and state.cfg.verbose
    if show:
        print(("\n" + "%10s" * 8) % ("Epoch", "GPU_mem", *LOSS_KEYS, "Instances", "Size"))
    return tqdm(
        _until_stopped(state.train_loader, stop),
        total=len(state.train_loader),
        disable=not show,
        file=sys.stdout,
        bar_format="{l_bar}{bar:10}{r_bar}",
    )


def _show_batch(
    state: TrainState, bar: tqdm, stats: EpochStats, imgs: torch.Tensor, targets: torch.Tensor, i: int
) -> None:
    """The progress bar's losses; the first batches drawn to train_batch*.jpg."""
    if not state.info.main:
        return
    if state.cfg.verbose:
        mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if state.device.type == "cuda" else "-"
        bar.set_description(
            ("%10s" * 2 + "%10.4g" * 4 + "%10d" * 2)
            % (
                f"{state.epoch}/{state.epochs - 1}",
                mem,
                *stats.mloss.tolist()[:4],
                targets.shape[0],
                imgs.shape[-1],
            )
        )
    if state.epoch == 0 and i < 3 and not state.cfg.noplots:
        plot_batch(imgs, targets, state.names, state.save_dir / f"train_batch{i}.jpg")


def _average_trainable_grads(state: TrainState) -> None:
    """DDP averages only the model's own gradients: the trainable callback's are averaged here."""
    if not state.info.enabled:
        return
    grads = [
        p.grad for m in state.trainable() for p in m.parameters() if p.requires_grad and p.grad is not None
    ]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= state.info.world_size
        i = 0
        for g in grads:
            g.copy_(flat[i : i + g.numel()].view_as(g))
            i += g.numel()


def _until_stopped(batches, stop: StopRequest):
    """Yield the loader's batches; when Ctrl-C also reached its workers (same process group) and broke
    the loader, end the epoch quietly so the stop is handled like any other."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception:
            if stop.requested:
                return
            raise
        yield batch


# ---------------------------------------------------------------------------------------- setup


def build_state(
    cfg: TrainConfig,
    callbacks: list[Callback],
    info: ddp.DistInfo,
    dev: torch.device,
    locks: ExitStack | None = None,
) -> TrainState:
    """Everything before the first batch, in the order exact resume relies on: the options (the stored
    ones when resuming), seeds, data, model, optimizer, EMA, trainable callback, restored state, loss,
    the callbacks' ``before_train``, SyncBN/DDP, loaders, the run folder. The run folder's lock
    (``utils.lock``) goes on ``locks``, which the caller closes when the run ends."""
    log = print if (info.main and cfg.verbose) else (lambda *a, **k: None)
    cfg, ckpt, save_dir = _resolve_run(cfg, callbacks, log)
    # an older checkpoint may lack newer keys; the user's --hyp is checked (before the run folder is
    # claimed: a bad file leaves none behind), a checkpoint's is taken as it is
    hyp = load_hyp(ckpt["hyp"], stored=True) if ckpt else load_hyp(cfg.hyp)
    if info.main:
        if ckpt is None:  # created atomically: two runs started together get exp and exp2
            save_dir = claim_run_dir(run_path(cfg.project, cfg.name), cfg.exist_ok)
        if locks is not None:  # a second run into this folder stops here, before writing anything
            locks.enter_context(RunLock(save_dir, log=log))
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + 1 + max(info.rank, 0))
    if cfg.batch % info.world_size:
        raise ObbslimError(
            f"--batch {cfg.batch} must be a multiple of the number of processes {info.world_size}"
        )
    names, train_samples, val_samples = _scan_data(cfg, info, log)
    if ckpt is None:  # optimizer auto -> the one that suits the schedule's length (stored in hyp.yaml)
        hyp = resolve_optimizer(hyp, len(train_samples), cfg.batch, int(cfg.epochs), len(names))
    net, imgsz = _build_model(cfg, ckpt, names, hyp, train_samples, log)
    net.to(dev)
    bf16 = _use_bf16(cfg, dev, log)
    if use_channels_last(cfg, dev):
        net.to(memory_format=torch.channels_last)
    wd = scaled_weight_decay(hyp["weight_decay"], cfg.batch, hyp["nbs"])
    state = TrainState(
        cfg=cfg,
        hyp=hyp,
        model=net,
        optimizer=build_optimizer(net, hyp["lr0"], hyp["momentum"], wd, hyp["optimizer"]),
        scaler=torch.amp.GradScaler("cuda", enabled=bool(cfg.amp) and dev.type == "cuda"),
        ema=ModelEMA(net, hyp["ema_decay"], hyp["ema_tau"]) if info.main else None,
        callbacks=callbacks,
        info=info,
        device=dev,
        save_dir=save_dir,
        names=names,
        imgsz=imgsz,
        epochs=int(cfg.epochs),
        log=log,
        lf=lr_lambda(int(cfg.epochs), hyp["lrf"], hyp["lr_schedule"]),
        bf16=bf16,
    )
    _attach_trainable(state)
    if ckpt is not None:
        _restore(state, ckpt)
    state.criterion = OBBLoss(net, scale_gains(hyp, net.detect.nl, len(names), imgsz))
    for cb in callbacks:
        cb.before_train(state)
    if cfg.sync_bn and info.enabled and dev.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    state.model = net
    _build_loaders(state, train_samples, val_samples)
    _open_run_dir(state, fresh=ckpt is None, train_samples=train_samples, n_val=len(val_samples))
    return state


def _resolve_run(
    cfg: TrainConfig, callbacks: list[Callback], log: Callable
) -> tuple[TrainConfig, dict | None, Path]:
    """(options, checkpoint, run dir): a fresh run's, or the stored options of the run being resumed with
    only its runtime options (device, workers, stop_after, verbose) taken from ``cfg``."""
    if not cfg.resume:
        if not cfg.data:
            raise ObbslimError("a dataset is required: --data DATA.yaml (or --resume RUN)")
        return cfg, None, increment_path(run_path(cfg.project, cfg.name), cfg.exist_ok)
    last = find_resume_checkpoint(cfg.resume, cfg.project)
    ckpt = read_checkpoint(last)
    if "train_args" not in ckpt:
        raise ObbslimError(f"{last}: not a training checkpoint (no train_args); use --model to fine-tune")
    if ckpt["epoch"] + 1 >= ckpt["train_args"]["epochs"]:
        raise ObbslimError(
            f"{last}: training already finished ({plural(ckpt['epoch'] + 1, 'epoch')}), nothing to resume"
        )
    missing = set(ckpt.get("callbacks") or ()) - {cb.name for cb in callbacks}
    if missing:  # e.g. a distill run resumed by the bare engine would go on without its teacher
        raise ObbslimError(
            f"{last}: the run used {', '.join(sorted(missing))}; resume it with the command that started "
            "it (obbslim train or obbslim distill --resume)"
        )
    runtime = {k: getattr(cfg, k) for k in cfg.runtime_names()}
    stored = type(cfg).from_record(ckpt["train_args"]).replace(**runtime, resume=str(last))
    log(f"resuming {last.parent.parent} from epoch {ckpt['epoch'] + 1}")
    return stored, ckpt, last.parent.parent


def _scan_data(cfg: TrainConfig, info: ddp.DistInfo, log: Callable) -> tuple[list[str], list, list]:
    """Class names and the train/val samples; scanned once (rank 0 first, the others read its cache),
    bad samples reported up front."""
    data = load_data_yaml(cfg.data)
    val_samples: list = []
    with _rank0_first(info):
        train_samples, report = load_split(data, "train", verbose=False)
        if info.main and data.get("val"):
            val_samples, val_report = load_split(data, "val", verbose=False)
    log(report.summary())
    if val_samples:
        log(val_report.summary())
    return list(data["names"]), train_samples, val_samples


def use_channels_last(cfg: TrainConfig, dev: torch.device) -> bool:
    """Whether the model and the batches use the channels_last memory format (TrainState.channels_last):
    where the device prefers it (bf16 runs on the CPU, so it does too), or by ``--channels-last``."""
    return prefers_channels_last(dev) or bool(cfg.channels_last)


def _use_bf16(cfg: TrainConfig, dev: torch.device, log: Callable[..., None]) -> bool:
    """``--bf16`` applies on a CPU with bf16 instructions; elsewhere it says why it trains in float32."""
    if not cfg.bf16:
        return False
    if dev.type != "cpu":
        log("--bf16 applies to CPU training: CUDA uses --amp (float16)")
        return False
    if not cpu_bf16_native():
        log("--bf16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), training in float32")
        return False
    return True


def _build_model(
    cfg: TrainConfig, ckpt: dict | None, names: list[str], hyp: dict, samples: list, log: Callable
) -> tuple[nn.Module, int]:
    """From a spec, or a checkpoint whose stored architecture is kept (pruned stays pruned); on a fresh
    run, the ``pretrained`` weights (every tensor whose name and shape match) and autoanchor. Returns the
    model and the image size (a multiple of its stride)."""
    if ckpt is not None:
        net = ckpt_to_model(ckpt, ema=False, source=cfg.resume)
    elif str(cfg.model).endswith(".pt"):
        src = read_checkpoint(cfg.model)
        if cfg.pretrained:  # that architecture with a head for these classes; the weights come below
            net = build(src["arch"], len(names), names)
        else:
            net = ckpt_to_model(src, ema=True, source=cfg.model)
            if net.nc != len(names):
                raise ObbslimError(
                    f"{cfg.model} predicts {net.nc} classes but the dataset has {len(names)} "
                    f"(to fine-tune it on these classes: --pretrained {cfg.model})"
                )
    else:
        net = build(cfg.model, len(names), names)
    if ckpt is None and cfg.pretrained:  # a fresh run only, before autoanchor and the EMA copy
        log(load_pretrained(net, cfg.pretrained).report())
    net.names = names
    net.detect.theta_conf = theta_conf(hyp)
    gs = int(net.stride.max())
    imgsz = int(math.ceil(cfg.imgsz / gs) * gs)
    if imgsz != cfg.imgsz:
        log(f"imgsz {cfg.imgsz} is not a multiple of the stride {gs}: using {imgsz}")
    if ckpt is None and not cfg.noautoanchor:
        check_anchors(net, _long_short(samples, imgsz), hyp["anchor_t"], imgsz, print_fn=log)
    return net, imgsz


def theta_conf(hyp: dict) -> float:
    """The angle-confidence power the model's detections score with: only a softmax-trained angle head
    (``theta_loss: ce``) has a peak that means a probability."""
    return float(hyp["theta_conf"]) if hyp["theta_loss"] == "ce" else 0.0


def _attach_trainable(state: TrainState) -> None:
    """The trainable callback (an nn.Module): to the device, its parameters in their own optimizer
    group (no weight decay), before a resumed optimizer state is loaded."""
    trainable = state.trainable()
    if len(trainable) > 1:
        raise ObbslimError("at most one trainable (nn.Module) callback per run")
    for module in trainable:
        module.to(state.device)
        if state.channels_last:  # a distiller's teacher too
            module.to(memory_format=torch.channels_last)
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            group = {"params": params, "weight_decay": 0.0, "initial_lr": state.hyp["lr0"]}
            state.optimizer.add_param_group(group)


def _restore(state: TrainState, ckpt: dict) -> None:
    """A resumed run's optimizer, trainable callback, EMA, scaler, epoch, best and RNG state."""
    state.optimizer.load_state_dict(ckpt["optimizer"])
    for module in state.trainable():
        if ckpt.get("extra_state") is not None:
            module.load_state_dict(ckpt["extra_state"])
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.ema.load_state_dict(ckpt["ema"])
        state.ema.updates = int(ckpt.get("ema_updates", 0))
    if ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    state.epoch = state.completed = state.start_epoch = ckpt["epoch"] + 1
    state.best_epoch = ckpt["best_epoch"]
    csv = state.save_dir / "results.csv"
    state.best_fitness = best_fitness_of(csv, state.best_epoch, ckpt["best_fitness"])
    state.elapsed0 = float(ckpt.get("train_time", 0.0))
    set_rng_state(ckpt["rng"])


def best_fitness_of(results_csv: Path, best_epoch: int, stored: float) -> float:
    """The best epoch's fitness under this release's rule, from its row of results.csv: a run started by a
    release that chose best.pt by mAP50 alone stored that, and its new epochs would be compared with it.
    ``stored`` when the row or its columns are missing."""
    for row in ResultsCSV(results_csv).read():
        try:
            if int(float(row["epoch"])) == best_epoch:
                return fitness({"mAP50": float(row["mAP50"]), "mAP50_95": float(row["mAP50_95"])})
        except (KeyError, ValueError):
            return stored
    return stored


def _build_loaders(state: TrainState, train_samples: list, val_samples: list) -> None:
    cfg, info, cuda = state.cfg, state.info, state.device.type == "cuda"
    rank_batch = cfg.batch // info.world_size
    state.train_loader = build_dataloader(
        train_samples,
        "train",
        state.imgsz,
        rank_batch,
        augment=True,
        hyp=state.hyp,
        workers=cfg.workers,
        shuffle=True,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        pin_memory=cuda,
        persistent_workers=True,  # forking workers every epoch costs ~0.3 s of a 15 s epoch (CPU, 320 px)
        cache_images=cfg.cache_images,
    )
    if info.main and val_samples:
        state.val_loader = build_dataloader(
            val_samples,
            "val",
            state.imgsz,
            rank_batch * 2,
            augment=False,
            hyp=state.hyp,
            workers=cfg.workers,
            seed=cfg.seed,
            persistent_workers=True,
            cache_images=cfg.cache_images,
        )
    if cfg.cache_images and info.main and cfg.verbose:
        loaders = [x for x in (state.train_loader, state.val_loader) if x is not None]
        mb = sum(x.dataset.cache_bytes for x in loaders) / 2**20
        print(f"cache-images: {sum(len(x.dataset) for x in loaders)} images in RAM ({mb:.0f} MB)")
    _close_mosaic(state)
    nb, hyp = len(state.train_loader), state.hyp
    state.warmup_iters = (
        max(round(hyp["warmup_epochs"] * nb), hyp["warmup_min_iters"]) if hyp["warmup_epochs"] > 0 else 0
    )


def _close_mosaic(state: TrainState) -> None:
    """The last ``close_mosaic`` epochs of the schedule see whole images (no mosaic), as at test time."""
    dataset = state.train_loader.dataset
    mosaic_epochs = state.epochs - int(state.hyp["close_mosaic"])
    if getattr(dataset, "mosaic_epochs", None) != mosaic_epochs:
        close_workers(state.train_loader)  # the persistent workers hold a copy of the dataset
        dataset.mosaic_epochs = mosaic_epochs


def _open_run_dir(state: TrainState, fresh: bool, train_samples: list, n_val: int) -> None:
    """args.yaml, hyp.yaml and labels.png of a fresh run, results.csv, and the line saying what trains."""
    if not state.info.main:
        return
    cfg, save_dir = state.cfg, state.save_dir
    if fresh:
        write_yaml(save_dir / "args.yaml", {**cfg.to_record(), "imgsz": state.imgsz})
        write_yaml(save_dir / "hyp.yaml", state.hyp)
        if not cfg.noplots:
            _plot_labels(train_samples, state.names, save_dir / "labels.png")
    state.csv = ResultsCSV(save_dir / "results.csv")
    if not fresh:
        state.csv.truncate(state.start_epoch - 1)
    elif state.csv.path.exists():  # a fresh run in a reused dir (--exist-ok)
        state.csv.path.unlink()
        state.csv = ResultsCSV(state.csv.path)
    ddp_txt = f" x{state.info.world_size} (DDP)" if state.info.enabled else ""
    state.log(
        f"training {plural(len(train_samples), 'image')} ({n_val} val) at {state.imgsz} px on "
        f"{state.device}{ddp_txt}, "
        f"batch {cfg.batch}, accumulate {accumulate_steps(cfg.batch, state.hyp['nbs'])}, "
        f"{'AMP (fp16)' if state.amp else 'bf16 autocast' if state.bf16 else 'fp32'} -> {save_dir}"
    )


class _rank0_first:
    """Rank 0 does the block first (e.g. writes the label cache); the other ranks then read it."""

    def __init__(self, info: ddp.DistInfo):
        self.info = info

    def __enter__(self):
        if not self.info.main:
            ddp.barrier(self.info)

    def __exit__(self, *exc):
        if self.info.main and exc[0] is None:
            ddp.barrier(self.info)


def _long_short(samples: list, imgsz: int) -> np.ndarray:
    """(long, short) sides in pixels at the training size, for autoanchor."""
    polys = [np.asarray(s.polys, np.float32).reshape(-1, 8) for s in samples]
    scale = [np.full(len(p), imgsz / max(s.shape[:2]), np.float32) for p, s in zip(polys, samples)]
    if not polys or not sum(len(p) for p in polys):
        return np.zeros((0, 2), np.float32)
    rb = poly2rbox(np.concatenate(polys))
    return rb[:, 2:4] * np.concatenate(scale)[:, None]


def _plot_labels(samples: list, names: list[str], path: Path) -> None:
    polys = np.concatenate(
        [np.asarray(s.polys, np.float32).reshape(-1, 8) for s in samples] or [np.zeros((0, 8))]
    )
    cls = np.concatenate([np.asarray(s.cls).reshape(-1) for s in samples] or [np.zeros(0)])
    plot_labels(poly2rbox(polys) if len(polys) else np.zeros((0, 5)), cls, names, path)
