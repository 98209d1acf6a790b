"""Command options as dataclasses: each option's default and help are written once, in a field.

From one ``Options`` subclass come the command's argparse parser (:meth:`Options.add_arguments`), the
value a library function works with (:meth:`Options.of`: a config, positional values and keywords),
the plain data a checkpoint or a run folder stores (:meth:`Options.to_record` / :meth:`from_record`)
and the shell command that reproduces a call (:meth:`Options.command`). A field is declared with
:func:`option`::

    @dataclass
    class DetectConfig(Options):
        imgsz: int = option(1024, "network input size")
        half: bool = option(False, "fp16 inference (CUDA only)")

Flags are ``--`` + the name with ``-`` for ``_``; a bool that defaults to True gets ``--no-NAME``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from obbslim.errors import ObbslimError
from obbslim.options.checks import THREADS, WORKERS, Check

T = TypeVar("T", bound="Options")


def option(
    default: Any,
    help: str | None = None,
    *,
    flag: str | None = None,
    type: Callable | None = None,
    choices: tuple | None = None,
    metavar: str | None = None,
    nargs: str | int | None = None,
    const: Any = None,
    positional: bool = False,
    required: bool = False,
    group: str | None = None,
    cli: bool = True,
    runtime: bool = False,
    record: bool = True,
    check: Check | None = None,
) -> Any:
    """A dataclass field carrying its CLI spelling.

    ``flag`` overrides the derived ``--flag``; ``type`` is the argparse type when it cannot be read off
    the default; ``positional`` makes a positional argument; ``group`` puts the option in a mutually
    exclusive group (``required`` then means one of the group is); ``cli=False`` keeps it out of the
    command line (Python-only); ``runtime`` marks what a resumed run may change (device, workers, ...);
    ``record=False`` keeps it out of what checkpoints store (it describes this invocation only);
    ``check`` (:mod:`obbslim.options.checks`) is the value's range, enforced whenever a config is built.
    """
    meta = dict(help=help, flag=flag, type=type, choices=choices, metavar=metavar, nargs=nargs, const=const,
                positional=positional, required=required, group=group, cli=cli, runtime=runtime,
                record=record, check=check)  # fmt: skip
    return dataclasses.field(default=default, metadata=meta)


def threads_option(help: str = "CPU threads", **kw: Any) -> Any:
    """``--threads N`` (None: ``$OMP_NUM_THREADS``, else the cores - 1; see :mod:`obbslim.utils.threads`).
    It describes the machine, not the result: a resumed run may change it and records leave it out."""
    kw = {"runtime": True, "record": False, **kw}
    return option(None, f"{help} (default: $OMP_NUM_THREADS, else all cores but one)", type=int, metavar="N",
                  check=THREADS, **kw)  # fmt: skip


def workers_option(help: str = "dataloader workers", **kw: Any) -> Any:
    """``--workers N`` (None: ``min(8, cores - 1)``, see :func:`obbslim.utils.threads.default_workers`)."""
    return option(None, f"{help} (default: all cores but one, at most 8)", type=int, metavar="N",
                  check=WORKERS, **kw)  # fmt: skip


def plain(value: Any) -> Any:
    """YAML/JSON/weights_only-friendly data: Paths -> str, tuples -> lists, numpy/torch scalars -> numbers."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


@dataclasses.dataclass
class Options:
    """Base of every command's options (see the module doc)."""

    #: fields a Python caller may give positionally, in this order (``distill(student, teacher, data)``)
    positional: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checking
    def validate(self) -> None:
        """Every field's ``check`` (its range), then :meth:`check_together`; the first problem is an
        :class:`ObbslimError` naming the flag: ``--conf must be in [0, 1], got 2``. Runs whenever a
        config is built (``of``, ``from_args``, ``from_record``, ``replace``)."""
        type(self).check_values(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        self.check_together()

    def check_together(self) -> None:
        """Checks that involve several fields (a subclass's hook; raise :class:`ObbslimError`)."""

    @classmethod
    def check_values(cls, **values: Any) -> None:
        """The field checks of the given values (for callers that take the same options as keywords,
        such as the Detector)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, value in values.items():
            check = fields[name].metadata.get("check") if name in fields else None
            problem = check.problem(value) if check else None
            if problem:
                raise ObbslimError(f"{cls.spelling(name)} {problem}")

    @classmethod
    def spelling(cls, name: str) -> str:
        """How the user wrote an option: its flag (``--conf``), or its name when it has no flag."""
        f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
        if f is None or not f.metadata["cli"]:
            return name
        return name if f.metadata["positional"] else cls.flag(name)

    # ------------------------------------------------------------------ building
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def of(cls: type[T], *args: Any, **options: Any) -> T:
        """A config from an optional config first (an instance of ``cls`` or of a subclass is kept as it
        is, with its class; of another ``Options`` class, its shared fields are taken), positional
        values (``cls.positional``) and keyword options; an unknown option is an error."""
        base: dict[str, Any] = {}
        if args and isinstance(args[0], Options):
            if isinstance(args[0], cls):
                cls, base = type(args[0]), vars(args[0])
            else:
                base = {k: v for k, v in vars(args[0]).items() if k in cls.field_names()}
            args = args[1:]
        if len(args) > len(cls.positional):
            raise ObbslimError(f"{cls.__name__}: at most {len(cls.positional)} positional values "
                               f"({', '.join(cls.positional) or 'none'}), got {len(args)}")  # fmt: skip
        given = {k: v for k, v in zip(cls.positional, args) if v is not None}
        clash = set(given) & set(options)
        unknown = set(options) - set(cls.field_names())
        if clash or unknown:
            what = f"unknown option(s) {sorted(unknown)}" if unknown else f"{sorted(clash)} given twice"
            raise ObbslimError(f"{cls.__name__}: {what}")
        return cls(**{**base, **given, **options})

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def kwargs(self, *names: str) -> dict[str, Any]:
        """The named fields (default: all) as keywords for a library function."""
        return {k: getattr(self, k) for k in (names or self.field_names())}

    # ------------------------------------------------------------------ records (checkpoints, run folders)
    def to_record(self) -> dict[str, Any]:
        """Plain data (what checkpoints and args.yaml store)."""
        fields = dataclasses.fields(self)
        return {f.name: plain(getattr(self, f.name)) for f in fields if f.metadata["record"]}

    @classmethod
    def from_record(cls: type[T], record: dict[str, Any]) -> T:
        """Back from :meth:`to_record`; keys this version does not know are dropped, missing ones take
        their defaults (records written by older and newer versions load)."""
        known = set(cls.field_names())
        return cls(**{k: v for k, v in record.items() if k in known})

    @classmethod
    def runtime_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata["runtime"]]

    # ------------------------------------------------------------------ the command line
    @classmethod
    def flag(cls, name: str) -> str:
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        if f.metadata["flag"]:
            return f.metadata["flag"]
        prefix = "--no-" if f.default is True else "--"
        return prefix + name.replace("_", "-")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
        """One argparse argument per CLI field, with the field's default and help."""
        groups: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            m = f.metadata
            if not m["cli"] or f.name in exclude:
                continue
            target = parser
            if m["group"]:
                if m["group"] not in groups:
                    groups[m["group"]] = parser.add_mutually_exclusive_group(required=m["required"])
                target = groups[m["group"]]
            names, kw = _argument(cls, f)
            target.add_argument(*names, **kw)

    @classmethod
    def from_args(cls: type[T], ns: argparse.Namespace) -> T:
        """The options an argparse namespace holds (fields it lacks take their defaults)."""
        return cls(**{k: v for k, v in vars(ns).items() if k in cls.field_names()})

    @classmethod
    def command(cls, prog: str, options: dict[str, Any]) -> str:
        """The shell command ``prog`` with these options: None and a flag's off state are left out,
        lists become several values."""
        args = shlex.split(prog)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k, v in options.items():
            f = fields[k]
            if v is None or not f.metadata["cli"]:
                continue
            if isinstance(f.default, bool):
                if bool(v) != f.default:
                    args.append(cls.flag(k))
                continue
            values = [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
            args += values if f.metadata["positional"] else [cls.flag(k), *values]
        return shlex.join(args)


def _argument(cls: type[Options], f: dataclasses.Field) -> tuple[list[str], dict[str, Any]]:
    """argparse ``add_argument`` names and keywords of one field."""
    m = f.metadata
    kw: dict[str, Any] = {"help": m["help"]}
    if m["metavar"]:
        kw["metavar"] = m["metavar"]
    if isinstance(f.default, bool) and m["nargs"] is None:
        kw.update(action="store_false" if f.default else "store_true", dest=f.name)
        return [cls.flag(f.name)], kw
    default = list(f.default) if isinstance(f.default, tuple) else f.default
    sample = default[0] if isinstance(default, list) and default else default
    number = isinstance(sample, (int, float)) and not isinstance(sample, bool)
    typ = m["type"] or (type(sample) if number else None)
    if typ is not None:
        kw["type"] = typ
    for key in ("choices", "nargs", "const"):
        if m[key] is not None:
            kw[key] = m[key]
    if m["positional"]:
        return [f.name], {**kw, **({"default": default} if m["nargs"] == "?" else {})}
    kw.update(dest=f.name, default=default)
    if m["required"] and not m["group"]:
        kw["required"] = True
    return [cls.flag(f.name)], kw
