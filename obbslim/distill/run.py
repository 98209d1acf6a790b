"""`distill(...)`: fine-tune a pruned student with knowledge distillation from its unpruned teacher.

It is train() with a :class:`~obbslim.distill.distiller.Distiller` as ``extra_loss``: the loss is the
usual detection loss plus the distillation terms, and everything train() does (EMA, AMP, DDP, resume,
validation, results.csv with the kd_* columns, best.pt/last.pt that load with ``obbslim.model.load``)
applies. The teacher path and the kd options are stored with the run's arguments, so
``distill(resume=RUN)`` rebuilds the same Distiller and restores its adapters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from obbslim.errors import ObbslimError


def distill(
    student: str | Path | None = None,
    teacher: str | Path | None = None,
    data: str | Path | dict | None = None,
    epochs: int = 100,
    *,
    kd_output: float = 1.0,
    kd_feature: float = 1.0,
    kd_temp: float = 1.0,
    kd_feature_type: str = "cwd",
    kd_feature_temp: float = 1.0,
    kd_cls: str = "bce",
    kd_box_thresh: float = 0.5,
    kd_gains: dict | None = None,
    resume: str | Path | bool | None = None,
    project: str | Path = "runs/distill",
    **train_options: Any,
) -> dict[str, Any]:
    """Fine-tune checkpoint ``student`` (e.g. a pruned model) on ``data`` with teacher checkpoint ``teacher``.

    ``kd_output`` / ``kd_feature`` weight the output and feature distillation (0 turns one off; both 0 is
    plain fine-tuning), ``kd_temp`` is the output temperature (classes and angle bins), ``kd_feature_type``
    ``cwd`` (channel-wise distillation, temperature ``kd_feature_temp``) or ``mimic`` (MSE on the cells
    near ground-truth objects), ``kd_cls`` ``bce`` (per-class soft-target BCE minus the teacher's entropy)
    or ``kl`` (softmax KL over the classes). ``train_options`` are train()'s (imgsz, batch, hyp, device,
    ...). ``resume`` continues a distill run (its directory or last.pt) with its stored options.
    Returns train()'s result dict.
    """
    from obbslim.distill.distiller import Distiller, check_pair
    from obbslim.engine.train import RUNTIME_KEYS, train
    from obbslim.engine.trainer_utils import find_resume_checkpoint
    from obbslim.model import load, read_checkpoint

    if resume:
        last = find_resume_checkpoint(resume, project)
        ckpt = read_checkpoint(last)
        cfg = ((ckpt.get("train_args") or {}).get("extra_args") or {}).get("distill")
        if not cfg:
            raise ObbslimError(f"{last}: not a distillation run (no distill options); use train --resume")
        student_arch, student_name = ckpt["arch"], str(last)
        runtime = {k: train_options[k] for k in RUNTIME_KEYS if k in train_options}
    else:
        if not student or not teacher:
            raise ObbslimError("distill needs --student PRUNED.pt and --teacher TEACHER.pt (or --resume RUN)")
        for role, path in (("student", student), ("teacher", teacher)):
            if not str(path).endswith(".pt"):
                raise ObbslimError(f"--{role} {path}: expected a checkpoint .pt")
        student_arch, student_name = read_checkpoint(student)["arch"], str(student)
        cfg = {
            "teacher": str(Path(teacher).resolve()),
            "student": str(student),
            "kd_output": float(kd_output),
            "kd_feature": float(kd_feature),
            "kd_temp": float(kd_temp),
            "kd_feature_type": str(kd_feature_type),
            "kd_feature_temp": float(kd_feature_temp),
            "kd_cls": str(kd_cls),
            "kd_box_thresh": float(kd_box_thresh),
            "kd_gains": dict(kd_gains or {}),
        }
    teacher_model = load(cfg["teacher"], ema=True)
    check_pair(student_arch, teacher_model.get_arch(), student_name, cfg["teacher"])
    distiller = Distiller(
        teacher_model,
        student_ch=student_arch["layers"][-1]["ch"],
        output_weight=cfg["kd_output"],
        feature_weight=cfg["kd_feature"],
        temp=cfg["kd_temp"],
        feature_type=cfg["kd_feature_type"],
        feature_temp=cfg["kd_feature_temp"],
        cls_kind=cfg["kd_cls"],
        box_thresh=cfg["kd_box_thresh"],
        gains=cfg.get("kd_gains") or None,
        teacher_name=cfg["teacher"],
        student_name=student_name,
    )
    try:
        if resume:
            return train(resume=str(last), project=project, extra_loss=distiller, **runtime)
        return train(
            data=data,
            model=str(student),
            epochs=epochs,
            project=project,
            extra_loss=distiller,
            extra_args={"distill": cfg},
            **train_options,
        )
    finally:
        distiller.unbind()
