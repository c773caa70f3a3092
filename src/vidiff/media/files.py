"""Where media comes from and goes to: local paths, http(s) URLs, atomic output files.

Errors raised here subclass ``ValueError`` (what diffusers raises for a bad path or URL), so code written
against diffusers keeps catching them; a missing file is also a ``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DEFAULT_TIMEOUT = 60.0  # seconds, as diffusers' DIFFUSERS_REQUEST_TIMEOUT
_USER_AGENT = "vidiff (python urllib)"
_CHUNK = 1 << 16
# Content types that are certainly not media: an error page, a viewer page, an API answer.
_TEXT_TYPES = ("text/", "application/json", "application/xhtml", "application/xml")


class MediaError(ValueError):
    """An image or video could not be read or written; the message says which input and why."""


class MediaFileNotFoundError(MediaError, FileNotFoundError):
    """A local media path does not exist."""


def is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def local_file(source: str | os.PathLike, what: str) -> Path:
    """Return ``source`` as an existing file path, or raise a clear error naming it."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise MediaError(f"{what}: {str(source)!r} is a directory; pass the path of a file inside it.")
    raise MediaFileNotFoundError(
        f"{what}: no such file {str(source)!r} (looked at {path.resolve()}). "
        "Pass an existing local path or an http(s):// URL."
    )


@contextlib.contextmanager
def open_url(url: str, what: str, timeout: float = DEFAULT_TIMEOUT) -> Iterator:
    """Open ``url`` for reading; HTTP errors, timeouts and text/HTML answers become a :class:`MediaError`."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - only http(s) reaches here
    except urllib.error.HTTPError as err:
        raise MediaError(f"{what}: could not download {url!r}: HTTP {err.code} {err.reason}.") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise MediaError(f"{what}: could not reach {url!r} ({reason}; timeout {timeout:g} s).") from err
    with response:
        content_type = (response.headers.get("Content-Type") or "").lower()
        if content_type.startswith(_TEXT_TYPES):
            raise MediaError(
                f"{what}: {url!r} answered with a {content_type.split(';')[0]} page, not a media file. "
                "Use the URL of the file itself (GitHub: the 'raw' link; Hugging Face Hub: /resolve/, not /blob/)."
            )
        yield response


def fetch_bytes(url: str, what: str, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    with open_url(url, what, timeout) as response:
        try:
            return response.read()
        except (TimeoutError, OSError) as err:
            raise MediaError(f"{what}: download of {url!r} failed midway ({err}).") from err


@contextlib.contextmanager
def downloaded(url: str, what: str, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Path]:
    """Download ``url`` to a temporary file (keeping its suffix), yield its path, delete it afterwards."""
    suffix = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).suffix
    fd, name = tempfile.mkstemp(prefix="vidiff-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, open_url(url, what, timeout) as response:
            try:
                shutil.copyfileobj(response, out, _CHUNK)
            except (TimeoutError, OSError) as err:
                raise MediaError(f"{what}: download of {url!r} failed midway ({err}).") from err
        yield Path(name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def output_path(path: str | os.PathLike | None, suffix: str, what: str) -> tuple[Path, bool]:
    """The path to write to and whether it is a fresh temporary file (``path`` is ``None``).

    A given ``path`` must be in an existing folder; a temporary file is created empty so its name stays ours.
    """
    if path is None:
        fd, name = tempfile.mkstemp(prefix="vidiff-", suffix=suffix)
        os.close(fd)
        return Path(name), True
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise MediaFileNotFoundError(
            f"{what}: cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist. Create it first."
        )
    if path.is_dir():
        example = str(path / f"out{suffix}")
        raise MediaError(f"{what}: {str(path)!r} is a directory; pass a file path such as {example!r}.")
    return path, False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: Path, placeholder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    ``placeholder``: ``path`` is an empty file we created (see :func:`output_path`); removed too on error.
    The temporary file lives in the same folder (so the final rename is atomic) and keeps the suffix (so
    encoders that pick a format from the extension still see it). A crash never leaves a half-written ``path``.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".part{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; the result gets a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, path) if placeholder else (tmp,):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
