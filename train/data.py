"""Procedural captioned clips: one shape of a named colour on a named background, moving or changing size.

Every clip is drawn from a :class:`ClipSpec` (attributes + geometry) that :func:`sample_specs` makes from a seed,
and :func:`render` turns specs into frames with anti-aliased edges (signed distances, no randomness), so a seed
reproduces the same clips on any machine. Captions read like ``"a red circle moving right"`` or
``"a blue triangle growing on a white background"``; a caption that names no background means black.

Held-out split: :data:`HELD_OUT_COMBOS` lists 12 (colour, shape, motion) triples that never occur in training
(every colour, shape and motion still occurs in training, in other combinations). ``split="train"`` samples the
other 96 triples, ``split="held_out"`` only these 12.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.50, 0.05),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.5, 0.5, 0.5),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
MOTIONS = DIRECTIONS + ("growing", "shrinking")
DEFAULT_BACKGROUND = "black"

# unit displacement (x right, y down) of each direction
_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# half-extent of each shape in units of its size parameter r (for keeping it inside the frame)
_EXTENT = {"circle": 1.0, "square": 0.85, "triangle": 1.3}


def _held_out() -> frozenset[tuple[str, str, str]]:
    """Two triples per colour, each motion exactly twice, each shape four times."""
    colours = list(COLOURS)
    out = set()
    for i, colour in enumerate(colours):
        out.add((colour, SHAPES[i % 3], MOTIONS[i]))
        out.add((colour, SHAPES[(i + 1) % 3], MOTIONS[(i + 3) % 6]))
    return frozenset(out)


HELD_OUT_COMBOS = _held_out()
ALL_COMBOS = tuple(itertools.product(COLOURS, SHAPES, MOTIONS))
TRAIN_COMBOS = tuple(c for c in ALL_COMBOS if c not in HELD_OUT_COMBOS)
SPLITS = ("train", "held_out")


@dataclass(frozen=True)
class ClipSpec:
    """What a clip shows (colour, shape, motion, background) and where (centre, size at the first/last frame)."""

    colour: str
    shape: str
    motion: str
    background: str
    mention_background: bool
    x0: float  # centre at the first frame, in frame widths (0 = left edge)
    y0: float  # in frame heights (0 = top edge)
    x1: float  # centre at the last frame
    y1: float
    r0: float  # size at the first frame, in frame widths
    r1: float  # size at the last frame

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.motion, self.background if self.mention_background else None)

    @property
    def combo(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.motion)


def caption(colour: str, shape: str, motion: str, background: str | None = None) -> str:
    """``caption("red", "circle", "right")`` -> ``"a red circle moving right"``; a background adds ``" on a X background"``.

    ``"an"`` before a vowel (``"an orange square growing"``)."""
    verb = f"moving {motion}" if motion in DIRECTIONS else motion
    article = "an" if colour[0] in "aeiou" else "a"
    text = f"{article} {colour} {shape} {verb}"
    return f"{text} on a {background} background" if background else text


_CAPTION_RE = re.compile(
    r"^\s*an?\s+(?P<colour>\w+)\s+(?P<shape>\w+)\s+(?:moving\s+(?P<direction>\w+)|(?P<size>growing|shrinking))"
    r"(?:\s+on\s+an?\s+(?P<background>\w+)\s+background)?\s*$"
)


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption asks for: ``{"colour", "shape", "motion", "background"}`` (background defaults to black).

    Raises ValueError for text that is not in the caption grammar or names an unknown colour/shape/motion."""
    m = _CAPTION_RE.match(text.lower())
    if m is None:
        raise ValueError(f"{text!r} is not a caption like 'a red circle moving right [on a white background]'")
    attrs = {
        "colour": m["colour"], "shape": m["shape"], "motion": m["direction"] or m["size"],
        "background": m["background"] or DEFAULT_BACKGROUND,
    }  # fmt: skip
    for key, known in (("colour", COLOURS), ("shape", SHAPES), ("motion", MOTIONS), ("background", BACKGROUNDS)):
        if attrs[key] not in known:
            raise ValueError(f"{text!r}: unknown {key} {attrs[key]!r}; expected one of {list(known)}")
    return attrs


def vocabulary() -> list[str]:
    """Every word a caption can contain, sorted."""
    words = {"a", "an", "on", "background", "moving", *COLOURS, *SHAPES, *MOTIONS, *BACKGROUNDS}
    return sorted(words)


def combos(split: str) -> tuple[tuple[str, str, str], ...]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return TRAIN_COMBOS if split == "train" else tuple(sorted(HELD_OUT_COMBOS))


def _geometry(rng: np.random.Generator, shape: str, motion: str, margin: float = 0.03) -> tuple[float, ...]:
    """(x0, y0, x1, y1, r0, r1): a moving shape crosses the frame from near one edge to near the other (a strong,
    learnable motion signal); a growing/shrinking one stays near the centre. The shape stays inside every frame."""
    if motion in DIRECTIONS:
        r = rng.uniform(0.12, 0.17)
        lo, hi = _EXTENT[shape] * r + margin, 1 - _EXTENT[shape] * r - margin
        start, end = lo + rng.uniform(0.0, 0.06), hi - rng.uniform(0.0, 0.06)  # along the motion, for +1 directions
        across = rng.uniform(lo, hi)
        ux, uy = _STEP[motion]
        if ux + uy < 0:
            start, end = 1 - start, 1 - end
        if ux:
            return start, across, end, across, r, r
        return across, start, across, end, r, r
    small, big = rng.uniform(0.06, 0.08), rng.uniform(0.19, 0.23)
    r0, r1 = (small, big) if motion == "growing" else (big, small)
    x, y = 0.5 + rng.uniform(-0.08, 0.08, size=2)
    return x, y, x, y, r0, r1


def sample_specs(n: int, seed: int, split: str = "train") -> list[ClipSpec]:
    """``n`` random clips of ``split``'s combinations, uniform over combinations and backgrounds; same seed, same clips."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = combos(split)
    rng = np.random.default_rng(seed)
    specs = []
    for _ in range(n):
        colour, shape, motion = pool[rng.integers(len(pool))]
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        mention = bool(background != DEFAULT_BACKGROUND or rng.random() < 0.5)
        specs.append(ClipSpec(colour, shape, motion, background, mention, *map(float, _geometry(rng, shape, motion))))
    return specs


def _sdf(shape: str, px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points relative to the centre to a shape of size r."""
    if shape == "circle":
        return np.sqrt(px**2 + py**2) - r
    if shape == "square":
        return np.maximum(np.abs(px), np.abs(py)) - 0.85 * r
    # upward equilateral triangle, circumradius 1.3 r: the largest of the three edge distances
    big_r = 1.3 * r
    d = py - big_r / 2  # bottom edge
    for angle in (np.pi / 6, 5 * np.pi / 6):  # the two slanted edges' outward normals (y down)
        d = np.maximum(d, px * np.cos(angle) - py * np.sin(angle) - big_r / 2)
    return d


def render(specs: list[ClipSpec], size: int = 32, frames: int = 8) -> np.ndarray:
    """Frames of each clip: float32 array (n, frames, size, size, 3) in [0, 1]. Edges are anti-aliased."""
    if size < 8 or frames < 2:
        raise ValueError(f"need size >= 8 and frames >= 2, got size={size}, frames={frames}")
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32)[:, None, None]  # f 1 1
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    gy, gx = np.meshgrid(coords, coords, indexing="ij")  # h w
    out = np.empty((len(specs), frames, size, size, 3), dtype=np.float32)
    for i, s in enumerate(specs):
        cx, cy = s.x0 + t * (s.x1 - s.x0), s.y0 + t * (s.y1 - s.y0)
        r = s.r0 + t * (s.r1 - s.r0)
        cover = np.clip(0.5 - _sdf(s.shape, gx - cx, gy - cy, r) * size, 0.0, 1.0)[..., None]  # f h w 1
        fg, bg = np.asarray(COLOURS[s.colour], np.float32), np.asarray(BACKGROUNDS[s.background], np.float32)
        out[i] = bg + cover * (fg - bg)
    return out


def eval_prompts(split: str, backgrounds: tuple[str, ...] | None = None) -> list[str]:
    """One caption per combination of ``split`` and background (black ones without the background phrase)."""
    backgrounds = backgrounds or tuple(BACKGROUNDS)
    return [caption(c, s, m, None if bg == DEFAULT_BACKGROUND else bg) for (c, s, m) in combos(split) for bg in backgrounds]
