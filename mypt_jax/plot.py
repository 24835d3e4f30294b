"""Loss curves as a PNG with numpy and zlib only (no matplotlib): train loss blue, val loss orange.

The y axis spans [min, max] of all points, labelled at both ends; the x axis runs from step
0 to the last step, labelled at the right. Good enough to see a run converge or stall.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

W, H, MARGIN = 640, 360, 48
COLORS = {"train_loss": (31, 119, 180), "val_loss": (255, 127, 14)}
# 3x5 bitmap digits for the axis labels, one string of 15 bits per glyph, rows top to bottom.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
}


def _png(rgb_HxWx3: np.ndarray) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = rgb_HxWx3.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgb_HxWx3.reshape(h, w * 3)], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)) + chunk(b"IEND", b""))


def _text(img: np.ndarray, x: int, y: int, s: str, scale: int = 2) -> None:
    for i, ch in enumerate(s):
        bits = np.array([int(b) for b in _GLYPHS.get(ch, "0" * 15)], bool).reshape(5, 3)
        block = np.kron(bits, np.ones((scale, scale), bool))
        x0 = x + i * 4 * scale
        img[y:y + block.shape[0], x0:x0 + block.shape[1]][block] = 0


def _line(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, color: tuple[int, int, int]) -> None:
    for i in range(len(xs) - 1):
        x0, y0, x1, y1 = xs[i], ys[i], xs[i + 1], ys[i + 1]
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        px, py = np.linspace(x0, x1, n).round().astype(int), np.linspace(y0, y1, n).round().astype(int)
        for dy in (0, 1):  # two pixels thick
            img[np.clip(py + dy, 0, H - 1), np.clip(px, 0, W - 1)] = color
    if len(xs) == 1:
        img[int(ys[0]) - 2:int(ys[0]) + 3, int(xs[0]) - 2:int(xs[0]) + 3] = color


def loss_curve_png(series: Mapping[str, Sequence[tuple[int, float]]], path: str | Path) -> Path:
    """Writes `series` (name -> [(step, loss)], names from COLORS) as a PNG; returns the path."""
    img = np.full((H, W, 3), 255, np.uint8)
    points = [p for name in COLORS for p in series.get(name, ())]
    if points:
        steps, losses = np.array(points, float).T
        lo, hi = float(losses.min()), float(losses.max())
        hi = hi if hi > lo else lo + 1.0
        last = max(float(steps.max()), 1.0)
        for name, color in COLORS.items():
            pts = sorted(series.get(name, ()))
            if pts:
                s, v = np.array(pts, float).T
                _line(img, MARGIN + s / last * (W - 2 * MARGIN),
                      H - MARGIN - (v - lo) / (hi - lo) * (H - 2 * MARGIN), color)
        _text(img, 2, MARGIN - 5, f"{hi:.2f}")
        _text(img, 2, H - MARGIN - 5, f"{lo:.2f}")
        _text(img, W - MARGIN - 4 * 2 * len(str(int(last))), H - MARGIN + 8, str(int(last)))
    img[MARGIN:H - MARGIN, MARGIN] = img[H - MARGIN, MARGIN:W - MARGIN] = 0  # axes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(_png(img))
    tmp.replace(path)
    return path
