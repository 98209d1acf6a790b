"""`obbslim export`: a checkpoint to ONNX (decode in the graph, NMS outside), optionally INT8."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (fp32, fp16 for CUDA, or INT8 static quantisation)",
        description="Export WEIGHTS to ONNX with BN fused and the boxes decoded in the graph: input "
        "'images' [B,3,H,W] RGB 0..1, output 'output' [B,N,6+nc] = cx,cy,w,h,theta,obj,class probs. "
        "Run NMS afterwards (obbslim.Detector or obbslim/deploy/standalone.py).",
    )
    p.add_argument("--weights", required=True, help="obbslim checkpoint .pt")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format")
    p.add_argument("--imgsz", type=int, default=1024, help="input size (square; fixed unless --dynamic)")
    p.add_argument("--dynamic", action="store_true", help="dynamic height/width (batch is always dynamic)")
    p.add_argument("--half", action="store_true", help="fp16 graph for CUDA deployment (exported on CUDA)")
    p.add_argument("--simplify", action="store_true",
                   help="simplify the graph (onnxsim if installed, else ONNX Runtime's basic passes)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or later)")
    p.add_argument("--out", default=None, help="output .onnx (default: WEIGHTS with suffix .onnx)")
    p.add_argument("--int8", action="store_true", help="also write <out>_int8.onnx by static quantisation")
    p.add_argument("--data", default=None, help="dataset YAML whose train images calibrate --int8")
    p.add_argument("--calib", type=int, default=32, help="number of calibration images for --int8")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.deploy.export import export_cli

    export_cli(args.weights, imgsz=args.imgsz, dynamic=args.dynamic, half=args.half, simplify=args.simplify,
               opset=args.opset, out=args.out, int8=args.int8, data=args.data, calib=args.calib)  # fmt: skip
    return 0
