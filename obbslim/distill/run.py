"""`distill(...)`: fine-tune a pruned student with knowledge distillation from its unpruned teacher.

It is the training engine with a :class:`~obbslim.distill.distiller.Distiller` among its callbacks:
the loss is the usual detection loss plus the distillation terms, and everything ``train`` does (EMA,
AMP, DDP, resume, validation, results.csv with the kd_* columns, best.pt/last.pt that load with
``obbslim.model.load``, the sparsity options) applies. The distillation options are stored with the
run's options, so ``distill(resume=RUN)`` rebuilds the same Distiller and restores its adapters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from obbslim.distill.distiller import Distiller, check_pair
from obbslim.engine.callbacks import Callback
from obbslim.engine.train import train
from obbslim.engine.trainer_utils import find_resume_checkpoint
from obbslim.errors import ObbslimError
from obbslim.model import load, read_checkpoint
from obbslim.options import DistillConfig
from obbslim.prune.sparsity import SparsityCallback


def distill(*args: Any, callbacks: Sequence[Callback] = (), **options: Any) -> dict[str, Any]:
    """``distill(student, teacher, data, epochs, **options)`` with the options of
    :class:`~obbslim.options.DistillConfig`: fine-tune checkpoint ``student`` (e.g. a pruned model) on
    ``data`` with checkpoint ``teacher``.

    ``kd_output`` / ``kd_feature`` weight the output and feature distillation (0 turns one off; both 0 is
    plain fine-tuning), ``kd_temp`` is the output temperature (classes and angle bins), ``kd_feature_type``
    ``cwd`` (channel-wise distillation, temperature ``kd_feature_temp``) or ``mimic`` (MSE on the cells
    near ground-truth objects), ``kd_cls`` ``bce`` (per-class soft-target BCE minus the teacher's entropy)
    or ``kl`` (softmax KL over the classes). The other options are ``train``'s. ``resume`` continues a
    distill run (its directory or last.pt) with its stored options. Returns ``train``'s result dict.
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
        cfg = kd = cfg.replace(model=str(cfg.student), student=str(cfg.student),
                               teacher=str(Path(cfg.teacher).resolve()))  # fmt: skip
    teacher = load(kd.teacher, ema=True)
    check_pair(student_arch, teacher.get_arch(), student_name, kd.teacher)
    distiller = Distiller.from_config(teacher, student_arch, kd, student_name)
    try:
        return train(cfg, callbacks=[distiller, SparsityCallback(), *callbacks])
    finally:
        distiller.unbind()
