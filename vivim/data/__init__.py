"""Data: synthetic B-mode ultrasound videos, dataset layouts (DAVIS, Vivim/VTUS), clip sampling, transforms.

Submodules import OpenCV (and torch for `vivim.data.dataset`) on use; this package import stays light.
"""

__all__ = ["synthetic", "synth_dataset", "layouts", "clips", "transforms", "dataset", "image_io", "contact_sheet"]
