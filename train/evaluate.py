"""Prompt adherence of a text-to-video checkpoint on the shapes task: colour, shape, motion and background.

    python -m train.evaluate --model src/vidiff/default_model --json report.json --strip samples.gif
    python -m train.evaluate --check-detector            # the detector on ground-truth clips (should be ~100%)

Two prompt sets, both rendered with seeds the model never saw:

* ``seen``: one prompt per training (colour, shape, motion) combination, backgrounds in turn ("held-out seeds");
* ``unseen``: the 12 held-out combinations of ``train.data`` on every background, two seeds each.

The detector reads the frames alone: the background is the median border colour; the foreground is every pixel
far from it; colour = the nearest palette colour to the foreground's median; shape = how much of its bounding
box the foreground fills (triangle ~0.5, circle ~0.79, square ~1); motion = the fitted centre displacement and
size change over the clip (the larger of the two, relative to the training ranges, decides: left/right/up/down
or growing/shrinking; neither -> "static", counted wrong). ``direction`` is motion accuracy on the prompts that
name a direction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import data

ATTRIBUTES = ("colour", "shape", "motion", "background")
FG_THRESHOLD = 0.25  # RGB distance from the background that counts as foreground
MIN_PIXELS = 3


def _nearest(colour: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    names = list(palette)
    dist = np.linalg.norm(np.asarray([palette[n] for n in names]) - colour, axis=1)
    return names[int(np.argmin(dist))]


def _fit_end_change(values: np.ndarray, t: np.ndarray) -> float:
    """Change between the first and last frame of a least-squares line through ``values`` at times ``t``."""
    slope = np.polyfit(t, values, 1)[0]
    return float(slope * (t[-1] - t[0]))


def _shape_of(masks: np.ndarray) -> str:
    fills = []
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(ys) >= 12:
            fills.append(len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    if not fills:
        return "none"
    fill = float(np.median(fills))
    return "triangle" if fill < 0.64 else "circle" if fill < 0.89 else "square"


def _motion_of(masks: np.ndarray) -> str:
    f, h, w = masks.shape
    t, cx, cy, size = [], [], [], []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys) >= MIN_PIXELS:
            t.append(i / (f - 1))
            cx.append(xs.mean() / w)
            cy.append(ys.mean() / h)
            size.append(np.sqrt(len(ys) / (h * w)))
    if len(t) < max(2, f // 2):
        return "none"
    t = np.asarray(t)
    dx, dy = _fit_end_change(np.asarray(cx), t), _fit_end_change(np.asarray(cy), t)
    size = np.asarray(size)
    growth = _fit_end_change(np.log(size), t)
    move_score, size_score = np.hypot(dx, dy) / 0.38, abs(growth) / 1.0  # relative to the training ranges
    if max(move_score, size_score) < 0.35:
        return "static"
    if size_score > move_score:
        return "growing" if growth > 0 else "shrinking"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def detect(video: np.ndarray) -> dict[str, str]:
    """Attributes seen in one video, float (f, h, w, 3) in [0, 1]."""
    video = np.asarray(video, dtype=np.float32)
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1).reshape(-1, 3)
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(video - bg, axis=-1)  # f h w
    fg = dist > FG_THRESHOLD
    out = {"background": _nearest(bg, data.BACKGROUNDS)}
    if fg.sum() < MIN_PIXELS:
        return {**out, "colour": "none", "shape": "none", "motion": "none"}
    colour = np.median(video[fg], axis=0)
    out["colour"] = _nearest(colour, data.COLOURS)
    # half-coverage masks: nearer the foreground colour than the background
    core = dist > 0.5 * float(np.linalg.norm(colour - bg))
    out["shape"] = _shape_of(core)
    out["motion"] = _motion_of(core)
    return out


def score(records: list[dict]) -> dict[str, float]:
    """Fraction of videos whose detected attribute matches the prompt, per attribute (+ direction-only motion)."""
    res = {a: float(np.mean([r["want"][a] == r["got"][a] for r in records])) for a in ATTRIBUTES}
    directional = [r for r in records if r["want"]["motion"] in data.DIRECTIONS]
    res["direction"] = float(np.mean([r["want"]["motion"] == r["got"]["motion"] for r in directional])) if directional else float("nan")
    res["all"] = float(np.mean([all(r["want"][a] == r["got"][a] for a in ATTRIBUTES) for r in records]))
    res["videos"] = len(records)
    return res


def prompt_sets(unseen_seeds: int = 2) -> dict[str, list[tuple[str, int]]]:
    """{"seen": [(prompt, seed)...], "unseen": [...]}: fixed, seeds from 10_000 up (never used in training)."""
    bgs = list(data.BACKGROUNDS)
    seen = []
    for i, (c, s, m) in enumerate(data.combos("train")):
        bg = bgs[i % len(bgs)]
        seen.append((data.caption(c, s, m, None if bg == data.DEFAULT_BACKGROUND else bg), 10_000 + i))
    unseen = [(p, 20_000 + 100 * k + j) for j, p in enumerate(data.eval_prompts("held_out")) for k in range(unseen_seeds)]
    return {"seen": seen, "unseen": unseen}


def render_prompts(pipe, items: list[tuple[str, int]], steps: int, guidance: float, frames: int, batch: int) -> list[np.ndarray]:
    import torch

    videos = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        gens = [torch.Generator("cpu").manual_seed(seed) for _, seed in chunk]
        out = pipe([p for p, _ in chunk], num_frames=frames, num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, output_type="np").frames  # fmt: skip
        videos.extend(np.asarray(out))
    return videos


def evaluate(pipe, steps: int = 50, guidance: float = 9.0, frames: int = 8, batch: int = 16, limit: int | None = None,
             log=print) -> tuple[dict, dict[str, list]]:
    report, videos = {}, {}
    for name, items in prompt_sets().items():
        items = items[:limit] if limit else items
        start = time.perf_counter()
        vids = render_prompts(pipe, items, steps, guidance, frames, batch)
        records = [{"prompt": p, "seed": s, "want": data.parse_caption(p), "got": detect(v)} for (p, s), v in zip(items, vids)]
        report[name] = {**score(records), "seconds": round(time.perf_counter() - start, 1), "records": records}
        videos[name] = vids
        log(f"{name:7s} " + "  ".join(f"{k} {report[name][k]:.1%}" for k in (*ATTRIBUTES, "direction", "all"))
            + f"  ({len(records)} videos, {report[name]['seconds']}s)")
    return report, videos


def check_detector(n: int = 300, size: int = 32, frames: int = 8, transform=None) -> dict:
    """The detector's accuracy on ground-truth clips of both splits (passed through ``transform`` if given)."""
    report = {}
    for split in data.SPLITS:
        specs = data.sample_specs(n, seed=12345, split=split)
        clips = data.render(specs, size, frames)
        clips = transform(clips) if transform is not None else clips
        records = [{"want": data.parse_caption(s.caption), "got": detect(c)} for s, c in zip(specs, clips)]
        report[split] = score(records)
    return report


def save_strip(path: str | Path, videos: list[np.ndarray], prompts: list[str], scale: int = 4, fps: int = 8) -> None:
    """An animated GIF: the videos side by side (upscaled ``scale`` times), each with its prompt under it."""
    from PIL import Image, ImageDraw

    f, h, w = videos[0].shape[:3]
    cell_w, text_h = w * scale, 28
    words = [p.split() for p in prompts]
    lines = [(" ".join(ws[: len(ws) // 2 + 1]), " ".join(ws[len(ws) // 2 + 1 :])) for ws in words]
    frames_out = []
    for i in range(f):
        canvas = Image.new("RGB", (cell_w * len(videos), h * scale + text_h), "white")
        draw = ImageDraw.Draw(canvas)
        for k, (v, (l1, l2)) in enumerate(zip(videos, lines)):
            img = Image.fromarray((np.clip(v[i], 0, 1) * 255).round().astype(np.uint8)).resize((cell_w, h * scale), Image.NEAREST)
            canvas.paste(img, (k * cell_w, 0))
            draw.text((k * cell_w + 3, h * scale + 2), l1, fill="black")
            draw.text((k * cell_w + 3, h * scale + 14), l2, fill="black")
        frames_out.append(canvas)
    frames_out[0].save(path, save_all=True, append_images=frames_out[1:], duration=int(1000 / fps), loop=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: vidiff's shipped default model)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale (default 3, as vidiff generate with the built-in model)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts of each set (quick look)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the full report (per-video records) here")
    p.add_argument("--strip", default=None, help="write a GIF strip of a few unseen-combination videos here")
    p.add_argument("--check-detector", action="store_true", help="only measure the detector on ground-truth clips")
    args = p.parse_args(argv)
    if args.check_detector:
        print(json.dumps(check_detector(), indent=2))
        return 0

    import torch

    import vidiff

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or str(Path(vidiff.__file__).parent / "default_model")
    pipe = vidiff.DiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    report, videos = evaluate(pipe, args.steps, args.guidance, batch=args.batch, limit=args.limit)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "steps": args.steps, "guidance": args.guidance, **report}, indent=1))
    if args.strip:
        records = report["unseen"]["records"]
        picks = list(range(0, len(records), max(1, len(records) // 6)))[:6]
        save_strip(args.strip, [videos["unseen"][i] for i in picks], [records[i]["prompt"] for i in picks])
    return 0


if __name__ == "__main__":
    sys.exit(main())
