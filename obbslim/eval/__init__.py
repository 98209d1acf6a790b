"""Evaluation: the official DOTA Task1 metric on files or in-memory arrays."""

from obbslim.eval.angle import angle_error
from obbslim.eval.dota import evaluate_dota, evaluate_images, evaluate_polys, voc_ap
from obbslim.eval.table import format_table

__all__ = ["angle_error", "evaluate_dota", "evaluate_images", "evaluate_polys", "format_table", "voc_ap"]
