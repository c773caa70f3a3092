"""``export_to_video`` / ``export_to_gif``: drop-ins for diffusers' exporters, written through PyAV and Pillow.

Both take any frames input :mod:`vidiff.media.frames` accepts, validate it before touching the disk, and write
atomically: to a temporary file in the target folder that is renamed over the target only once complete.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, Interpolation

from .files import atomic_output, output_path
from .frames import Frames, frames_to_uint8, to_pil_frames

logger = logging.getLogger(__name__)

# Chroma averaged over each 2x2 block from full-resolution input, accurately rounded (swscale's defaults drop
# chroma samples and round fast). Averaging sites chroma at the block centre: x264's chromaloc=1 tags it so, and
# decoders interpolate from there (the untagged H.264 default, left-sited, doubles the colour error on gradients).
_ENCODE_SCALING = Interpolation.AREA | Interpolation.FULL_CHR_H_INP | Interpolation.ACCURATE_RND
_CONTAINERS = {"": "mp4", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_FASTSTART = {"movflags": "+faststart"}  # index at the front: browsers start playing before the download ends


def export_to_video(
    video_frames: Frames,
    output_video_path: str | os.PathLike | None = None,
    fps: float = 10,
    quality: float | None = 5.0,
    bitrate: int | None = None,
    macro_block_size: int | None = 16,
) -> str:
    """Write frames to an H.264 (yuv420p) video and return its path.

    Args:
        video_frames: frames in any form :mod:`vidiff.media.frames` accepts (PIL list, float [0, 1] or uint8
            numpy / tensor, the ``.frames`` of a pipeline output holding one video). Floats are clipped to
            [0, 1] and rounded; NaN raises.
        output_video_path: ``.mp4`` (also ``.m4v``, ``.mov``, ``.mkv``); ``None`` writes a new temporary ``.mp4``.
        fps: frames per second; any positive number (29.97 works).
        quality: 0 (worst) to 10 (best), as in diffusers/imageio: x264 ``crf = int((1 - quality / 10) * 51)``, so the
            default 5 is crf 25 and 10 is crf 0 (lossless, which some players refuse). ``None`` leaves x264's default
            (crf 23). Ignored when ``bitrate`` is set.
        bitrate: target bits per second instead of ``quality``.
        macro_block_size: accepted for diffusers compatibility and validated, but frames are never rescaled to a
            multiple of it: x264 encodes any even size. An odd width or height is padded by one pixel,
            replicating the last column / row, because yuv420p needs even sizes; (F, 33, 47, 3) frames give a
            34 x 48 video.

    The video is tagged BT.709 (limited range) and the pixels are converted with that matrix, so players show the
    colours that were written. The file is written to a temporary name beside the target and renamed at the
    end: if encoding fails, neither a partial file nor the temporary one is left behind.
    """
    what = "export_to_video"
    frames = pad_to_even(frames_to_uint8(video_frames, what))
    rate = frame_rate(fps, what)
    crf = _crf(quality, bitrate, what)
    _check_macro_block_size(macro_block_size, what)
    path, placeholder = output_path(output_video_path, ".mp4", what)
    container_format = _container_format(path, what)
    with atomic_output(path, placeholder) as tmp:
        encode_h264(frames, tmp, rate, container_format, crf=crf, bitrate=bitrate)
    return str(path)


def export_to_gif(image: Frames, output_gif_path: str | os.PathLike | None = None, fps: float = 10) -> str:
    """Write frames to a looping GIF and return its path (``None``: a new temporary ``.gif``).

    Takes the same frames inputs as :func:`export_to_video`. GIF stores delays in 1/100 s, so each frame gets a
    whole number of centiseconds chosen so the running time stays within 5 ms of ``i / fps`` (fps=8: 120, 130,
    120, 130, ... ms, where diffusers' ``1000 // fps`` gives 125 ms, stored as 120 ms: the GIF plays 4 % fast).
    Pillow merges identical consecutive frames into one longer frame. Written atomically like
    :func:`export_to_video`.
    """
    what = "export_to_gif"
    frames = to_pil_frames(image, what)
    rate = frame_rate(fps, what)
    if rate > 50:
        logger.warning("export_to_gif: fps=%s; most GIF players show frames shorter than 20 ms for 100 ms.", fps)
    durations = gif_durations(len(frames), rate)
    path, placeholder = output_path(output_gif_path, ".gif", what)
    with atomic_output(path, placeholder) as tmp:
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], optimize=False, duration=durations, loop=0
        )
    return str(path)


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad (F, H, W, C) frames by edge replication to an even height and width (what yuv420p needs)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def frame_rate(fps: float, what: str) -> Fraction:
    """``fps`` (int, float, Fraction, numpy scalar) as an exact fraction (29.97 -> 2997/100)."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"{what}: fps must be a positive number, got {fps!r}.")
    return (fps if isinstance(fps, Fraction) else Fraction(float(fps))).limit_denominator(1001)


def gif_durations(count: int, rate: Fraction) -> list[int]:
    """Per-frame GIF delays in ms, whole centiseconds whose running sum tracks ``i / rate`` (at least 10 ms)."""
    ticks = [round(i * 100 / rate) for i in range(count + 1)]
    return [max(1, b - a) * 10 for a, b in zip(ticks, ticks[1:])]


def _crf(quality: float | None, bitrate: int | None, what: str) -> int | None:
    if bitrate is not None:
        if isinstance(bitrate, bool) or not isinstance(bitrate, numbers.Integral) or bitrate <= 0:
            raise ValueError(f"{what}: bitrate must be a positive integer (bits per second), got {bitrate!r}.")
        return None
    if quality is None:
        return None
    if isinstance(quality, bool) or not isinstance(quality, numbers.Real) or not 0 <= quality <= 10:
        raise ValueError(f"{what}: quality must be a number from 0 (worst) to 10 (best) or None, got {quality!r}.")
    return int((1 - quality / 10) * 51)


def _check_macro_block_size(size: int | None, what: str) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
        raise ValueError(f"{what}: macro_block_size must be a positive integer or None, got {size!r}.")


def _container_format(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix in _CONTAINERS:
        return _CONTAINERS[suffix]
    hint = " Use export_to_gif for GIFs." if suffix == ".gif" else ""
    raise ValueError(f"{what}: cannot write H.264 to a {suffix!r} file; use .mp4, .m4v, .mov or .mkv.{hint}")


def encode_h264(
    frames: np.ndarray,
    path: str | os.PathLike,
    rate: Fraction,
    container_format: str = "mp4",
    crf: int | None = None,
    bitrate: int | None = None,
) -> None:
    """Encode even-sized (F, H, W, 3) uint8 RGB frames to H.264 yuv420p, BT.709 limited range, at ``rate`` fps."""
    height, width = frames.shape[1:3]
    options = {"x264-params": "chromaloc=1"} | ({} if crf is None else {"crf": str(crf)})
    muxer_options = _FASTSTART if container_format in ("mp4", "mov") else {}
    with av.open(str(path), mode="w", format=container_format, options=muxer_options) as container:
        stream = container.add_stream("libx264", rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if bitrate is not None:
            stream.bit_rate = int(bitrate)
        codec = stream.codec_context
        codec.colorspace, codec.color_range = Colorspace.ITU709, ColorRange.MPEG
        codec.color_primaries, codec.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame = frame.reformat(
                format="yuv420p",
                dst_colorspace=Colorspace.ITU709,
                dst_color_range=ColorRange.MPEG,
                interpolation=_ENCODE_SCALING,
            )
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
