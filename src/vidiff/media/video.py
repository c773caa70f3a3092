"""``load_video``: drop-in for ``diffusers.utils.load_video``, decoding through PyAV (no imageio / ffmpeg binary)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import av
import PIL.Image
from av.video.reformatter import Interpolation

from .files import DEFAULT_TIMEOUT, MediaError, downloaded, is_url, local_file
from .image import to_rgb

_DECODE_SCALING = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND
_PILLOW_ANIMATIONS = ("GIF", "PNG", "WEBP")  # GIF, APNG and animated WebP: Pillow handles disposal and alpha


class VideoFrames(list):
    """A list of RGB PIL frames that also carries the frame rate of the file it was read from.

    ``fps`` is a float, or ``None`` when the file records none (e.g. a GIF without delays). It is a plain
    ``list`` otherwise; slicing or ``list(frames)`` gives ordinary lists without ``fps``.
    """

    def __init__(self, frames: Iterable[PIL.Image.Image] = (), fps: float | None = None) -> None:
        super().__init__(frames)
        self.fps = fps

    def __repr__(self) -> str:
        size = f", {self[0].width}x{self[0].height}" if self and hasattr(self[0], "width") else ""
        return f"VideoFrames({len(self)} frames{size}, fps={self.fps})"


def load_video(
    video: str | os.PathLike,
    convert_method: Callable[[list[PIL.Image.Image]], Any] | None = None,
    return_fps: bool = False,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> VideoFrames | tuple[Any, float]:
    """Read a video (mp4, webm, mov, mkv, GIF, animated PNG / WebP, ...) into RGB PIL frames.

    Args:
        video: a local path or an ``http://`` / ``https://`` URL (downloaded to a temporary file, with
            ``timeout`` seconds per network operation, and deleted afterwards).
        convert_method: called on the list of RGB frames; its result is returned instead (a list result is
            wrapped in :class:`VideoFrames` again so ``fps`` stays available).
        return_fps: also return the frame rate, as ``(frames, fps)`` (diffusers' form); raises if the file
            records none.
        timeout: seconds to wait for a URL before giving up.

    Returns:
        A :class:`VideoFrames` (a ``list`` of PIL images with an ``.fps`` attribute), or ``(frames, fps)``.
        Frames come upright: a rotation in the stream's display matrix (phone videos) is applied, as ffmpeg
        does. Transparent GIF / APNG / WebP pixels are composited on white.

    Raises:
        MediaFileNotFoundError: a local path that does not exist (also a ``FileNotFoundError``).
        MediaError: an unreachable URL, a file that is not a readable video, or one with no frames
            (also a ``ValueError``).
    """
    what = "load_video"
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a local path or an http(s) URL, got {type(video).__name__}.")
    if is_url(video):
        with downloaded(video, what, timeout) as path:
            frames = read_frames(path, name=video)
    else:
        frames = read_frames(local_file(video, what), name=str(video))
    result: Any = frames
    if convert_method is not None:
        result = convert_method(frames)
        if isinstance(result, list) and not isinstance(result, VideoFrames):
            result = VideoFrames(result, fps=frames.fps)
    if not return_fps:
        return result
    if frames.fps is None:
        raise MediaError(f"{what}: {video!r} records no frame rate, so return_fps=True cannot be honoured.")
    return result, frames.fps


def read_frames(path: Path, name: str | None = None) -> VideoFrames:
    """Decode the local file ``path`` into :class:`VideoFrames` (``name`` is used in error messages)."""
    name = name or str(path)
    if path.stat().st_size == 0:
        raise MediaError(f"load_video: {name!r} is an empty file.")
    try:
        with PIL.Image.open(path) as image:
            if image.format in _PILLOW_ANIMATIONS:
                return _read_with_pillow(image, name)
    except PIL.UnidentifiedImageError:
        pass  # not an image: a video container
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise MediaError(f"load_video: {name!r} could not be decoded ({err}); the file may be truncated.") from err
    return _read_with_av(path, name)


def _read_with_pillow(image: PIL.Image.Image, name: str) -> VideoFrames:
    frames, total_ms = [], 0
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(to_rgb(image.copy()))
        total_ms += image.info.get("duration") or 0
    return VideoFrames(frames, fps=len(frames) * 1000 / total_ms if total_ms else None)


def _read_with_av(path: Path, name: str) -> VideoFrames:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"load_video: {name!r} has no video stream (audio only?).")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [_upright_image(frame) for frame in container.decode(stream)]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except av.FFmpegError as err:
        raise MediaError(f"load_video: could not read {name!r} as a video ({err}).") from err
    if not frames:
        raise MediaError(f"load_video: {name!r} contains no video frames.")
    return VideoFrames(frames, fps=float(rate) if rate else None)


def _upright_image(frame: av.VideoFrame) -> PIL.Image.Image:
    """The frame as an RGB image, turned by the display-matrix rotation (degrees counter-clockwise).

    Chroma is interpolated, not repeated, and rounded accurately (swscale's defaults are nearest-neighbour
    chroma and fast rounding: ~5x the colour error on smooth gradients). The frame's own colour matrix and
    range tags are used; untagged video is read as BT.601 limited range, as ffmpeg does.
    """
    image = frame.to_image(interpolation=_DECODE_SCALING, src_color_range=frame.color_range or None)
    rotation = frame.rotation
    return image.rotate(rotation, expand=True) if rotation else image
