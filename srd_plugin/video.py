"""Writing videos through imageio's ffmpeg plugin (bundled by imageio-ffmpeg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def to_uint8_frames(frames: Any) -> np.ndarray:
    """Frames as a [F, H, W, 3] uint8 array, from floats in [0, 1], uint8 arrays or PIL images."""
    if isinstance(frames, (list, tuple)) and frames and not isinstance(frames[0], np.ndarray):
        frames = [np.asarray(frame) for frame in frames]
    array = np.asarray(frames)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return array


def write_video(frames: Any, path: str | Path, fps: int = 8) -> Path:
    """Write an mp4 (H.264) with imageio; tiny frames are upscaled so players show them."""
    import imageio.v2 as imageio

    path = Path(path)
    array = to_uint8_frames(frames)
    height, width = array.shape[1:3]
    scale = max(1, 256 // max(height, width))
    if scale > 1:
        array = array.repeat(scale, axis=1).repeat(scale, axis=2)
    imageio.mimwrite(path, list(array), fps=fps, codec="libx264", macro_block_size=16, quality=8)
    return path


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as [F, H, W, 3] uint8."""
    import imageio.v2 as imageio

    return np.stack(imageio.mimread(path, memtest=False))
