"""obbslim: oriented-object YOLOv5 made small by network slimming and knowledge distillation."""

__version__ = "0.1.0"
