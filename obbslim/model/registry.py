"""The block registry: record ``type`` -> the block class that builds itself from that record.

A block class (``@register``) provides, besides its ``forward``:

- ``spec_record(f, n, args, in_w, gw) -> dict``: its record from a YOLOv5 YAML line (``from``, repeats,
  arguments; ``in_w`` the input widths, ``gw`` the width multiple);
- ``out_width(rec, in_w)`` and ``stride_factor(rec)``: what it does to the width and the stride;
- ``from_record(rec, in_w, arch)``: the module (``in_w`` checks the record against its inputs; ``arch``
  is the whole record, for the head);
- ``to_record()``: its fields, re-read from the live module (so a pruned block describes itself);
- ``summary()``: its widths in one short line, for the layer table.

Adding a block is one class with ``@register``; ``OBBModel`` and the spec expansion find it here.
"""

from __future__ import annotations

from obbslim.errors import ObbslimError

BLOCKS: dict[str, type] = {}


class RecordError(ObbslimError):
    """A record that does not describe a buildable layer (``OBBModel`` adds the layer index)."""


def register(cls: type) -> type:
    BLOCKS[cls.__name__] = cls
    return cls


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise RecordError(msg)


def block(type_name: str) -> type:
    """The registered class of a record or spec ``type`` (``nn.Upsample`` is ``Upsample``)."""
    name = str(type_name).replace("nn.", "")
    if name not in BLOCKS:
        raise RecordError(f"unknown type {name!r} (known: {', '.join(sorted(BLOCKS))})")
    return BLOCKS[name]
