"""Read a torch.save file of pickled YOLOv5 modules without running any code from it.

Official YOLOv5 checkpoints pickle the yolov5 repository's module objects. ``torch.load(weights_only=True)``
refuses them, and a plain ``torch.load`` would import and call whatever the pickle names. This reader opens
torch's zip format itself (``<name>/data.pkl`` plus one ``<name>/data/<key>`` entry per storage) and
unpickles with ``find_class`` limited to an allow-list:

- the module classes such files name (``models.yolo.DetectionModel``, ``models.common.C3``,
  ``torch.nn.modules.conv.Conv2d``, ...) and a few plain-data ones (``argparse.Namespace``, numpy arrays in
  ``best_fitness``) become inert :class:`Placeholder` objects that keep their pickled arguments and state
  and have no behaviour;
- storage types and the tensor rebuild functions are this module's own, which only build CPU tensors
  over bytes read from the zip;
- none of these can be changed by the pickle (BUILD on them is refused), and they are made anew for
  every file;
- ``collections.OrderedDict`` and ``builtins.set`` are the real (data-only) containers, and
  ``_codecs.encode`` (how protocol 2 writes bytes) is a function of this module that only accepts latin-1.

Every other global is refused when it is looked up, before anything is called: the pickle machine can only
call what ``find_class`` returned, so nothing from the file runs.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from obbslim.errors import ObbslimError

# Classes found in YOLOv5 v6.0-v7.0 detection checkpoints (train.py's last.pt/best.pt and the release
# files that strip_optimizer writes), by module. The yolov5 pip package pickles the same classes under
# yolov5.models.*.
_MODULE_CLASSES = {
    "models.yolo": ("DetectionModel", "Model", "Detect"),
    "models.common": ("Conv", "DWConv", "Bottleneck", "C3", "SPP", "SPPF", "Focus", "Concat"),
    "torch.nn.modules.conv": ("Conv2d",),
    "torch.nn.modules.batchnorm": ("BatchNorm2d",),
    "torch.nn.modules.activation": ("SiLU", "LeakyReLU", "Hardswish", "ReLU"),
    "torch.nn.modules.container": ("Sequential", "ModuleList"),
    "torch.nn.modules.upsampling": ("Upsample",),
    "torch.nn.modules.pooling": ("MaxPool2d",),
    "torch.nn.modules.linear": ("Identity",),
}
_DATA_CLASSES = {  # plain data some checkpoints carry beside the model ('opt', 'best_fitness')
    "argparse": ("Namespace",),
    "pathlib": ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"),
    "numpy": ("ndarray", "dtype"),
    "numpy.core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
}
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class _Sealed:
    """An object the pickle can reach by name but not change: the BUILD opcode would otherwise set its
    attributes (``__dict__`` update or setattr), e.g. a function's ``__defaults__``."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafeCheckpoint(f"the pickle tries to set {name!r} on {self!r}")

    __delattr__ = __setattr__  # type: ignore[assignment]


class _SealedType(type):
    """The placeholder classes' metaclass: their class attributes cannot be set from the pickle either."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise UnsafeCheckpoint(f"the pickle tries to set {name!r} on {cls.__name__}")

    __delattr__ = __setattr__  # type: ignore[assignment]


class Placeholder(metaclass=_SealedType):
    """Stands for a class named in the file. Creating one only records the pickled arguments, and
    restoring its state only stores it: no method of the real class exists here."""

    qualname = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<placeholder {self.qualname}>"


def _placeholder(qualname: str) -> type:
    return _SealedType(qualname.rsplit(".", 1)[-1], (Placeholder,), {"qualname": qualname})


class _StorageKind(_Sealed):
    """What ``torch.HalfStorage`` and friends become: a dtype tag (not callable)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Fn(_Sealed):
    """One of this module's functions, as the pickle sees it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any):
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return self.fn.__name__


class _Storage:
    def __init__(self, data: torch.UntypedStorage, dtype: torch.dtype):
        self.data, self.dtype = data, dtype


class UnsafeCheckpoint(Exception):
    """The pickle names something outside the allow-list, or is malformed (message without the path)."""


def _ints(name: str, *values: Any) -> None:
    for v in values:
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise UnsafeCheckpoint(f"malformed tensor record ({name} {v!r})")


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False, hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:  # fmt: skip
    """torch._utils._rebuild_tensor_v2's job, for this reader's own storages only."""
    if not isinstance(storage, _Storage) or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise UnsafeCheckpoint("malformed tensor record")
    _ints("offset", offset)
    _ints("size", *size)
    _ints("stride", *stride)
    if len(size) != len(stride):
        raise UnsafeCheckpoint("malformed tensor record (size and stride differ in length)")
    t = torch.empty((0,), dtype=storage.dtype)
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if (last + 1) * t.element_size() > storage.data.nbytes():
            raise UnsafeCheckpoint("a tensor reaches past the end of its storage")
    return t.set_(storage.data, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, state: Any = None):
    """A Parameter comes back as its plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise UnsafeCheckpoint("malformed parameter record")
    return data


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """_codecs.encode as protocol 2 uses it for bytes (numpy arrays' data): latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpoint("malformed bytes record")
    return text.encode("latin1")


def _allowed() -> dict[str, Any]:
    """Name -> what the pickle gets for it; made anew for every file, so that one file cannot leave
    anything behind for the next."""
    table: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "_codecs.encode": _Fn(_latin1),
        "torch._utils._rebuild_tensor_v2": _Fn(_rebuild_tensor_v2),
        "torch._utils._rebuild_parameter": _Fn(_rebuild_parameter),
        "torch._utils._rebuild_parameter_with_state": _Fn(_rebuild_parameter),
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table[f"torch.{name}"] = _StorageKind(name, dtype)
    table["torch.storage.UntypedStorage"] = table["torch.UntypedStorage"]
    for groups in (_MODULE_CLASSES, _DATA_CLASSES):
        for module, names in groups.items():
            for n in names:
                table[f"{module}.{n}"] = _placeholder(f"{module}.{n}")
    for module in ("models.yolo", "models.common"):  # as the yolov5 pip package names them
        for n in _MODULE_CLASSES[module]:
            table[f"yolov5.{module}.{n}"] = table[f"{module}.{n}"]
    return table


ALLOWED_NAMES = frozenset(_allowed())
_OLD_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol 2 writes Python 2 names


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._zf, self._prefix = zf, prefix
        self._storages: dict[str, _Storage] = {}
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        full = f"{_OLD_MODULES.get(module, module)}.{name}"
        if full not in self._allowed:
            raise UnsafeCheckpoint(f"the pickle names {full!r}, which a YOLOv5 checkpoint never holds")
        return self._allowed[full]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpoint("malformed storage record")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageKind) or not isinstance(key, str) or not key.isalnum():
            raise UnsafeCheckpoint("malformed storage record")
        _ints("numel", numel)
        if key not in self._storages:
            try:
                raw = self._zf.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise UnsafeCheckpoint(f"storage {key} is missing from the archive") from None
            itemsize = torch.empty((), dtype=kind.dtype).element_size()
            if len(raw) < numel * (1 if kind.name == "UntypedStorage" else itemsize):
                raise UnsafeCheckpoint(f"storage {key} is shorter than its record says")
            buf = torch.empty(len(raw), dtype=torch.uint8)
            if raw:  # a copy: torch's allocation is aligned for every dtype
                buf.copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
            self._storages[key] = _Storage(buf.untyped_storage(), kind.dtype)
        st = self._storages[key]
        return st if st.dtype == kind.dtype else _Storage(st.data, kind.dtype)


def load_restricted(path: str | Path) -> Any:
    """Unpickle a torch.save zip file with only the allow-listed globals (module classes as placeholders).

    Raises ObbslimError naming the file when the file is not a torch zip archive, or names anything else.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ObbslimError(f"{path}: not a torch checkpoint (not a zip archive: {e})") from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ObbslimError(f"{path}: not a torch checkpoint (no <name>/data.pkl in the archive)")
        prefix = pkls[0][: -len("data.pkl")]
        order = zf.read(f"{prefix}byteorder").decode() if f"{prefix}byteorder" in zf.namelist() else "little"
        if order.strip() != "little":
            raise ObbslimError(f"{path}: written on a {order.strip()}-endian machine, which is not supported")
        try:
            return _Unpickler(zf.read(pkls[0]), zf, prefix).load()
        except UnsafeCheckpoint as e:
            raise ObbslimError(f"{path}: refused: {e}; nothing from the file was run") from None
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ObbslimError(f"{path}: a damaged or unsupported pickle ({first[:200]})") from None
