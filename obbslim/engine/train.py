"""The training loop (`obbslim train`): SGD + warmup + cosine LR, EMA, AMP, gradient accumulation,
OBB-mAP validation, checkpoints that resume exactly, clean stop on SIGINT/SIGTERM, DDP via torchrun.

Two hooks let later stages change training without touching this file:
- ``after_backward(model, epoch_frac)`` runs once per optimizer step after the gradients are final
  (accumulated and, with AMP, unscaled) and before clipping: network slimming adds its L1 sub-gradient
  on the BN weights here.
- ``extra_loss(raw_preds, imgs, targets) -> (loss, {name: value})`` adds terms to the loss (knowledge
  distillation); each named term becomes a results.csv column. The detection loss it is added to is
  YOLOv5-scaled (times the batch size), so return terms on that scale. When ``extra_loss`` is an
  ``nn.Module`` it is trainable: it moves to the device, its parameters get their own optimizer group
  (no weight decay; gradients averaged over DDP ranks), its ``bind(model)`` (if any) is called with the
  plain model after the EMA copy is made (so forward hooks stay off the EMA), and its state_dict is saved
  in the checkpoints as ``extra_state`` and restored on resume. ``extra_args`` (plain data) is stored
  with the run's arguments so a resumed run can rebuild the extra loss.
- ``on_epoch_end(model, epoch) -> {column: value}`` adds columns to results.csv (rank 0).

``sparsity`` (lambda), ``sparsity_schedule``, ``sparsity_bias`` and ``sparsity_weighting`` turn on
network slimming's L1 on the BN scales (obbslim.prune.sparsity) through these hooks; being options,
resume keeps them.

Epochs are 0-based in the progress bar, results.csv and checkpoints (``ckpt['epoch']`` is the last
completed epoch, -1 for none), as in YOLOv5.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from obbslim.cfg import load_hyp
from obbslim.engine import distributed as ddp
from obbslim.engine.ema import ModelEMA
from obbslim.engine.optim import accumulate_steps, build_optimizer, lr_lambda, scaled_weight_decay, set_lr
from obbslim.engine.runs import ResultsCSV, increment_path, plain, plot_results, write_yaml
from obbslim.engine.trainer_utils import (
    StopRequest,
    find_resume_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from obbslim.engine.validate import fitness, validate
from obbslim.errors import ObbslimError
from obbslim.utils.device import de_parallel, select_device

MAX_BAD_STEPS = 10  # consecutive NaN/inf losses before training stops
RUNTIME_KEYS = ("device", "workers", "stop_after", "verbose")  # what --resume lets you change
METRIC_KEYS = (
    "mAP50",
    "mAP50_voc12",
    "mAP50_95",
    "precision",
    "recall",
    "val_box",
    "val_obj",
    "val_cls",
    "val_theta",
)


def train(
    data: str | Path | dict | None = None,
    model: str | Path = "yolov5s-obb.yaml",
    epochs: int = 100,
    imgsz: int = 640,
    batch: int = 16,
    device: str = "",
    workers: int = 8,
    hyp: str | Path | dict | None = None,
    project: str | Path = "runs/train",
    name: str = "exp",
    exist_ok: bool = False,
    resume: str | Path | bool | None = None,
    seed: int = 0,
    val_every: int = 1,
    patience: int = 100,
    noval: bool = False,
    noautoanchor: bool = False,
    noplots: bool = False,
    amp: bool = True,
    channels_last: bool = False,
    sync_bn: bool = False,
    stop_after: int | None = None,
    time_limit: float | None = None,
    verbose: bool = True,
    sparsity: float = 0.0,
    sparsity_schedule: str = "constant",
    sparsity_bias: bool = False,
    sparsity_weighting: str = "none",
    after_backward: Callable[[torch.nn.Module, float], None] | None = None,
    extra_loss: Callable[[list, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]] | None = None,
    extra_args: dict | None = None,
    on_epoch_end: Callable[[torch.nn.Module, int], dict] | None = None,
) -> dict[str, Any]:
    """Train an OBB model; returns ``{run_dir, last, best, best_epoch, best_fitness, metrics, epochs_done,
    stopped, signal}`` (``stopped``: None, 'signal', 'patience' or 'stop_after').

    ``model`` is a spec ('yolov5s-obb.yaml') or a checkpoint (.pt) whose stored architecture is kept
    (a pruned model stays pruned). ``batch`` is the total over all DDP processes. ``stop_after`` ends
    this invocation after that many epochs (the schedule still spans ``epochs``; ``resume`` continues).
    ``time_limit`` (hours) replaces ``epochs`` by the number that fits, re-estimated after every epoch.
    best.pt is the epoch with the highest OBB mAP50 (VOC07).
    """
    opts = {k: v for k, v in locals().items() if k not in ("after_backward", "extra_loss", "on_epoch_end")}
    info = ddp.dist_info()
    dev = select_device(device, info.local_rank, info.world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ddp.init(info, dev)
    try:
        with StopRequest() as stop:  # from here on SIGINT/SIGTERM stop cleanly at the next step
            return _train(opts, info, dev, stop, after_backward, extra_loss, on_epoch_end)
    finally:
        ddp.cleanup(info)


def _train(
    opts: dict,
    info: ddp.DistInfo,
    dev: torch.device,
    stop: StopRequest,
    after_backward,
    extra_loss,
    on_epoch_end=None,
) -> dict:
    from obbslim.data.dataset import build_dataloader, set_epoch
    from obbslim.data.labels import load_data_yaml, load_split
    from obbslim.engine.loss import OBBLoss, scale_gains
    from obbslim.model import build, check_anchors, ckpt_to_model, read_checkpoint, save

    main = info.main
    log = print if (main and opts["verbose"]) else (lambda *a, **k: None)
    ckpt = None
    if opts["resume"]:  # continue a run with its stored options; only RUNTIME_KEYS may change
        last = find_resume_checkpoint(opts["resume"], opts["project"])
        ckpt = read_checkpoint(last)
        if "train_args" not in ckpt:
            raise ObbslimError(f"{last}: not a training checkpoint (no train_args); use --model to fine-tune")
        if ckpt["epoch"] + 1 >= ckpt["train_args"]["epochs"]:
            raise ObbslimError(
                f"{last}: training already finished ({ckpt['epoch'] + 1} epochs), nothing to resume"
            )
        opts = {**ckpt["train_args"], **{k: opts[k] for k in RUNTIME_KEYS}, "resume": str(last)}
        save_dir = last.parent.parent
        log(f"resuming {save_dir} from epoch {ckpt['epoch'] + 1}")
    else:
        if not opts["data"]:
            raise ObbslimError("a dataset is required: --data DATA.yaml (or --resume RUN)")
        save_dir = increment_path(Path(opts["project"]) / opts["name"], opts["exist_ok"])
    wdir = save_dir / "weights"
    last_pt, best_pt = wdir / "last.pt", wdir / "best.pt"
    if main:
        wdir.mkdir(parents=True, exist_ok=True)
    seed_everything(opts["seed"] + 1 + max(info.rank, 0))
    hyp = load_hyp(ckpt["hyp"] if ckpt else opts["hyp"])  # an older checkpoint may lack newer keys
    epochs, batch, cuda = int(opts["epochs"]), int(opts["batch"]), dev.type == "cuda"
    use_amp = bool(opts["amp"]) and cuda
    if batch % info.world_size:
        raise ObbslimError(f"--batch {batch} must be a multiple of the number of processes {info.world_size}")

    # ---- data: scan once (rank 0 first, so the others read its cache), report bad samples up front
    data = load_data_yaml(opts["data"])
    names = list(data["names"])
    with _rank0_first(info):
        train_samples, report = load_split(data, "train", verbose=False)
        val_samples = []
        if main and data.get("val"):
            val_samples, val_report = load_split(data, "val", verbose=False)
    log(report.summary())
    if val_samples:
        log(val_report.summary())

    # ---- model: from a spec, or a checkpoint whose stored architecture is kept (pruned stays pruned)
    if ckpt is not None:
        net = ckpt_to_model(ckpt, ema=False, source=opts["resume"])
    elif str(opts["model"]).endswith(".pt"):
        net = ckpt_to_model(read_checkpoint(opts["model"]), ema=True, source=opts["model"])
        if net.nc != len(names):
            raise ObbslimError(f"{opts['model']} predicts {net.nc} classes but the dataset has {len(names)}")
    else:
        net = build(opts["model"], len(names), names)
    net.names = names
    gs = int(net.stride.max())
    imgsz = int(math.ceil(opts["imgsz"] / gs) * gs)
    if imgsz != opts["imgsz"]:
        log(f"imgsz {opts['imgsz']} is not a multiple of the stride {gs}: using {imgsz}")
    if ckpt is None and not opts["noautoanchor"]:
        check_anchors(net, _long_short(train_samples, imgsz), hyp["anchor_t"], imgsz, print_fn=log)
    net.to(dev)
    if opts["channels_last"] and cuda:
        net.to(memory_format=torch.channels_last)

    # ---- optimiser, EMA, loss (nominal batch 64: accumulate, and scale the decay accordingly)
    optimizer = build_optimizer(
        net,
        hyp["lr0"],
        hyp["momentum"],
        scaled_weight_decay(hyp["weight_decay"], batch, hyp["nbs"]),
        hyp["optimizer"],
    )
    lf = lr_lambda(epochs, hyp["lrf"], hyp["lr_schedule"])
    ema = ModelEMA(net, hyp["ema_decay"], hyp["ema_tau"]) if main else None
    after_backward = _attach_extra(extra_loss, net, optimizer, hyp, dev, info, after_backward)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best_fitness, best_epoch, elapsed0 = 0, -1.0, -1, 0.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if isinstance(extra_loss, torch.nn.Module) and ckpt.get("extra_state") is not None:
            extra_loss.load_state_dict(ckpt["extra_state"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.ema.load_state_dict(ckpt["ema"])
            ema.updates = int(ckpt.get("ema_updates", 0))
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_fitness, best_epoch = ckpt["epoch"] + 1, ckpt["best_fitness"], ckpt["best_epoch"]
        elapsed0 = float(ckpt.get("train_time", 0.0))
        set_rng_state(ckpt["rng"])
    criterion = OBBLoss(net, scale_gains(hyp, net.detect.nl, len(names), imgsz))
    sparsity = None
    if opts.get("sparsity"):  # network slimming: L1 on the BN scales (stored in train_args: resume keeps it)
        sparsity, after_backward, on_epoch_end = _with_sparsity(
            opts, net, epochs, save_dir, main, after_backward, on_epoch_end
        )
    if opts["sync_bn"] and info.enabled and cuda:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if cuda else None)

    rank_batch = batch // info.world_size
    train_loader = build_dataloader(
        train_samples,
        "train",
        imgsz,
        rank_batch,
        augment=True,
        hyp=hyp,
        workers=opts["workers"],
        shuffle=True,
        seed=opts["seed"],
        rank=info.rank,
        world_size=info.world_size,
        pin_memory=cuda,
    )
    val_loader = None
    if main and val_samples:
        val_loader = build_dataloader(
            val_samples,
            "val",
            imgsz,
            rank_batch * 2,
            augment=False,
            hyp=hyp,
            workers=opts["workers"],
            seed=opts["seed"],
        )
    if main:
        if ckpt is None:
            write_yaml(save_dir / "args.yaml", {**opts, "imgsz": imgsz})
            write_yaml(save_dir / "hyp.yaml", hyp)
            if not opts["noplots"]:
                _plot_labels(train_samples, names, save_dir / "labels.png")
        log(
            f"training {len(train_samples)} images ({len(val_samples)} val) at {imgsz} px on {dev}"
            f"{f' x{info.world_size} (DDP)' if info.enabled else ''}, batch {batch}, "
            f"accumulate {accumulate_steps(batch, hyp['nbs'])}, AMP {use_amp} -> {save_dir}"
        )

    nb = len(train_loader)
    nw = (
        max(round(hyp["warmup_epochs"] * nb), hyp["warmup_min_iters"])
        if hyp["warmup_epochs"] > 0
        else 0
    )
    csv = ResultsCSV(save_dir / "results.csv") if main else None
    if csv is not None and ckpt is not None:
        csv.truncate(start_epoch - 1)
    elif csv is not None and csv.path.exists():  # a fresh run in a reused dir (--exist-ok)
        csv.path.unlink()
        csv = ResultsCSV(csv.path)
    t0 = time.time()
    epoch_times: list[float] = []
    stopped, metrics, bad_steps, epoch = None, {}, 0, start_epoch
    extra_names: list[str] = []

    def checkpoint(path: Path, epochs_done: int, ep_metrics: dict) -> None:
        save(
            de_parallel(net),
            path,
            ema=ema.ema,
            optimizer=optimizer,
            epoch=epochs_done - 1,
            hyp=hyp,
            metrics=ep_metrics,
            ema_updates=ema.updates,
            best_fitness=best_fitness,
            best_epoch=best_epoch,
            train_args=plain({**opts, "epochs": epochs}),
            rng=rng_state(),
            scaler=scaler.state_dict(),
            train_time=elapsed0 + time.time() - t0,
            extra_state=_extra_state(extra_loss),
        )

    while epoch < epochs:
        te = time.time()
        net.train()
        if isinstance(extra_loss, torch.nn.Module):
            extra_loss.train()
        set_epoch(train_loader, epoch)
        mloss, seen, n_ok, pending, last_step = None, 0, 0, False, -1
        if main and opts["verbose"]:
            print(
                ("\n" + "%10s" * 8) % ("Epoch", "GPU_mem", "box", "obj", "cls", "theta", "Instances", "Size")
            )
        bar = tqdm(
            _until_stopped(train_loader, stop),
            total=nb,
            disable=not (main and opts["verbose"]),
            file=sys.stdout,
            bar_format="{l_bar}{bar:10}{r_bar}",
        )
        for i, (imgs, targets, *_) in enumerate(bar):
            ni = i + nb * epoch
            accumulate = set_lr(optimizer, hyp, lf, epoch, ni, nw, batch)
            imgs = imgs.to(dev, non_blocking=True).float() / 255
            if opts["channels_last"] and cuda:
                imgs = imgs.contiguous(memory_format=torch.channels_last)
            targets = targets.to(dev)
            with torch.autocast(dev.type, enabled=use_amp):
                raw = net(imgs)
                loss, items = criterion(raw, targets)
                if extra_loss is not None:
                    eloss, eitems = extra_loss(raw, imgs, targets)
                    loss = loss + eloss
                    extra_names = extra_names or list(eitems)
                    extra = [torch.as_tensor(eitems[k], device=dev, dtype=torch.float32) for k in extra_names]
                    items = torch.cat([items.float(), torch.stack(extra).detach()])
            loss = loss * info.world_size  # DDP averages gradients over ranks
            bad, halt = ddp.all_reduce_sum(
                [float(not torch.isfinite(loss)), float(stop.requested)], info, dev
            )
            if halt:
                stopped = "signal"
                break
            if bad:  # skip the step: the weights stay as they were
                bad_steps += 1
                print(
                    f"WARNING: non-finite loss at epoch {epoch} batch {i} ({bad_steps} in a row): "
                    "step skipped",
                    file=sys.stderr,
                )
                if bad_steps >= MAX_BAD_STEPS:
                    if main:
                        checkpoint(last_pt, epoch, metrics)
                    raise ObbslimError(
                        f"the loss was NaN/inf for {bad_steps} consecutive batches (epoch {epoch}): "
                        f"training stopped, {last_pt} saved. Try a lower lr0, check the labels, "
                        "or train without AMP"
                    )
                continue
            bad_steps = 0
            scaler.scale(loss).backward()
            pending = True
            if i - last_step >= accumulate:  # one optimizer step per `accumulate` batches
                _step(net, optimizer, scaler, ema, hyp, after_backward, epoch + (i + 1) / nb)
                pending, last_step = False, i
            seen, n_ok = seen + imgs.shape[0], n_ok + 1
            mloss = items.float() if mloss is None else mloss + (items.float() - mloss) / n_ok  # running mean
            if main and opts["verbose"]:
                mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if cuda else "-"
                bar.set_description(
                    ("%10s" * 2 + "%10.4g" * 4 + "%10d" * 2)
                    % (f"{epoch}/{epochs - 1}", mem, *mloss.tolist()[:4], targets.shape[0], imgs.shape[-1])
                )
            if main and epoch == 0 and i < 3 and not opts["noplots"]:
                from obbslim.data.show import plot_batch

                plot_batch(imgs, targets, names, save_dir / f"train_batch{i}.jpg")
        bar.close()
        if stop.requested and not info.enabled:  # also when the signal broke the loader's workers
            stopped = "signal"
        if stopped == "signal":  # the epoch in progress does not count
            if main:
                checkpoint(last_pt, epoch, metrics)
                sig = "SIGINT" if stop.signum == 2 else "SIGTERM" if stop.signum == 15 else "a signal"
                log(
                    f"stopped by {sig} during epoch {epoch}: {last_pt} saved, {epoch} epochs complete; "
                    f"continue with: obbslim train --resume {save_dir}"
                )
            break
        if pending:  # no gradient crosses an epoch boundary (keeps resume exact)
            _step(net, optimizer, scaler, ema, hyp, after_backward, epoch + 1.0)

        # ---- end of epoch: count images, fit the time limit, validate, log, checkpoint, maybe stop
        if mloss is None:  # every batch was skipped
            mloss = torch.zeros(4 + len(extra_names))
        sums = ddp.all_reduce_sum([seen, n_ok, *(mloss * n_ok).tolist()], info, dev)  # means over all ranks
        seen_all, mloss = int(sums[0]), torch.tensor(sums[2:]) / max(sums[1], 1)
        if opts["time_limit"]:  # epochs that still fit (rank 0 decides)
            per = np.mean(epoch_times) if epoch_times else time.time() - te
            epochs = epoch + 1 + int(max(opts["time_limit"] * 3600 - (time.time() - t0), 0) // per)
            epochs = int(ddp.broadcast_value(float(epochs), info, dev))
            lf = lr_lambda(epochs, hyp["lrf"], hyp["lr_schedule"])
            if sparsity is not None:
                sparsity.epochs = epochs  # the lambda schedule spans the same estimate as the lr
        chunk_done = bool(opts["stop_after"]) and epoch + 1 - start_epoch >= opts["stop_after"]
        final = epoch + 1 >= epochs or chunk_done
        stop_code = 0.0
        if main:
            do_val = val_loader is not None and (
                final or (not opts["noval"] and (epoch + 1) % max(int(opts["val_every"]), 1) == 0)
            )
            metrics = {}
            if do_val:
                metrics = validate(
                    ema.ema,
                    val_loader,
                    names,
                    criterion=criterion,
                    half=use_amp,
                    verbose=final and opts["verbose"],
                    progress=opts["verbose"],
                )
                metrics.pop("voc07", None)
                metrics.pop("voc12", None)  # per-class arrays: not weights_only-loadable in checkpoints
                if fitness(metrics) >= best_fitness:
                    best_fitness, best_epoch = fitness(metrics), epoch
                log(
                    f"  mAP50 {metrics['mAP50']:.4f} (VOC07) {metrics['mAP50_voc12']:.4f} (VOC12), "
                    f"mAP50-95 {metrics['mAP50_95']:.4f}, "
                    f"P {metrics['precision']:.3f} R {metrics['recall']:.3f}"
                )
            keys = ["box", "obj", "cls", "theta", *extra_names]
            row = {"epoch": epoch, **dict(zip(keys, mloss.tolist())), "lr": optimizer.param_groups[1]["lr"]}
            row.update({k: metrics.get(k, "") for k in METRIC_KEYS})
            if on_epoch_end is not None:
                row.update(on_epoch_end(de_parallel(net), epoch))
            row.update(images=seen_all, time=round(elapsed0 + time.time() - t0, 2))
            csv.append(row)
            checkpoint(last_pt, epoch + 1, metrics)
            if do_val and best_epoch == epoch:
                checkpoint(best_pt, epoch + 1, metrics)
            if do_val and epoch - best_epoch >= opts["patience"] and not final:
                stop_code = 1.0
                log(f"early stop: no improvement in {opts['patience']} epochs (best epoch {best_epoch})")
        stop_code = ddp.broadcast_value(stop_code, info, dev)
        epoch_times.append(time.time() - te)
        epoch += 1
        if stop_code or (chunk_done and epoch < epochs):
            stopped = "patience" if stop_code else "stop_after"
            break

    done = epoch  # epochs complete (an interrupted epoch does not count)
    result = {
        "run_dir": str(save_dir),
        "last": str(last_pt),
        "best": str(best_pt) if best_epoch >= 0 else None,
        "best_epoch": best_epoch,
        "best_fitness": best_fitness,
        "metrics": metrics,
        "epochs_done": done,
        "stopped": stopped,
        "signal": stop.signum,
    }
    if main:
        if not opts["noplots"]:
            plot_results(save_dir / "results.csv")
        hours = (elapsed0 + time.time() - t0) / 3600
        best_txt = (
            f"best mAP50 {best_fitness:.3f} (epoch {best_epoch}) -> {best_pt}"
            if best_epoch >= 0
            else f"no validation, weights -> {last_pt}"
        )
        log(f"{done - start_epoch} epochs completed in {hours:.3f} h. {best_txt}")
    return result


def _step(net, optimizer, scaler, ema, hyp: dict, after_backward, epoch_frac: float) -> None:
    """Unscale, run the after_backward hook, clip, step, zero the gradients, update the EMA."""
    scaler.unscale_(optimizer)
    if after_backward is not None:
        after_backward(de_parallel(net), epoch_frac)
    torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=hyp["clip_grad_norm"])
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(net)


def _with_sparsity(opts: dict, net, epochs: int, save_dir: Path, main: bool, after_backward, on_epoch_end):
    """Chain the sparsity hook and its statistics (gamma_lt_1e-2, lambda, gamma_hist.png) with the caller's
    hooks. Returns the SparsityTraining (its ``epochs`` follows a time limit) and the two hooks."""
    from obbslim.prune.sparsity import SparsityTraining

    sp = SparsityTraining(
        net,
        opts["sparsity"],
        opts.get("sparsity_schedule") or "constant",
        epochs,
        bool(opts.get("sparsity_bias")),
        run_dir=save_dir if main and not opts["noplots"] else None,
        weighting=opts.get("sparsity_weighting") or "none",
    )

    def backward_hook(model, epoch_frac):
        sp.after_backward(model, epoch_frac)
        if after_backward is not None:
            after_backward(model, epoch_frac)

    def epoch_hook(model, epoch):
        cols = sp.on_epoch_end(model, epoch)
        return {**cols, **(on_epoch_end(model, epoch) if on_epoch_end is not None else {})}

    return sp, backward_hook, epoch_hook


def _attach_extra(extra_loss, net, optimizer, hyp: dict, dev, info: ddp.DistInfo, after_backward):
    """Set up a trainable extra loss (an nn.Module, e.g. distillation adapters): device, optimizer group,
    ``bind(model)``; returns the after_backward hook, wrapped to average its gradients over DDP ranks."""
    if not isinstance(extra_loss, torch.nn.Module):
        return after_backward
    extra_loss.to(dev)
    params = [p for p in extra_loss.parameters() if p.requires_grad]
    if params:
        optimizer.add_param_group({"params": params, "weight_decay": 0.0, "initial_lr": hyp["lr0"]})
    if hasattr(extra_loss, "bind"):
        extra_loss.bind(de_parallel(net))
    if not (info.enabled and params):
        return after_backward

    def synced(model, epoch_frac):  # DDP averages only the model's own gradients
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= info.world_size
            i = 0
            for g in grads:
                g.copy_(flat[i : i + g.numel()].view_as(g))
                i += g.numel()
        if after_backward is not None:
            after_backward(model, epoch_frac)

    return synced


def _extra_state(extra_loss) -> dict | None:
    if not isinstance(extra_loss, torch.nn.Module):
        return None
    return {k: v.detach().cpu() for k, v in extra_loss.state_dict().items()}


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
    from obbslim.ops import poly2rbox

    polys = [np.asarray(s.polys, np.float32).reshape(-1, 8) for s in samples]
    scale = [np.full(len(p), imgsz / max(s.shape[:2]), np.float32) for p, s in zip(polys, samples)]
    if not polys or not sum(len(p) for p in polys):
        return np.zeros((0, 2), np.float32)
    rb = poly2rbox(np.concatenate(polys))
    return rb[:, 2:4] * np.concatenate(scale)[:, None]


def _plot_labels(samples: list, names: list[str], path: Path) -> None:
    from obbslim.data.show import plot_labels
    from obbslim.ops import poly2rbox

    polys = np.concatenate(
        [np.asarray(s.polys, np.float32).reshape(-1, 8) for s in samples] or [np.zeros((0, 8))]
    )
    cls = np.concatenate([np.asarray(s.cls).reshape(-1) for s in samples] or [np.zeros(0)])
    plot_labels(poly2rbox(polys) if len(polys) else np.zeros((0, 5)), cls, names, path)
