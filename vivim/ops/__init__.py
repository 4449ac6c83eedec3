"""Selective-scan operations: the `vivim::selective_scan` custom op, its references and implementation dispatch."""

from vivim.ops import dispatch
from vivim.ops.reference import selective_scan_reference, selective_scan_sequential
from vivim.ops.selective_scan import selective_scan

__all__ = ["selective_scan", "selective_scan_reference", "selective_scan_sequential", "dispatch"]
