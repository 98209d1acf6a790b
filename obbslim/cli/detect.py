"""`obbslim detect`: rotated boxes on images of any size (large ones are tiled and merged)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "detect",
        help="detect oriented objects in images, folders or globs (.pt or .onnx weights)",
        description="Images larger than --tile are cut into overlapping tiles whose detections are merged "
        "with class-wise rotated NMS; smaller ones are letterboxed to --imgsz.",
    )
    p.add_argument("--weights", required=True, help="checkpoint .pt or ONNX export .onnx")
    p.add_argument("--source", required=True, nargs="+", help="image file(s), folder(s) or glob pattern(s)")
    p.add_argument("--imgsz", type=int, default=1024, help="network input size")
    p.add_argument("--tile", type=int, default=None, help="tile size for large images (default: --imgsz)")
    p.add_argument("--gap", type=int, default=None, help="tile overlap px (default: 200 * tile / 1024)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.4, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="detections kept per image")
    p.add_argument("--batch", type=int, default=8, help="network inputs (tiles) per forward pass")
    p.add_argument("--device", default=None, help="cpu, 0, cuda:1 (default: GPU 0 if available)")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    p.add_argument("--save-img", action="store_true", help="save images with the boxes drawn")
    p.add_argument("--save-txt", action="store_true", help="save labels/<stem>.txt: x1 y1 .. y4 class score")
    p.add_argument("--save-dota", metavar="DIR", help="write DOTA Task1_<class>.txt files into DIR")
    p.add_argument("--project", default="runs/detect")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true", help="reuse <project>/<name> instead of <name>2, ...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.engine.detect import detect

    detect(
        args.weights,
        args.source if len(args.source) > 1 else args.source[0],
        imgsz=args.imgsz,
        tile=args.tile,
        gap=args.gap,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        device=args.device,
        half=args.half,
        batch=args.batch,
        save_img=args.save_img,
        save_txt=args.save_txt,
        save_dota=args.save_dota,
        project=args.project,
        name=args.name,
        exist_ok=args.exist_ok,
    )
    return 0
