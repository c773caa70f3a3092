"""Peak memory of the memory options, each alone against the plain run, on one case at a larger frame size.

    python bench/memory.py                          # t2v-mid at 256x256, 8 frames, and svd-mid at 256x256, 8 frames
    python bench/memory.py --cases t2v-mid --size 192 --frames 8

Every option runs in its own subprocess (peak RSS is per process), on vidiff only: the figures are the peak resident
memory of the whole call, its growth over the RSS after loading (what the option can shrink), the peaks of the UNet
calls and of the VAE decode apart (an option for one of them can only lower the run's peak when that one sets it),
and the largest frame difference from the plain run (chunking must not change the frames: within 1e-5). The folders
are bench/run.py's.

The phase peaks are exact on Linux: the kernel's high-water mark (VmHWM) is read and reset (/proc/self/clear_refs)
at every phase boundary; elsewhere only the whole call's peak is reported.
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
    "enable_weight_streaming": (lambda pipe: pipe.enable_weight_streaming(), {}),
}
SVD_OPTIONS = ("plain", "decode_chunk_size=1", "enable_forward_chunking", "enable_weight_streaming")  # its temporal VAE has no slicing / tiling


class Phases:
    """Peak RSS (MB) per phase of a run: "unet" (its calls), "decode" (``vae.decode`` calls) and "other" (the rest).

    Linux's VmHWM is the peak since its last reset; each phase change records it for the phase that ends and resets
    it, so every peak belongs to one phase and the run's peak is the largest of them."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self.current = "other"
        try:
            self._reset()
            self.enabled = self._hwm_mb() is not None
        except OSError:
            self.enabled = False

    @staticmethod
    def _hwm_mb() -> float | None:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def enter(self, name: str) -> None:
        if self.enabled:
            self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), self._hwm_mb())
            self._reset()
        self.current = name

    def watch(self, pipe) -> None:
        """Mark the UNet's calls and the VAE's decodes of ``pipe``."""
        pipe.unet.register_forward_pre_hook(lambda module, args: self.enter("unet"))
        pipe.unet.register_forward_hook(lambda module, args, output: self.enter("other"))
        decode = pipe.vae.decode

        def watched(*args, **kwargs):
            self.enter("decode")
            try:
                return decode(*args, **kwargs)
            finally:
                self.enter("other")

        pipe.vae.decode = watched


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
    phases = Phases()  # (resets the high-water mark: from here on the run's peak is the largest phase peak)
    phases.watch(pipe)
    t0 = time.perf_counter()
    with torch.inference_mode():
        video = np.asarray(pipe(**call).frames, dtype=np.float32)
    e2e_s = time.perf_counter() - t0
    phases.enter("other")  # closes the last phase
    peak = max(phases.peaks.values()) if phases.enabled else run._peak_rss_mb()
    np.save(out.with_suffix(".npy"), video)
    out.write_text(json.dumps(dict(option=option, rss_mb=max(peak, rss_load), rss_load_mb=rss_load, e2e_s=e2e_s,
                                   phases=phases.peaks if phases.enabled else {})))


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
             "| case | option | peak RSS MB | growth over load MB | growth vs plain | UNet peak MB (growth vs plain) | "
             "decode peak MB (growth vs plain) | max frame diff vs plain |", "|---|---|---|---|---|---|---|---|"]
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
            phases = ", ".join(f"{k} {v:.0f}" for k, v in results[option]["phases"].items())
            print(f"  {case} {option}: peak {results[option]['rss_mb']:.0f} MB ({phases})", flush=True)
        base = np.load(runs / f"{case}-plain.npy")
        plain = results["plain"]
        grow0 = plain["rss_mb"] - plain["rss_load_mb"]

        def phase(r: dict, name: str) -> str:
            if name not in r["phases"] or name not in plain["phases"]:
                return "-"
            grow, grow_plain = r["phases"][name] - r["rss_load_mb"], plain["phases"][name] - plain["rss_load_mb"]
            return f"{r['phases'][name]:.0f} ({grow / grow_plain:.2f}x)"

        for option, r in results.items():
            grow = r["rss_mb"] - r["rss_load_mb"]
            diff = float(np.abs(np.load(runs / f"{case}-{option}.npy") - base).max())
            lines.append(f"| {case} | {option} | {r['rss_mb']:.0f} | {grow:.0f} | {grow / grow0:.2f}x | {phase(r, 'unet')} | "
                         f"{phase(r, 'decode')} | {diff:.1e} |")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
