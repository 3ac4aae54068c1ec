"""Pipelined streaming (see sdk.stream.lifecycle)."""
from .lifecycle import STAGES, STATUSES, Record, Stream

__all__ = ["STAGES", "STATUSES", "Record", "Stream"]
