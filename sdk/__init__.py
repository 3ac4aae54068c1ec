"""CFRG inspection SDK, field side. Imports with numpy and opencv alone."""
__version__ = "0.1.0"

from .backends import ModelFileError
from .backends.triton import ServerUnavailable
from .detector import Detector, Result
from .drift import DriftEvent, DriftMonitor
from .model_info import ModelInfo
from .postprocess import Region
from .sinks import BySource, JsonlSink, MaskSink, OverlaySink, VideoSink
from .sources import Frame, LineScanAccumulator, MultiSource, Source, SourceError, SourceEvent, SourceLost, open_source
from .stream import Record, Stream

__all__ = [
    "Detector", "Result", "Region", "ModelInfo", "ModelFileError", "Stream", "Record", "open_source", "Frame", "Source",
    "SourceEvent", "SourceError", "SourceLost", "LineScanAccumulator", "MultiSource", "MaskSink", "OverlaySink",
    "JsonlSink", "VideoSink", "BySource", "ServerUnavailable", "DriftMonitor", "DriftEvent",
]
