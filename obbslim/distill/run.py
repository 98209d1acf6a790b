"""`distill(...)`: fine-tune a pruned student with knowledge distillation from its unpruned teacher.

It is the training engine with a :class:`~obbslim.distill.distiller.Distiller` among its callbacks:
the loss is the usual detection loss plus the distillation terms, and everything ``train`` does (EMA,
AMP, DDP, resume, validation, results.csv with the kd_* columns, best.pt/last.pt that load with
``obbslim.model.load``, the sparsity options) applies. The distillation options are stored with the
run's options, so ``distill(resume=RUN)`` rebuilds the same Distiller and restores its adapters.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from obbslim.data.labels import load_data_yaml
from obbslim.distill.distiller import Distiller, check_pair
from obbslim.engine.callbacks import Callback
from obbslim.engine.train import train
from obbslim.engine.trainer_utils import find_resume_checkpoint
from obbslim.errors import ObbslimError
from obbslim.eval.val import val
from obbslim.model import load, read_checkpoint
from obbslim.options import DistillConfig
from obbslim.options.checks import AUTO
from obbslim.options.train import KD_OUTPUT_TERMS as OUTPUT_TERMS
from obbslim.options.train import named_output_terms
from obbslim.prune.sparsity import SparsityCallback
from obbslim.utils.device import select_device


def distill(*args: Any, callbacks: Sequence[Callback] = (), **options: Any) -> dict[str, Any]:
    """``distill(student, teacher, data, epochs, **options)`` with the options of
    :class:`~obbslim.options.DistillConfig`: fine-tune checkpoint ``student`` (e.g. a pruned model) on
    ``data`` with checkpoint ``teacher``.

    ``kd_output`` / ``kd_feature`` weight the output and feature distillation (0 turns one off; both 0 is
    plain fine-tuning; ``kd_output="auto"``, the default, is :func:`auto_output` of both models' val mAP50,
    measured first), ``kd_output_terms`` the output terms distilled (auto's pick by default), ``kd_temp``
    is the output temperature (classes and angle bins), ``kd_feature_type`` ``cwd`` (channel-wise
    distillation, temperature ``kd_feature_temp``) or ``mimic`` (MSE on the cells near ground-truth
    objects), ``kd_cls`` ``bce`` (per-class soft-target BCE minus the teacher's entropy) or ``kl``
    (softmax KL over the classes). The other options are ``train``'s.
    ``resume`` continues a distill run (its directory or last.pt) with its stored options. Returns
    ``train``'s result dict.
    """
    cfg = DistillConfig.of(*args, **options)
    if cfg.pretrained:  # the engine would swap the student's head and weights
        raise ObbslimError("distill fine-tunes the student as it is: pretrained weights are train's option")
    if cfg.resume:
        last = find_resume_checkpoint(cfg.resume, cfg.project)
        ckpt = read_checkpoint(last)
        kd = DistillConfig.from_record(ckpt.get("train_args") or {})
        if not kd.teacher:
            raise ObbslimError(f"{last}: not a distillation run (no distill options); use train --resume")
        student_arch, student_name, cfg = ckpt["arch"], str(last), cfg.replace(resume=str(last))
    else:
        if not cfg.student or not cfg.teacher:
            raise ObbslimError("distill needs --student PRUNED.pt and --teacher TEACHER.pt (or --resume RUN)")
        for role, path in (("student", cfg.student), ("teacher", cfg.teacher)):
            if not str(path).endswith(".pt"):
                raise ObbslimError(f"--{role} {path}: expected a checkpoint .pt")
        student_arch, student_name = read_checkpoint(cfg.student)["arch"], str(cfg.student)
        cfg = kd = resolve_output_weight(cfg.replace(model=str(cfg.student), student=str(cfg.student),
                                                     teacher=str(Path(cfg.teacher).resolve())))  # fmt: skip
    teacher = load(kd.teacher, ema=True)
    check_pair(student_arch, teacher.get_arch(), student_name, kd.teacher)
    distiller = Distiller.from_config(teacher, student_arch, kd, student_name)
    try:
        return train(cfg, callbacks=[distiller, SparsityCallback(), *callbacks])
    finally:
        distiller.unbind()


#: below this fraction of its teacher's mAP50 the student learns from every output term of the teacher
AUTO_KEEP = 0.5
#: what a student at or above AUTO_KEEP learns from the teacher's outputs: the angle bins' distribution
NEAR_TERMS = ("theta",)


def auto_output(student_map50: float, teacher_map50: float) -> dict[str, Any]:
    """``kd_output="auto"``: weight 1 on every output term (box, obj, cls, theta) for a student below
    ``AUTO_KEEP`` of its teacher's mAP50, else on the angle term alone; the features are distilled in both
    cases (``kd_feature``). Returns the two options, ``kd_output`` and ``kd_output_terms``.

    Why: a student far below its teacher (pruned without sparsity training: bench_distill) has everything
    to learn from the teacher's outputs (they beat fine-tuning on all 7 teacher-seed pairs measured). A
    student that starts near it (slimmed after sparsity training: the demo's keep 76-87%) outgrows a
    30-epoch teacher, and copying its boxes, objectness and classes held it back; the teacher's angle
    distribution (the CSL bins: which other angles are plausible) still helps: it beat fine-tuning on the
    demo's three seeds, where the features alone or every output term did not (README, Distillation)."""
    far = student_map50 < AUTO_KEEP * teacher_map50
    return {"kd_output": 1.0, "kd_output_terms": OUTPUT_TERMS if far else NEAR_TERMS}


def resolve_output_weight(cfg: DistillConfig) -> DistillConfig:
    """``cfg`` with ``kd_output="auto"`` and ``kd_output_terms=("auto",)`` replaced by what they stand for:
    auto's pick (:func:`auto_output`) from the val mAP50 of the student and of the teacher, terms the user
    named kept; a number given for ``kd_output`` distils every term unless terms are named. The run's stored
    options (and a resumed run) hold what it used."""
    named = named_output_terms(cfg.kd_output_terms)
    if cfg.kd_output != AUTO:
        return cfg.replace(kd_output_terms=named or OUTPUT_TERMS)
    split = "val" if load_data_yaml(cfg.data).get("val") else "train"  # data without a val split: train
    maps = {"student": _val_map50(cfg.student, cfg, split), "teacher": _val_map50(cfg.teacher, cfg, split)}
    pick = auto_output(maps["student"], maps["teacher"])
    pick["kd_output_terms"] = named or pick["kd_output_terms"]
    if cfg.verbose:
        keep = maps["student"] / maps["teacher"] if maps["teacher"] > 0 else 0.0
        terms = " ".join(pick["kd_output_terms"])
        print(f"distill: --kd-output auto -> {pick['kd_output']:g} on {terms} and "
              f"the features: the student's val mAP50 {maps['student']:.4f} is {keep:.0%} of the teacher's "
              f"{maps['teacher']:.4f} (every output term below {AUTO_KEEP:.0%}, the angle bins alone above)")
    return cfg.replace(**pick)


def _val_map50(weights: str | Path, cfg: DistillConfig, split: str) -> float:
    """mAP50 of a checkpoint on a split of the run's data; the run folder val writes is thrown away."""
    rank, world = int(os.environ.get("LOCAL_RANK", -1)), int(os.environ.get("WORLD_SIZE", 1))
    device = str(select_device(cfg.device, rank, world))  # under torchrun, this process's own GPU
    with tempfile.TemporaryDirectory(prefix="obbslim_distill_val_") as tmp:
        r = val(weights, cfg.data, split=split, imgsz=cfg.imgsz, batch=cfg.batch, device=device,
                workers=cfg.workers, threads=cfg.threads, plots=False, verbose=False, progress=False,
                project=tmp)  # fmt: skip
    return float(r["mAP50"])
