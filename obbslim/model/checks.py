"""Checks of a checkpoint read from a stranger's file, before anything is built from it.

``torch.load(weights_only=True)`` only guarantees plain data. Every field is then checked for type,
range and consistency (names vs ``nc``, the record's sizes, the weights' shapes against the record),
so a hostile or damaged file ends in one line naming the field instead of a traceback, a huge
allocation or class names that write outside an output folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from obbslim.data.classes import class_index
from obbslim.errors import InputError, ObbslimError
from obbslim.utils.names import MAX_CLASSES, check_names

CKPT_VERSION = 1
MAX_LAYERS = 1000
MAX_STRIDE = 1024
MAX_WIDTH = 1_000_000  # channels of one layer
Where = Path | str | None


def bad_field(where: Where, field: str, why: str) -> ObbslimError:
    prefix = f"{where}: " if where is not None else ""
    return ObbslimError(f"{prefix}invalid checkpoint field '{field}': {why}"[:400])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_in(d: dict, key: str, lo: int, hi: int, where: Where, field: str) -> None:
    v = d.get(key)
    if not _is_int(v) or not lo <= v <= hi:
        raise bad_field(where, field, f"expected an integer in [{lo}, {hi}], got {v!r}")


def _check_anchors(anchors: Any, nl: int, where: Where) -> None:
    def pair(a: Any) -> bool:
        return isinstance(a, list) and len(a) == 2 and all(_is_num(v) and 0 < v <= 1e5 for v in a)

    ok = isinstance(anchors, list) and len(anchors) == nl and all(
        isinstance(lvl, list) and 1 <= len(lvl) <= 16 and len(lvl) == len(anchors[0]) and all(map(pair, lvl))
        for lvl in anchors
    )  # fmt: skip
    if not ok:
        raise bad_field(where, "arch.anchors", "expected [level][anchor][long, short], positive pixel sizes, "
                        "one level per stride")  # fmt: skip


def _check_layer(r: Any, i: int, where: Where) -> None:
    f = f"arch.layers[{i}]"
    if not isinstance(r, dict) or not isinstance(r.get("type"), str):
        raise bad_field(where, f, "expected a dict with a 'type'")
    for k, v in r.items():  # widths, kernel sizes, strides, padding: plain bounded integers
        if k in ("type", "mode", "scale", "shortcut", "from", "m", "ch"):
            continue
        if not _is_int(v) or not 0 <= v <= MAX_WIDTH:
            raise bad_field(where, f"{f}.{k}", f"expected an integer in [0, {MAX_WIDTH}], got {v!r}")
    for k in ("k", "s"):
        if k in r:
            _int_in(r, k, 1, 31, where, f"{f}.{k}")
    nested = [r["ch"]] if "ch" in r else []
    nested += [r["m"]] if "m" in r else []
    for v in nested:
        flat = (
            [x for row in v for x in (row if isinstance(row, list) else [row])]
            if isinstance(v, list)
            else [v]
        )
        if not all(_is_int(x) and 0 < x <= MAX_WIDTH for x in flat):
            raise bad_field(where, f, f"expected positive integer widths, got {v!r}")
    if r["type"] == "Upsample":
        scale = r.get("scale", 2)
        if not _is_num(scale) or not 0 < scale <= 8:
            raise bad_field(where, f"{f}.scale", f"expected a scale in (0, 8], got {scale!r}")
        if r.get("mode", "nearest") not in ("nearest", "bilinear", "bicubic"):
            raise bad_field(where, f"{f}.mode", f"unknown mode {r.get('mode')!r}")
    if r["type"] == "Concat" and r.get("dim", 1) != 1:
        raise bad_field(where, f"{f}.dim", f"expected 1 (channels), got {r.get('dim')!r}")


def check_arch(arch: Any, where: Where = None) -> None:
    """The architecture record's fields that are not weights (class count, strides, anchors, kernel
    sizes, upsampling): types and ranges, so a record cannot make the model allocate without bound or
    run with a zero stride. The weights' shapes are compared with the record by :func:`check_shapes`."""
    if not isinstance(arch, dict):
        raise bad_field(where, "arch", f"expected a dict, got {type(arch).__name__}")
    if not isinstance(arch.get("name", ""), str):
        raise bad_field(where, "arch.name", "expected a string")
    _int_in(arch, "nc", 1, MAX_CLASSES, where, "arch.nc")
    if "nbins" in arch:
        _int_in(arch, "nbins", 0, 3600, where, "arch.nbins")
    if "ch" in arch:
        _int_in(arch, "ch", 1, 64, where, "arch.ch")
    conf = arch.get("theta_conf", 0.0)
    if not _is_num(conf) or not 0 <= conf <= 8:
        raise bad_field(where, "arch.theta_conf", f"expected a number in [0, 8], got {conf!r}")
    strides = arch.get("strides")
    if not isinstance(strides, list) or not 1 <= len(strides) <= 8:
        raise bad_field(where, "arch.strides", f"expected a list of 1 to 8 strides, got {strides!r}")
    if not all(_is_num(s) and 1 <= s <= MAX_STRIDE for s in strides):
        raise bad_field(where, "arch.strides", f"expected strides in [1, {MAX_STRIDE}], got {strides}")
    _check_anchors(arch.get("anchors"), len(strides), where)
    layers = arch.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        raise bad_field(where, "arch.layers", f"expected a list of 1 to {MAX_LAYERS} layer records")
    for i, r in enumerate(layers):
        _check_layer(r, i, where)


def _check_state_dict(sd: Any, field: str, where: Where) -> None:
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise bad_field(where, field, "expected a state dict (parameter name -> tensor)")


def check_checkpoint(ckpt: Any, where: Where = None) -> None:
    """Every field an obbslim checkpoint may hold: type, range and consistency (names vs ``arch.nc``);
    raises ``ObbslimError`` naming the first bad field. No model is built."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("arch"), dict) or "model" not in ckpt:
        prefix = f"{where}: " if where is not None else ""
        raise ObbslimError(f"{prefix}not an obbslim checkpoint (no 'arch' record and 'model' state dict)")
    version = ckpt.get("version", CKPT_VERSION)
    if not _is_int(version) or version < 1:
        raise bad_field(where, "version", f"expected a positive integer, got {version!r}")
    if version > CKPT_VERSION:
        raise bad_field(where, "version", f"format {version} is newer than this obbslim reads "
                        f"({CKPT_VERSION}): upgrade obbslim")  # fmt: skip
    check_arch(ckpt["arch"], where)
    nc = ckpt["arch"]["nc"]
    names = ckpt.get("names")
    if names is not None:
        if not isinstance(names, list) or len(names) != nc:
            n = len(names) if isinstance(names, list) else type(names).__name__
            raise bad_field(where, "names", f"expected a list of {nc} class names (arch.nc), got {n}")
        try:
            check_names(names, "class name")
            class_index(names)
        except (InputError, ValueError) as e:
            raise bad_field(where, "names", getattr(e, "reason", str(e))) from None
    _check_state_dict(ckpt["model"], "model", where)
    if ckpt.get("ema") is not None:
        _check_state_dict(ckpt["ema"], "ema", where)
    epoch = ckpt.get("epoch", -1)
    if not _is_int(epoch) or epoch < -1:
        raise bad_field(where, "epoch", f"expected an integer >= -1, got {epoch!r}")
    for key in ("hyp", "metrics", "optimizer", "scaler", "extra_state", "pruned", "rng"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise bad_field(where, key, f"expected a dict, got {type(ckpt[key]).__name__}")
    if "train_args" in ckpt:
        if not isinstance(ckpt["train_args"], dict):
            raise bad_field(where, "train_args", f"expected a dict, got {type(ckpt['train_args']).__name__}")
        _int_in(ckpt["train_args"], "epochs", 1, 1_000_000, where, "train_args.epochs")
    cbs = ckpt.get("callbacks", [])
    if not (isinstance(cbs, list) and all(isinstance(c, str) for c in cbs)):
        raise bad_field(where, "callbacks", "expected a list of names")
    for key, lo in (("best_epoch", -1), ("ema_updates", 0)):
        if key in ckpt and (not _is_int(ckpt[key]) or ckpt[key] < lo):
            raise bad_field(where, key, f"expected an integer >= {lo}, got {ckpt[key]!r}")
    for key in ("best_fitness", "train_time"):
        if key in ckpt and not _is_num(ckpt[key]):
            raise bad_field(where, key, f"expected a finite number, got {ckpt[key]!r}")


def check_shapes(model: nn.Module, sd: dict, field: str, where: Where = None) -> None:
    """Each tensor of ``sd`` has the shape ``model`` (the record built on the meta device: nothing
    allocated) gives it, and no tensor is missing or extra."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise bad_field(where, field, f"does not match the architecture record ({what})")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            got = tuple(sd[k].shape)
            raise bad_field(
                where, f"{field}[{k!r}]", f"shape {got} does not match the architecture record {shape}"
            )
