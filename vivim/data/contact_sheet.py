"""Pictures for people: mask outlines drawn on frames, and a contact sheet of several videos."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from vivim.data.image_io import write_image

GT_COLOUR = (0, 220, 0)  # BGR green
PRED_COLOUR = (255, 200, 0)  # BGR cyan: stands out on red mucosa (endoscopy) as on grey ultrasound


def to_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()


def draw_outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = GT_COLOUR, thickness: int = 1) -> np.ndarray:
    """Return a BGR copy of `image` with the outline of the binary `mask` drawn on it."""
    out = to_bgr(image)
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def contact_sheet(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], columns: int = 6, tile: int = 160) -> np.ndarray:
    """One row per video (name, frames (F,H,W[,3]), masks (F,H,W)): `columns` evenly spaced frames with outlines."""
    label_h = 14
    sheet_rows = []
    for name, frames, masks in rows:
        picks = np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int)
        tiles = []
        for i in picks:
            t = cv2.resize(draw_outline(frames[i], masks[i]), (tile, tile), interpolation=cv2.INTER_AREA)
            cv2.putText(t, f"{name} #{i}", (3, tile - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 0), 1, cv2.LINE_AA)
            tiles.append(t)
        while len(tiles) < columns:
            tiles.append(np.zeros((tile, tile, 3), np.uint8))
        sheet_rows.append(np.hstack(tiles))
    sheet = np.vstack(sheet_rows) if sheet_rows else np.zeros((tile, tile * columns, 3), np.uint8)
    header = np.zeros((label_h, sheet.shape[1], 3), np.uint8)
    cv2.putText(header, "green = ground-truth mask outline (synthetic data, not for clinical use)", (3, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (200, 200, 200), 1, cv2.LINE_AA)
    return np.vstack([header, sheet])


def write_contact_sheet(path: str | Path, rows: Sequence[tuple[str, np.ndarray, np.ndarray]], columns: int = 6, tile: int = 160) -> Path:
    path = Path(path)
    write_image(path, contact_sheet(rows, columns, tile))
    return path
