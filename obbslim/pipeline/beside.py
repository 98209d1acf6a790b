"""One compress stage in a second process, beside a stage of the parent (``-m obbslim.pipeline.beside``;
:meth:`obbslim.pipeline.compress.Pipeline.run_pair` starts it).

Why: on a CPU, two small trainings at one thread each finish sooner than the same two one after the
other at two threads (a training step of a small model uses a second thread poorly, and the data
loading of the demo runs in the main thread). compress runs the fine-tuning ablation this way beside
the distillation; both depend only on the pruned model.

The parent writes ``{run_dir, cfg, threads, markers, stage}`` as JSON to the child's stdin (``cfg`` a
CompressConfig record, ``threads`` the child's share of the CPU threads); the child runs the stage like
the parent would (skipped when complete, continued from its last.pt when interrupted) and exits 0 when
its marker is written, ``INTERRUPTED`` when SIGINT/SIGTERM stopped it (its last.pt is saved), 1 on an
error (printed).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from obbslim.options import CompressConfig
from obbslim.pipeline.compress import INTERRUPTED, Pipeline, StageInterrupted
from obbslim.pipeline.stages import SPEC_BY_NAME, Context


def main() -> int:
    job = json.loads(sys.stdin.read())
    cfg = CompressConfig.from_record(job["cfg"]).replace(threads=job["threads"])
    pipe = Pipeline(Path(job["run_dir"]), cfg)
    pipe.markers.update(job["markers"])
    ctx = Context(cfg, pipe.dir, pipe.markers)
    stage = SPEC_BY_NAME[job["stage"]](ctx)
    try:
        pipe.run_stage(stage)
    except StageInterrupted:
        return INTERRUPTED
    except Exception:  # the parent reports it with this log's path
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
