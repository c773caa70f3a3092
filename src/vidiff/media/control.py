"""Control images from a video's frames, for ControlNet pipelines (edge and pose control).

From a file to a controlled video::

    from vidiff import ControlNetModel, TextToVideoZeroControlNetPipeline, export_to_video, load_video
    from vidiff.media.control import canny_edges, pose_frames

    frames = load_video("in.mp4")[:8]                    # RGB PIL frames
    edges = canny_edges(frames, 100, 200)                # white edges on black, RGB PIL frames (what ControlNet wants)
    poses = pose_frames(frames)                          # needs `pip install controlnet_aux` (or pass detector=...)
    controlnet = ControlNetModel.from_pretrained("lllyasviel/sd-controlnet-canny")
    pipe = TextToVideoZeroControlNetPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5", controlnet=controlnet)
    video = pipe(prompt="a robot dancing", control_frames=edges, generator=torch.Generator().manual_seed(0)).frames[0]
    export_to_video(video, "out.mp4", fps=frames.fps or 8)

(or the guide's recipe: ``StableDiffusionControlNetPipeline`` + ``CrossFrameAttnProcessor`` with ``image=edges``).

``canny_edges`` is OpenCV's ``cv2.Canny(frame, low, high)`` (3x3 Sobel, L1 gradient, per-pixel strongest channel,
hysteresis over 8-neighbours) written in numpy; it gives cv2's edges bit for bit (tested against cv2 when it is
installed) without the dependency. ``backend="cv2"`` calls OpenCV itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image

from .frames import Frames, frames_to_uint8

TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)  # tan(22.5 deg) in OpenCV's 15-bit fixed point


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives (h, w, c) int32 with replicated borders."""
    p = np.pad(img.astype(np.int32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    smooth_y = p[:-2] + 2 * p[1:-1] + p[2:]  # (h, w+2, c)
    smooth_x = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]  # (h+2, w, c)
    return smooth_y[:, 2:] - smooth_y[:, :-2], smooth_x[2:] - smooth_x[:-2]


def _strongest_channel(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, the channel with the largest |dx| + |dy| (the first on ties): (dx, dy, magnitude) (h, w)."""
    mag = np.abs(dx) + np.abs(dy)
    best = np.argmax(mag, axis=-1)[..., None]
    return (np.take_along_axis(dx, best, -1)[..., 0], np.take_along_axis(dy, best, -1)[..., 0],
            np.take_along_axis(mag, best, -1)[..., 0])


def _non_max_suppression(dx: np.ndarray, dy: np.ndarray, mag: np.ndarray, low: int) -> np.ndarray:
    """Candidates: magnitude above ``low`` and a local maximum across the gradient direction (OpenCV's rules)."""
    h, w = mag.shape
    m = np.pad(mag, 1)  # zero magnitude outside the frame

    def at(oy, ox):
        return m[1 + oy : 1 + oy + h, 1 + ox : 1 + ox + w]

    xs, ys = np.abs(dx).astype(np.int64), np.abs(dy).astype(np.int64) << 15
    tg22x = xs * TG22
    tg67x = tg22x + (xs << 16)
    s = np.where((dx ^ dy) < 0, -1, 1)
    horizontal = (mag > at(0, -1)) & (mag >= at(0, 1))
    vertical = (mag > at(-1, 0)) & (mag >= at(1, 0))
    diag_pos = (mag > at(-1, -1)) & (mag > at(1, 1))  # s = +1: previous row x-1, next row x+1
    diag_neg = (mag > at(-1, 1)) & (mag > at(1, -1))  # s = -1
    diagonal = np.where(s > 0, diag_pos, diag_neg)
    keep = np.where(ys < tg22x, horizontal, np.where(ys > tg67x, vertical, diagonal))
    return keep & (mag > low)


def _hysteresis(candidates: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Candidates 8-connected (through candidates) to a strong pixel."""
    import torch
    import torch.nn.functional as F

    cand = torch.from_numpy(candidates)[None, None].float()
    edges = torch.from_numpy(strong & candidates)[None, None].float()
    while True:
        grown = F.max_pool2d(edges, 3, stride=1, padding=1) * cand
        if torch.equal(grown, edges):
            return edges[0, 0].bool().numpy()
        edges = grown


def canny(image: np.ndarray, low_threshold: float, high_threshold: float) -> np.ndarray:
    """``cv2.Canny(image, low_threshold, high_threshold)`` for one uint8 (h, w) or (h, w, c) image -> (h, w) uint8 0/255."""
    if image.ndim == 2:
        image = image[..., None]
    low, high = int(np.floor(low_threshold)), int(np.floor(high_threshold))
    if low > high:
        low, high = high, low
    dx, dy, mag = _strongest_channel(*_sobel(image))
    candidates = _non_max_suppression(dx, dy, mag, low)
    return _hysteresis(candidates, mag > high).astype(np.uint8) * 255


def canny_edges(frames: Frames, low_threshold: float = 100, high_threshold: float = 200, backend: str = "numpy",
                output_type: str = "pil") -> list[PIL.Image.Image] | np.ndarray:
    """Canny edges of every frame, as 3-channel control images (white edges on black).

    ``frames``: PIL frames (``load_video``'s output), (f, h, w, c) arrays or tensors, uint8 or floats in [0, 1].
    ``backend``: "numpy" (built in, cv2-exact) or "cv2" (OpenCV, needs ``pip install opencv-python-headless``).
    ``output_type``: "pil" (a list of RGB images) or "np" ((f, h, w, 3) uint8).
    """
    if not (isinstance(low_threshold, (int, float)) and isinstance(high_threshold, (int, float))) or min(low_threshold, high_threshold) < 0:
        raise ValueError(f"thresholds must be non-negative numbers, got {low_threshold!r}, {high_threshold!r} (the guide uses 100, 200)")
    if output_type not in ("pil", "np"):
        raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
    pixels = frames_to_uint8(frames, what="canny_edges frames")  # f h w 3
    detect = _canny_backend(backend)
    edges = np.stack([detect(frame, low_threshold, high_threshold) for frame in pixels])
    edges = np.repeat(edges[..., None], 3, axis=-1)
    return [PIL.Image.fromarray(e) for e in edges] if output_type == "pil" else edges


def _canny_backend(backend: str) -> Callable:
    if backend == "numpy":
        return canny
    if backend == "cv2":
        try:
            import cv2
        except ImportError as e:
            raise ImportError("backend='cv2' needs OpenCV: pip install opencv-python-headless (or use backend='numpy', "
                              "which gives the same edges)") from e
        return lambda frame, lo, hi: cv2.Canny(np.ascontiguousarray(frame), lo, hi)
    raise ValueError(f"backend must be 'numpy' or 'cv2', got {backend!r}")


def pose_frames(frames: Frames, detector: Any = None, **detector_kwargs: Any) -> list[PIL.Image.Image]:
    """OpenPose skeleton images of every frame, for an openpose ControlNet.

    ``detector``: any callable PIL image -> PIL image (e.g. ``controlnet_aux.OpenposeDetector``). Without one,
    ``OpenposeDetector.from_pretrained("lllyasviel/Annotators")`` from controlnet_aux is used when it is installed.
    Frames that already are pose images (the guide's pose video) need no detector: pass them as control frames.
    """
    if detector is None:
        try:
            from controlnet_aux import OpenposeDetector
        except ImportError as e:
            raise ImportError(
                "pose_frames needs a pose detector: `pip install controlnet_aux` (it downloads lllyasviel/Annotators), "
                "or pass detector=<callable PIL -> PIL>, or supply pose images as the control frames directly"
            ) from e
        detector = OpenposeDetector.from_pretrained("lllyasviel/Annotators")
    if not callable(detector):
        raise TypeError(f"detector must be callable (PIL image -> pose image), got {type(detector).__name__}")
    pil = [PIL.Image.fromarray(f) for f in frames_to_uint8(frames, what="pose_frames frames")]
    out = []
    for frame in pil:
        pose = detector(frame, **detector_kwargs)
        out.append(pose if isinstance(pose, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(pose)))
    return out
