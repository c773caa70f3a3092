"""Errors raised while finding, reading and writing checkpoints."""

from __future__ import annotations


class CheckpointNotFoundError(FileNotFoundError):
    """A folder, hub repo, file or cached file that loading needs does not exist (or is not reachable)."""


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used: corrupt file, refused pickle, keys or shapes that do not fit."""
