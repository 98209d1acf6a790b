"""Build, save and load OBB models. Checkpoints are plain dicts (no pickled modules):
`torch.load(path, weights_only=True)` reads them, and the model is rebuilt from the stored record."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from obbslim.errors import ObbslimError
from obbslim.model.checks import CKPT_VERSION, check_arch, check_checkpoint, check_shapes
from obbslim.model.yolo import OBBModel, load_spec, spec_to_arch
from obbslim.utils.io import atomic_torch_save

_KEYS = ("arch", "model", "ema", "names", "hyp", "epoch", "optimizer", "metrics", "version")


def build(spec_or_name: str | Path | dict, nc: int, names: Sequence[str] | None = None) -> OBBModel:
    """A fresh model from a shipped spec name ('yolov5s-obb[.yaml]'), a YAML path, a spec dict or an
    architecture record (a dict with 'layers')."""
    if isinstance(spec_or_name, dict) and "layers" in spec_or_name:
        arch = dict(spec_or_name, nc=int(nc))
    else:
        arch = spec_to_arch(load_spec(spec_or_name), nc=nc)
    return OBBModel.from_arch(arch, names=names)


def _float_state(sd: dict | nn.Module | None) -> dict | None:
    if sd is None:
        return None
    if isinstance(sd, nn.Module):
        sd = sd.state_dict()
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu() for k, v in sd.items()}


def save(
    model: OBBModel,
    path: str | Path,
    *,
    ema: nn.Module | dict | None = None,
    optimizer: Any = None,
    epoch: int = -1,
    hyp: dict | None = None,
    metrics: dict | None = None,
    **meta: Any,
) -> None:
    """Write a checkpoint atomically (a crash never leaves half a file).

    `ema` is the EMA model (or its state dict), `optimizer` an optimizer or its state dict; any extra
    keyword lands as a top-level key. Values must be weights_only-loadable (tensors, plain containers).
    """
    model = getattr(model, "module", model)  # DDP / DataParallel
    if not isinstance(model, OBBModel):
        raise ObbslimError(f"save: expected an OBBModel, got {type(model).__name__}")
    if model.fused:
        raise ObbslimError("save: the model has been fused (BN folded); save the unfused model instead")
    if isinstance(ema, nn.Module):
        ema = getattr(ema, "module", ema)
    if optimizer is not None and hasattr(optimizer, "state_dict"):
        optimizer = optimizer.state_dict()
    ckpt = {
        "arch": model.get_arch(),
        "model": _float_state(model),
        "ema": _float_state(ema),
        "names": list(model.names),
        "hyp": hyp,
        "epoch": int(epoch),
        "optimizer": optimizer,
        "metrics": metrics,
        "version": CKPT_VERSION,
    }
    clash = set(meta) & set(_KEYS)
    if clash:
        raise ObbslimError(f"save: meta keys {sorted(clash)} are reserved")
    ckpt.update(meta)
    atomic_torch_save(ckpt, path)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """torch.load(weights_only=True), then every field checked (``model.checks``); a file that is not
    an obbslim checkpoint raises ``ObbslimError`` saying what it is not, in one line."""
    path = Path(path)
    if not path.is_file():
        raise ObbslimError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the pickle protocol
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        if _head(path) not in (b"PK\x03\x04", b"\x80"):  # random bytes can look like pickle opcodes
            raise ObbslimError(f"{path}: not an obbslim checkpoint: {_what_file(path)}") from None
        raise ObbslimError(
            f"{path}: not an obbslim checkpoint: it holds pickled Python objects (classes, modules), which "
            "are never loaded since loading them can run code (obbslim checkpoints are plain data; a YOLOv5 "
            "or Ultralytics .pt is not one)"
        ) from None
    except Exception:  # a truncated archive, random bytes, an empty file
        raise ObbslimError(f"{path}: not an obbslim checkpoint: {_what_file(path)}") from None
    check_checkpoint(ckpt, path)
    return ckpt


def _head(path: Path) -> bytes:
    """The zip signature (PK..) of a torch archive, the PROTO opcode (0x80) of a pickle, or other bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return b""
    return head if head == b"PK\x03\x04" else head[:1]


def _what_file(path: Path) -> str:
    """What a file torch cannot load looks like, in a few words."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    head = _head(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    if head == b"PK\x03\x04":
        return f"a truncated or damaged PyTorch archive ({size} bytes)"
    if head == b"\x80":
        return f"a damaged or foreign pickle ({size} bytes)"
    return f"not a PyTorch file ({size} bytes of something else)"


def ckpt_to_model(ckpt: dict, ema: bool = False, source: str | Path | None = None) -> OBBModel:
    """Rebuild the model from a checkpoint dict (the raw weights, or EMA ones when `ema` and present).

    The record is first built on the meta device and the weights' shapes compared with it, so a record
    that does not match its weights fails before anything is allocated. Returned in training mode on
    CPU: the training engine uses this to resume."""
    where = f"{source}: " if source is not None else ""
    use = "ema" if ema and ckpt.get("ema") is not None else "model"
    try:
        check_arch(ckpt.get("arch"), source)
        with torch.device("meta"):
            probe = OBBModel.from_arch(ckpt["arch"], names=ckpt.get("names"))
        check_shapes(probe, ckpt[use], use, source)
        model = OBBModel.from_arch(ckpt["arch"], names=ckpt.get("names"))
        model.load_state_dict(ckpt[use], strict=True)
    except ObbslimError as e:
        msg = str(e)
        raise ObbslimError(msg if source is None or msg.startswith(str(source)) else where + msg) from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"checkpoint does not match its architecture record ({first[:300]})"
        raise ObbslimError(where + msg) from None
    return model


def load(ckpt_path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> OBBModel:
    """A model ready for inference: rebuilt from the stored record, EMA weights when present, eval mode."""
    ckpt = read_checkpoint(ckpt_path)
    model = ckpt_to_model(ckpt, ema=ema, source=ckpt_path)
    return model.to(device).eval()
