"""`obbslim` CLI under torchrun, reporting what still holds the process group when it is destroyed.

A DDP wrapper alive at that point keeps gloo's worker threads past the group into interpreter
shutdown, where they abort the process at random ("terminate called without an active exception").
"""

from __future__ import annotations

import gc
import sys

import torch

import obbslim.engine.distributed as ddp
from obbslim.cli import main

_cleanup = ddp.cleanup


def _probed_cleanup(info: ddp.DistInfo) -> None:
    alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    print(f"rank {info.rank}: DDP wrappers alive at teardown: {alive}", flush=True)
    _cleanup(info)


ddp.cleanup = _probed_cleanup

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
