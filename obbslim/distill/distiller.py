"""The Distiller: a frozen teacher, 1x1 adapters and feature hooks; a trainable training callback.

It is an ``nn.Module`` whose only parameters are the adapters (student neck widths -> teacher widths),
so the training engine optimises them with the student and saves them (``extra_state``) for --resume.
The teacher is held outside the module tree: it never appears in ``parameters()`` or ``state_dict()``
(the optimizer, the EMA and the checkpoints never see it), yet ``.to(device)`` moves it, and
``.train()`` leaves it in eval mode (its BatchNorm statistics never change). Its forward runs under
``torch.no_grad``, with each BatchNorm folded into its conv: the same function, one pass less per layer.

Features are the Detect inputs (P3/P4/P5 neck outputs), captured by forward hooks on both Detect
modules; its ``before_train`` hook calls :meth:`Distiller.bind` with the student (after the engine has
made its EMA copy, so the hooks stay off the EMA).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from obbslim.distill.losses import CLS_KINDS, cwd_loss, mimic_loss, object_masks, output_losses
from obbslim.engine.callbacks import Callback
from obbslim.engine.loss import OBBLoss
from obbslim.errors import ObbslimError
from obbslim.model import OBBModel
from obbslim.options import DistillConfig
from obbslim.options.train import KD_FEATURE_TYPES as FEATURE_TYPES
from obbslim.options.train import KD_OUTPUT_TERMS as OUTPUT_TERMS
from obbslim.options.train import named_output_terms
from obbslim.utils.device import de_parallel

TERMS = ("kd_box", "kd_obj", "kd_cls", "kd_theta", "kd_feat")
# Gains that put each term on the scale of the detection term it mirrors (hyp.default.yaml); the
# angle KL is a sum over 180 bins while the detection theta BCE is a mean, hence its smaller gain.
DEFAULT_GAINS = {"box": 0.05, "obj": 1.0, "cls": 0.5, "theta": 0.05, "feat": 0.1}


def head_signature(arch: dict) -> dict:
    """What teacher and student must share: strides, classes, anchors per level and angle bins."""
    return {
        "strides": [float(s) for s in arch["strides"]],
        "nc": int(arch["nc"]),
        "na": len(arch["anchors"][0]),
        "nbins": int(arch.get("nbins", 180)),
    }


def check_pair(student_arch: dict, teacher_arch: dict, student_name: str, teacher_name: str) -> None:
    """ObbslimError naming both files unless the heads are compatible (widths may differ)."""
    s, t = head_signature(student_arch), head_signature(teacher_arch)
    bad = [f"{k} {t[k]} (teacher) vs {s[k]} (student)" for k in s if s[k] != t[k]]
    if bad:
        raise ObbslimError(
            f"teacher {teacher_name} and student {student_name} cannot be distilled: "
            + "; ".join(bad)
            + " (they must share strides, nc, na and nbins)"
        )


def _adapter(c_in: int, c_out: int) -> nn.Conv2d:
    """1x1 conv student -> teacher width; the identity when the widths agree (an unpruned level)."""
    conv = nn.Conv2d(c_in, c_out, 1)
    if c_in == c_out:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(c_out).view(c_out, c_out, 1, 1))
            conv.bias.zero_()
    return conv


class Distiller(Callback, nn.Module):
    """``extra_loss(raw, imgs, targets) -> (loss, {kd_box, kd_obj, kd_cls, kd_theta, kd_feat})``.

    ``loss = batch * (output_weight * sum(gain_k * output term k) + feature_weight * gain_feat * feat)``,
    on the scale of train()'s YOLOv5 detection loss, k over ``output_terms`` (the others stay 0); the
    logged items are the gain-weighted terms without the batch factor (like box/obj/cls/theta).
    ``teacher`` is an OBBModel (frozen here); ``student_ch`` the student's Detect input widths.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student_ch: Sequence[int],
        output_weight: float = 0.0,
        feature_weight: float = DistillConfig.kd_feature,
        temp: float = DistillConfig.kd_temp,
        feature_type: str = DistillConfig.kd_feature_type,
        feature_temp: float = DistillConfig.kd_feature_temp,
        cls_kind: str = DistillConfig.kd_cls,
        box_thresh: float = DistillConfig.kd_box_thresh,
        gains: dict | None = None,
        output_terms: Sequence[str] = OUTPUT_TERMS,
        teacher_name: str = "teacher",
        student_name: str = "student",
    ):
        super().__init__()
        if feature_type not in FEATURE_TYPES:
            raise ObbslimError(f"--kd-feature-type must be one of {FEATURE_TYPES}, got {feature_type!r}")
        if cls_kind not in CLS_KINDS:
            raise ObbslimError(f"--kd-cls must be one of {CLS_KINDS}, got {cls_kind!r}")
        if temp <= 0 or feature_temp <= 0:
            raise ObbslimError(f"distillation temperatures must be > 0, got {temp} and {feature_temp}")
        teacher.eval()
        if isinstance(teacher, OBBModel):
            teacher.fuse()  # frozen and in eval mode: BN is a fixed affine map, folded once
        for p in teacher.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: no params/state_dict/train()
        t_ch = [int(m.weight.shape[1]) for m in teacher.detect.m]
        if len(student_ch) != len(t_ch):
            raise ObbslimError(
                f"teacher {teacher_name} has {len(t_ch)} levels, student {student_name} {len(student_ch)}"
            )
        with torch.random.fork_rng(devices=[]):  # the same initial adapters in every run (exact resume)
            torch.manual_seed(0)
            self.adapters = nn.ModuleList(_adapter(int(s), t) for s, t in zip(student_ch, t_ch))
        self.output_weight, self.feature_weight = float(output_weight), float(feature_weight)
        self.temp, self.feature_temp, self.feature_type = float(temp), float(feature_temp), feature_type
        self.cls_kind, self.box_thresh = cls_kind, float(box_thresh)
        self.gains = {**DEFAULT_GAINS, **(gains or {})}
        # "auto" is what a run recorded before the option existed holds: every term, as it was trained
        self.output_terms = named_output_terms(output_terms) or OUTPUT_TERMS
        if not set(self.output_terms) <= set(OUTPUT_TERMS):
            raise ObbslimError(f"output terms must be some of {OUTPUT_TERMS}, got {tuple(output_terms)}")
        self.teacher_name, self.student_name = str(teacher_name), str(student_name)
        self._assign = OBBLoss(teacher)  # the YOLOv5 cell assignment, for the mimic mask
        self._t_feats: list | None = None
        self._s_feats: list | None = None
        self._s_handle = None
        self._s_detect: list = []
        teacher.detect.register_forward_hook(self._keep_teacher)

    name = "distill"  # recorded in the checkpoints: a resumed run needs the Distiller again

    @classmethod
    def from_config(
        cls, teacher: nn.Module, student_arch: dict, cfg: DistillConfig, student_name: str
    ) -> Distiller:
        """The Distiller of a distill run's options, for a student of record ``student_arch``."""
        return cls(
            teacher, student_ch=student_arch["layers"][-1]["ch"], output_weight=cfg.kd_output,
            feature_weight=cfg.kd_feature, temp=cfg.kd_temp, feature_type=cfg.kd_feature_type,
            feature_temp=cfg.kd_feature_temp, cls_kind=cfg.kd_cls, box_thresh=cfg.kd_box_thresh,
            gains=cfg.kd_gains or None, output_terms=cfg.kd_output_terms, teacher_name=cfg.teacher,
            student_name=student_name,
        )  # fmt: skip

    # -- the training callback
    def before_train(self, state) -> None:
        self.bind(de_parallel(state.model))

    def extra_loss(self, raw: list[torch.Tensor], imgs: torch.Tensor, targets: torch.Tensor):
        return self(raw, imgs, targets)

    # -- the teacher stays out of the module tree, frozen, but follows the device
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def _keep_teacher(self, module, inputs, output) -> None:
        self._t_feats = list(inputs[0])

    def _keep_student(self, module, inputs, output) -> None:
        self._s_feats = list(inputs[0])

    def bind(self, student: nn.Module) -> None:
        """Hook the student's Detect inputs (call once the student's EMA copy exists: hooks deep-copy)."""
        if isinstance(student, OBBModel) and isinstance(self.teacher, OBBModel):
            check_pair(student.get_arch(), self.teacher.get_arch(), self.student_name, self.teacher_name)
        s_ch = [int(m.weight.shape[1]) for m in student.detect.m]
        a_ch = [int(a.weight.shape[1]) for a in self.adapters]
        if s_ch != a_ch:
            raise ObbslimError(f"student {self.student_name} has neck widths {s_ch}, adapters expect {a_ch}")
        if self._s_handle is not None:
            self._s_handle.remove()
        self._s_handle = student.detect.register_forward_hook(self._keep_student)
        self._s_detect = [student.detect]  # a list: not a submodule (its anchors, for the box term)

    def unbind(self) -> None:
        if self._s_handle is not None:
            self._s_handle.remove()
            self._s_handle = None
        self._s_feats = None
        self._s_detect = []

    @torch.no_grad()
    def teacher_forward(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's raw outputs (eval mode, no gradients); its neck features land in _t_feats."""
        out = self.teacher(imgs)
        return list(out[1] if isinstance(out, tuple) else out)

    def forward(self, raw: list[torch.Tensor], imgs: torch.Tensor, targets: torch.Tensor):
        t_raw = self.teacher_forward(imgs)
        det = self.teacher.detect
        zero = raw[0].new_zeros((), dtype=torch.float32)
        terms = dict.fromkeys(TERMS, zero)
        if self.output_weight:
            t_anchors = _grid_anchors(det)
            s_anchors = _grid_anchors(self._s_detect[0]) if self._s_detect else t_anchors
            out = output_losses(
                raw, t_raw, det.nc, s_anchors, t_anchors, self.temp, self.cls_kind, self.box_thresh,
                terms=self.output_terms,
            )
            for k in self.output_terms:
                terms[f"kd_{k}"] = out[k] * self.gains[k] * self.output_weight
        if self.feature_weight:
            if self._s_feats is None or self._t_feats is None:
                raise ObbslimError("Distiller: no student features captured; call bind(student) first")
            s_feats = [a(f) for a, f in zip(self.adapters, self._s_feats)]
            t_feats = self._t_feats
            if self.feature_type == "cwd":
                feat = sum(cwd_loss(s, t, self.feature_temp) for s, t in zip(s_feats, t_feats)) / len(t_feats)
            else:
                masks = object_masks(self._assign, t_raw, targets)
                feat = sum(mimic_loss(s, t, m) for s, t, m in zip(s_feats, t_feats, masks)) / len(t_feats)
            terms["kd_feat"] = feat * self.gains["feat"] * self.feature_weight
        self._s_feats = self._t_feats = None  # do not keep the graph alive past this step
        loss = sum(terms.values()) * raw[0].shape[0]
        return loss, {k: v.detach() for k, v in terms.items()}


def _grid_anchors(det: nn.Module) -> torch.Tensor:
    """A Detect head's anchors in grid units of each level, [nl, na, 2]."""
    return det.anchors.float() / det.stride.float().view(-1, 1, 1).to(det.anchors.device)
