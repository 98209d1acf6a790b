"""`obbslim export`: a checkpoint to ONNX (decode in the graph, NMS outside), optionally INT8."""

from __future__ import annotations

import argparse

from obbslim.options import ExportConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (fp32, fp16 for CUDA, or INT8 static quantisation)",
        description="Export WEIGHTS to ONNX with BN fused and the boxes decoded in the graph: input "
        "'images' [B,3,H,W] RGB 0..1, output 'output' [B,N,6+nc] = cx,cy,w,h,theta,obj,class probs. "
        "Run NMS afterwards (obbslim.Detector or obbslim/deploy/standalone.py).",
    )
    ExportConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.deploy.export import export

    export(ExportConfig.from_args(args))
    return 0
