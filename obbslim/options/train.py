"""Options of the training commands: ``obbslim train`` (:class:`SparseTrainConfig`, the engine's
:class:`TrainConfig` plus network slimming's sparsity) and ``obbslim distill`` (:class:`DistillConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from obbslim.errors import ObbslimError
from obbslim.options.base import Options, option, threads_option, workers_option
from obbslim.options.checks import (
    AUTO,
    COUNT,
    FRACTION,
    IMGSZ,
    at_least,
    auto_or,
    non_negative,
    number_or_auto,
    positive,
)

SPARSITY_SCHEDULES = ("constant", "linear", "cosine")
SPARSITY_WEIGHTINGS = ("none", "flops")
SPARSITY_MODES = ("prox", "subgradient")
KD_FEATURE_TYPES = ("cwd", "mimic")
KD_CLS_KINDS = ("bce", "kl")
KD_OUTPUT_TERMS = ("box", "obj", "cls", "theta")


def named_output_terms(terms) -> tuple[str, ...] | None:
    """The output terms a ``kd_output_terms`` value names, or None for ``auto`` (the command chooses)."""
    return None if list(terms) == [AUTO] else tuple(terms)


@dataclass
class TrainConfig(Options):
    """Every option of the training engine (``obbslim.engine.train.train``)."""

    positional = ("data", "model", "epochs")

    data: str | Path | dict | None = option(
        None, "dataset YAML (path, train, val, names); not needed with --resume"
    )
    model: str | Path = option(
        "yolov5s-obb.yaml",
        "model spec (yolov5{n,s,m,l,x}-obb.yaml or a YAML path) or a checkpoint .pt whose architecture is "
        "kept (e.g. a pruned model)",
    )
    pretrained: str | Path | None = option(
        None,
        "initialise every matching tensor from a YOLOv5 checkpoint (e.g. COCO yolov5s.pt), a state dict "
        "or an obbslim checkpoint (other classes or widths: the matching tensors only; with a checkpoint as "
        "--model, its architecture with a head for the data's classes)",
        type=str,
        metavar="PATH",
    )
    epochs: int = option(100, "training epochs", check=COUNT)
    imgsz: int = option(640, "training image size (pixels)", check=IMGSZ)
    batch: int = option(16, "total batch size over all processes", check=COUNT)
    device: str = option("", "cpu, 0, or 0,1 (default: GPU 0 if available)", runtime=True)
    workers: int | None = workers_option("dataloader workers per process", runtime=True)
    threads: int | None = threads_option()
    cache_images: bool = option(
        False,
        "decode and resize the images once into RAM (about images x imgsz^2 x 3 bytes): no decoding in later "
        "epochs; the batches are the same",
        runtime=True,
    )
    hyp: str | Path | dict | None = option(None, "hyperparameter YAML (only the keys that change)", type=str)
    project: str | Path = option("runs/train", "where run folders go")
    name: str = option("exp", "run folder name")
    exist_ok: bool = option(False, "reuse PROJECT/NAME instead of NAME2, ...")
    resume: str | Path | bool | None = option(
        None,
        "continue a run: its directory or last.pt (no value: the newest run in --project)",
        nargs="?",
        const=True,
        metavar="RUN",
    )
    seed: int = option(0, "random seed", check=at_least(0))
    val_every: int = option(1, "validate every k epochs (and at the end)", check=COUNT)
    patience: int = option(100, "early stop after this many epochs without gain", check=at_least(0))
    noval: bool = option(False, "validate only after the final epoch")
    noautoanchor: bool = option(False, "keep the model's anchors")
    noplots: bool = option(False, "no labels.png, train_batch*.jpg, results.png")
    amp: bool = option(True, "disable mixed precision on CUDA")
    bf16: bool = option(
        False, "CPU: bfloat16 autocast where the CPU has bf16 instructions (about 1.5x faster steps)"
    )
    channels_last: bool = option(False, "channels_last memory format on CUDA (the CPU always uses it)")
    sync_bn: bool = option(False, "SyncBatchNorm across DDP processes (CUDA)")
    stop_after: int | None = option(
        None,
        "stop after N epochs of this run (the schedule keeps --epochs; --resume continues)",
        type=int,
        metavar="N",
        runtime=True,
        check=COUNT,
    )
    time_limit: float | None = option(
        None,
        "train for this many hours (overrides --epochs, re-estimated every epoch)",
        flag="--time",
        type=float,
        metavar="HOURS",
        check=positive(),
    )
    verbose: bool = option(True, "print progress and summaries", cli=False, runtime=True)


@dataclass
class SparseTrainConfig(TrainConfig):
    """``obbslim train``: the engine's options and network slimming's L1 on the BN scales."""

    sparsity: float = option(
        0.0,
        "network slimming: L1 on the prunable BN scales; with --sparsity-mode prox (default) a channel whose "
        "per-image loss gradient on its scale stays below LAMBDA goes to 0 (e.g. 1e-3)",
        metavar="LAMBDA",
        check=non_negative(),
    )
    sparsity_mode: str = option(
        "prox",
        "prox: soft-threshold after each step in the optimizer's metric (the same LAMBDA for any length, "
        "optimizer, lr or batch); subgradient: LAMBDA * sign(gamma) added to every step's gradient (the "
        "network slimming paper; its LAMBDA depends on all of those)",
        choices=SPARSITY_MODES,
    )
    sparsity_schedule: str = option(
        "constant",
        "decay of LAMBDA over training (linear/cosine end at 0.1 LAMBDA)",
        choices=SPARSITY_SCHEDULES,
    )
    sparsity_bias: bool = option(False, "also L1 on the BN shifts (beta)")
    sparsity_weighting: str = option(
        "none",
        "flops: scale each layer's LAMBDA by the FLOPs one of its channels costs (mean 1), so that pruning a "
        "channel ratio removes more FLOPs",
        choices=SPARSITY_WEIGHTINGS,
    )

    @classmethod
    def from_record(cls, record: dict) -> SparseTrainConfig:
        """Runs recorded before ``sparsity_mode`` existed used the subgradient: they resume with it."""
        if record.get("sparsity") and "sparsity_mode" not in record:
            record = {**record, "sparsity_mode": "subgradient"}
        return super().from_record(record)


@dataclass
class DistillConfig(SparseTrainConfig):
    """``obbslim distill``: every train option (``student`` replaces ``model``) and the distillation's."""

    positional = ("student", "teacher", "data", "epochs")

    project: str | Path = option("runs/distill", "where run folders go")
    # the student is fine-tuned as it is: no transfer from other weights (distill() refuses a value)
    pretrained: str | Path | None = option(None, "not a distill option", cli=False, record=False)
    student: str | Path | None = option(
        None, "student checkpoint .pt (the pruned model); not needed with --resume"
    )
    teacher: str | Path | None = option(
        None, "teacher checkpoint .pt (same strides, nc, na, nbins; any widths)"
    )
    kd_output: float | str = option(
        AUTO,
        "weight of the output distillation, 0 off; auto (default): 1, on every output term for a student "
        "that starts below half of its teacher's val mAP50, else on the angle bins alone (README, "
        "Distillation)",
        type=number_or_auto,
        check=auto_or(non_negative()),
    )
    kd_output_terms: tuple[str, ...] = option(
        (AUTO,),
        "the output terms distilled: some of box obj cls theta; auto (default): --kd-output auto's pick, "
        "else all four",
        nargs="+",
        choices=(AUTO, *KD_OUTPUT_TERMS),
    )
    kd_feature: float = option(1.0, "weight of the feature distillation (0 off)", check=non_negative())
    kd_temp: float = option(1.0, "output temperature T (classes, angle bins)", check=positive())
    kd_feature_type: str = option(
        "cwd",
        "cwd: channel-wise distillation; mimic: MSE on the cells near ground-truth objects",
        choices=KD_FEATURE_TYPES,
    )
    kd_feature_temp: float = option(1.0, "CWD temperature tau", check=positive())
    kd_cls: str = option(
        "bce",
        "class term: per-class soft-target BCE (minus the teacher entropy) or softmax KL",
        choices=KD_CLS_KINDS,
    )
    kd_box_thresh: float = option(0.5, "box term only where the teacher's objectness exceeds this",
                                  check=FRACTION)  # fmt: skip
    kd_gains: dict | None = option(
        None, "per-term gains over the defaults (box, obj, cls, theta, feat)", cli=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.kd_output_terms, list):  # from the parser or a record: one spelling
            self.kd_output_terms = tuple(self.kd_output_terms)
        super().__post_init__()

    def check_together(self) -> None:
        super().check_together()
        terms = self.kd_output_terms
        ok = not isinstance(terms, str) and bool(terms) and (
            named_output_terms(terms) is None or all(t in KD_OUTPUT_TERMS for t in terms))
        if not ok:
            raise ObbslimError(
                f"--kd-output-terms must be auto or some of {' '.join(KD_OUTPUT_TERMS)}, got {terms!r}")

    @classmethod
    def from_record(cls, record: dict) -> DistillConfig:
        """Also reads the first release's layout, where the distillation options sat in
        ``extra_args['distill']``."""
        legacy = (record.get("extra_args") or {}).get("distill") or {}
        return super().from_record({**record, **legacy})
