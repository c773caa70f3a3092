"""Peak memory of the memory options, each alone against the plain run, on one case at a larger frame size.

    python bench/memory.py                          # t2v-mid at 256x256, 8 frames, and svd-mid at 256x256, 8 frames
    python bench/memory.py --cases t2v-mid --size 192 --frames 8

Every option runs in its own subprocess (peak RSS is per process), on vidiff only: the figures are the peak resident
memory of the whole call, its growth over the RSS after loading (what the option can shrink), and the largest
frame difference from the plain run (chunking must not change the frames: within 1e-5). The folders are bench/run.py's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: cases, folders)

# option name -> what to call on the pipeline before the run (None: the plain run) and extra call arguments
OPTIONS: dict[str, tuple[Callable | None, dict]] = {
    "plain": (None, {}),
    "decode_chunk_size=1": (None, {"decode_chunk_size": 1}),
    "enable_vae_slicing": (lambda pipe: pipe.enable_vae_slicing(), {}),
    "enable_vae_tiling": (lambda pipe: pipe.vae.enable_tiling(tile_sample_min_size=128, tile_latent_min_size=32), {}),
    "enable_forward_chunking": (lambda pipe: pipe.unet.enable_forward_chunking(chunk_size=1, dim=1), {}),
    "enable_attention_slicing": (lambda pipe: pipe.enable_attention_slicing(1), {}),
}
SVD_OPTIONS = ("plain", "decode_chunk_size=1", "enable_forward_chunking")  # its temporal VAE has no slicing / tiling


def worker(case: str, folder: Path, option: str, size: int, frames: int, out: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    import vidiff

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    spec = run.CASES[case]
    pipe = getattr(vidiff, run.PIPELINES[spec["kind"]]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    setup, extra = OPTIONS[option]
    if setup:
        setup(pipe)
    rss_load = run._peak_rss_mb()
    call = dict(spec["call"], height=size, width=size, num_frames=frames, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0))
    call.pop("decode_chunk_size", None)
    call.update(extra)
    if spec["kind"] == "svd":
        call.setdefault("decode_chunk_size", frames)  # the plain run decodes every frame at once
        call["image"] = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    else:
        call["prompt"] = "a red panda eating bamboo"
    t0 = time.perf_counter()
    with torch.inference_mode():
        video = np.asarray(pipe(**call).frames, dtype=np.float32)
    np.save(out.with_suffix(".npy"), video)
    out.write_text(json.dumps(dict(option=option, rss_mb=run._peak_rss_mb(), rss_load_mb=rss_load, e2e_s=time.perf_counter() - t0)))


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="t2v-mid,svd-mid")
    ap.add_argument("--size", type=int, default=256, help="frame height and width in pixels")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vidiff-bench"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.cases, args.folder, args.worker, args.size, args.frames, args.out)
    runs = args.cache / "runs" / ("memory-" + time.strftime("%Y%m%d-%H%M%S"))
    runs.mkdir(parents=True)
    lines = [f"vidiff peak RSS per option ({args.size}x{args.size}, {args.frames} frames, 2 steps, {args.threads} threads)", "",
             "| case | option | peak RSS MB | growth over load MB | growth vs plain | max frame diff vs plain |", "|---|---|---|---|---|---|"]
    for case in [c for c in args.cases.split(",") if c]:
        folder = args.cache / f"{case}-{hashlib.sha1(repr(run.CASES[case]).encode()).hexdigest()[:8]}"
        if not folder.exists():
            run.build(case, folder)
        run._warm_page_cache(folder)
        names = SVD_OPTIONS if run.CASES[case]["kind"] == "svd" else tuple(OPTIONS)
        results = {}
        for option in names:
            out = runs / f"{case}-{option}.json"
            env = dict(os.environ, BENCH_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
            cmd = [sys.executable, __file__, "--worker", option, "--cases", case, "--folder", str(folder), "--out", str(out),
                   "--size", str(args.size), "--frames", str(args.frames)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{case} {option} failed:\n{proc.stderr[-3000:]}")
            results[option] = json.loads(out.read_text())
            print(f"  {case} {option}: peak {results[option]['rss_mb']:.0f} MB", flush=True)
        base = np.load(runs / f"{case}-plain.npy")
        grow0 = results["plain"]["rss_mb"] - results["plain"]["rss_load_mb"]
        for option, r in results.items():
            grow = r["rss_mb"] - r["rss_load_mb"]
            diff = float(np.abs(np.load(runs / f"{case}-{option}.npy") - base).max())
            lines.append(f"| {case} | {option} | {r['rss_mb']:.0f} | {grow:.0f} | {grow / grow0:.2f}x | {diff:.1e} |")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
