"""``load_image`` (drop-in for ``diffusers.utils.load_image``) and the mode conversion behind it."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import numpy as np
import PIL.Image
import PIL.ImageOps

from .files import DEFAULT_TIMEOUT, MediaError, fetch_bytes, is_url, local_file

WHITE = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def has_alpha(image: PIL.Image.Image) -> bool:
    """Whether ``image`` has an alpha channel or a transparent palette / colour key."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_rgb(image: PIL.Image.Image, background: tuple[int, int, int] = WHITE) -> PIL.Image.Image:
    """Convert ``image`` to an 8-bit RGB image the way a person looking at it would expect.

    - transparency (RGBA, LA, PA, P or L with a transparent colour): composited over ``background`` (white),
      not dropped, so hidden pixels never show up as black or random colours;
    - greyscale ``L`` / bilevel ``1``: grey replicated to R, G and B;
    - 16-bit greyscale ``I;16*`` and 32-bit ``I``: the 0..65535 range scaled to 0..255 (``round(v / 257)``,
      values outside that range clipped), where Pillow's own conversion clips everything above 255 to white;
    - CMYK: through the embedded ICC profile when there is one, else Pillow's CMYK -> RGB;
    - anything else Pillow knows (YCbCr, float ``F``, ...): Pillow's ``convert("RGB")``.
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if has_alpha(image):
        rgba = image.convert("RGBA")
        canvas = PIL.Image.new("RGBA", rgba.size, (*background, 255))
        return PIL.Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.float64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return PIL.Image.fromarray(grey).convert("RGB")
    if image.mode == "CMYK":
        return _cmyk_to_rgb(image)
    return image.convert("RGB")


def _cmyk_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile or no littlecms: fall back to the plain formula
            pass
    return image.convert("RGB")


def _open(source: str | os.PathLike, timeout: float) -> PIL.Image.Image:
    what = "load_image"
    if is_url(source):
        data = fetch_bytes(source, what, timeout)
        name, stream = source, io.BytesIO(data)
    else:
        name = str(source)
        stream = local_file(source, what)
    try:
        image = PIL.Image.open(stream)
        image.load()
    except PIL.UnidentifiedImageError as err:
        raise MediaError(f"{what}: {name!r} is not an image Pillow can read.") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"{what}: {name!r} could not be decoded ({err}); the file may be truncated.") from err
    return image


def load_image(
    image: str | os.PathLike | PIL.Image.Image,
    convert_method: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> PIL.Image.Image:
    """Load ``image`` as a PIL image, upright and in RGB.

    Args:
        image: a local path (``str`` or ``os.PathLike``), an ``http://`` / ``https://`` URL (downloaded with
            ``timeout`` seconds; an HTTP error or an HTML page instead of an image raises :class:`MediaError`),
            or a ``PIL.Image.Image``.
        convert_method: called on the loaded image (EXIF orientation applied, original mode) instead of the
            default RGB conversion, as in diffusers; e.g. ``lambda im: im.convert("L")``.
        timeout: seconds to wait for a URL before giving up.

    Returns:
        The image with its EXIF orientation applied (``ImageOps.exif_transpose``), converted by
        ``convert_method`` or else by :func:`to_rgb`: transparency composited on white, greyscale replicated,
        16-bit greyscale scaled (not clipped) to 8 bits, CMYK converted to RGB.

    Raises:
        MediaFileNotFoundError: a local path that does not exist (also a ``FileNotFoundError``).
        MediaError: an unreachable URL, a file that is not an image (also a ``ValueError``).
        TypeError: ``image`` is none of the types above.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open(image, timeout)
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(
            f"load_image: expected a local path, an http(s) URL or a PIL.Image.Image, got {type(image).__name__}. "
            "For numpy arrays or tensors use vidiff.media.to_pil_frames."
        )
    image = PIL.ImageOps.exif_transpose(image)
    if convert_method is not None:
        return convert_method(image)
    return to_rgb(image)
