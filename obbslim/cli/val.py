"""`obbslim val`: OBB mAP of a checkpoint on a dataset split, or on original large DOTA images."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "val",
        help="validate a checkpoint: per-class P, R, mAP50 (VOC07/VOC12), mAP50-95, PR curves, speed",
        description="Validate WEIGHTS on a dataset split (letterboxed images, like training), or with "
        "--full-images SRC on original large images the DOTA way: tile, predict, merge, write Task1 "
        "files into the run dir and score them against SRC/labelTxt.",
    )
    p.add_argument("--weights", required=True, help="checkpoint .pt (--full-images also takes .onnx)")
    p.add_argument("--data", help="dataset YAML (not needed with --full-images)")
    p.add_argument("--split", default="val", help="dataset split to validate (default: val)")
    p.add_argument("--imgsz", type=int, default=1024, help="input size (tile size with --full-images)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.4, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (per tile)")
    p.add_argument("--device", default=None, help="cpu, 0, cuda:1 (default: GPU 0 if available)")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    p.add_argument("--workers", type=int, default=0, help="dataloader workers")
    p.add_argument("--full-images", metavar="SRC_DIR", help="folder with images/, labelTxt/ of full images")
    p.add_argument("--gap", type=int, default=None, help="--full-images tile overlap (200 * imgsz / 1024)")
    p.add_argument("--json", metavar="OUT", help="write {metric, mAP, per_class, mAP50_95, speed_ms, ...}")
    p.add_argument("--project", default="runs/val")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true", help="reuse <project>/<name> instead of <name>2, ...")
    p.add_argument("--noplots", action="store_true", help="no PR_curve.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.engine.val import val

    val(
        args.weights,
        data=args.data,
        split=args.split,
        imgsz=args.imgsz,
        batch=args.batch,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        device=args.device,
        half=args.half,
        full_images=args.full_images,
        gap=args.gap,
        json_path=args.json,
        project=args.project,
        name=args.name,
        exist_ok=args.exist_ok,
        workers=args.workers,
        plots=not args.noplots,
    )
    return 0
