"""obbslim: oriented-object YOLOv5 made small by network slimming and knowledge distillation."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``obbslim.Detector`` without importing torch when the package is imported."""
    if name == "Detector":
        from obbslim.inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'obbslim' has no attribute {name!r}")
