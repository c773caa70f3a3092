"""Denoiser step time, vidiff vs the reference, in one process with the calls alternating.

    python bench/steps.py --cases t2v-full,svd-full --steps 4
    python bench/steps.py --cases t2v-mid,svd-mid,i2vgen-mid,animatediff-mid,t2v-zero-mid --steps 20

bench/run.py times each library in its own process; on a shared machine whose speed drifts from minute to minute,
two processes can differ by 25% for the same work. Here both pipelines are loaded side by side (same cached
folders as bench/run.py), each runs its own pipeline once to capture its UNet's inputs (same seed, so the same
inputs), then the two UNets are called in turn, vidiff, reference, vidiff, ... (the order flips every pair), so
both see the same machine. Reported: median step times, the median of the per-pair ratios with its min and max,
the largest output difference between the two UNets, and FLOPs per step with achieved GFLOP/s. Both UNets get the
whole [uncond, cond] batch (vidiff's pipelines split a large one in two calls, runtime.guidance; not here).

``--dtype bfloat16`` (or float16) casts both UNets and their captured inputs to that dtype after the capture: the
two libraries then differ by that dtype's rounding, so the table also gives each one's largest difference from the
reference UNet's float32 output on the same inputs (the "error" column), and the matmul rate in that dtype.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


def unet_inputs(pipe, spec: dict):
    """(args, kwargs) of the pipeline's first UNet call (the pipeline runs once, 1 step where allowed); for
    Text2Video-Zero its last call: the first calls denoise the first frame alone (one frame per guidance half), the
    last ones every frame with cross-frame attention, the stage the pipeline is for. The UNet keeps the attention
    processors it had during that call (both libraries' Text2Video-Zero restore theirs when the call returns)."""
    import torch

    captured = {}
    last = spec["kind"] == "t2v-zero"

    class _Stop(Exception):
        pass

    def pre(module, args, kwargs):
        captured["call"] = (args, kwargs)
        captured["processors"] = module.attn_processors  # (Text2Video-Zero sets cross-frame ones for its call)
        if not last:
            raise _Stop

    handle = pipe.unet.register_forward_pre_hook(pre, with_kwargs=True)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    try:
        with torch.inference_mode():
            pipe(**bench.call_arguments(spec))
    except _Stop:
        pass
    finally:
        handle.remove()
    pipe.unet.set_attn_processor(captured["processors"])  # the timed calls run the processors the pipeline ran
    return captured["call"]


def _sample(out):
    return (out[0] if isinstance(out, tuple) else out.sample).float()


def _cast(obj, dtype):
    """``obj`` (tensors in nested tuples, lists and dicts) with its floating-point tensors cast to ``dtype``."""
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t, obj)


def compare(case: str, cache: Path, steps: int, flops: bool, call: dict | None = None, dtype: str = "float32") -> dict:
    import diffusers
    import torch

    import vidiff
    from vidiff.runtime import guidance

    guidance.SPLIT_MIN_POSITIONS = None  # the whole guidance batch in one UNet call, as the reference makes it
    spec = bench.CASES[case]
    if call:  # --call: the case's pipeline call with these arguments changed (the captured UNet inputs follow)
        spec = dict(spec, call=dict(spec["call"], **call))
    folder = bench.case_folder(case, cache)
    pipes = {lib.__name__: bench.load_pipeline(lib, spec["kind"], folder) for lib in (vidiff, diffusers)}
    inputs = {name: unet_inputs(pipe, spec) for name, pipe in pipes.items()}
    gold = None
    if dtype != "float32":  # the reference UNet's float32 output, then both UNets and their inputs in that dtype
        with torch.inference_mode():
            args, kwargs = inputs["diffusers"]
            gold = _sample(pipes["diffusers"].unet(*args, **kwargs))
        for name, pipe in pipes.items():
            pipe.unet.to(getattr(torch, dtype))
            inputs[name] = _cast(inputs[name], getattr(torch, dtype))
    times: dict[str, list[float]] = {name: [] for name in pipes}
    outs = {}
    with torch.inference_mode():
        for name, pipe in pipes.items():  # warm-up, and the outputs to compare
            args, kwargs = inputs[name]
            outs[name] = _sample(pipe.unet(*args, **kwargs))
        for i in range(steps):
            order = ("vidiff", "diffusers") if i % 2 == 0 else ("diffusers", "vidiff")
            for name in order:
                args, kwargs = inputs[name]
                t0 = time.perf_counter()
                pipes[name].unet(*args, **kwargs)
                times[name].append(time.perf_counter() - t0)
    ratios = [v / r for v, r in zip(times["vidiff"], times["diffusers"])]
    result = dict(case=case, vidiff_s=statistics.median(times["vidiff"]), reference_s=statistics.median(times["diffusers"]),
                  ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                  diff=float((outs["vidiff"] - outs["diffusers"]).abs().max()))
    if gold is not None:
        result["error"] = {name: float((out - gold).abs().max()) for name, out in outs.items()}
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        for name, pipe in pipes.items():
            args, kwargs = inputs[name]
            with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=bench.cpu_kernel_flops()) as counter:
                pipe.unet(*args, **kwargs)
            result[f"{name}_gflop"] = counter.get_total_flops() / 1e9
    return result


def parse_call(text: str) -> dict:
    """'a=1,b=2.5' -> {'a': 1, 'b': 2.5} (values are Python literals)."""
    import ast

    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise SystemExit(f"--call: expected name=value, got {item!r}")
        try:
            out[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise SystemExit(f"--call: {value.strip()!r} is not a Python literal (in {item!r})") from None
    return out


def sgemm_rates(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> dict[str, float]:
    """GFLOP/s of an n x n matrix product (float32, or ``dtype``) on this machine now, through torch's ``@`` (MKL
    in float32; in bfloat16 PyTorch itself calls oneDNN) and through oneDNN's product (where it is built in): the
    better one is the practical arithmetic ceiling."""
    import torch

    a, b = torch.randn(n, n).to(getattr(torch, dtype)), torch.randn(n, n).to(getattr(torch, dtype))
    kernels = {"MKL" if dtype == "float32" else "torch @": lambda: a @ b}
    if torch.backends.mkldnn.is_available():
        kernels["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    rates = {}
    for name, kernel in kernels.items():
        kernel()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            kernel()
            best = min(best, time.perf_counter() - t0)
        rates[name] = 2 * n**3 / best / 1e9
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="t2v-mid,svd-mid,i2vgen-mid,animatediff-mid,t2v-zero-mid",
                    help=f"comma-separated, from {', '.join(bench.CASES)}")
    ap.add_argument("--steps", type=int, default=20, help="timed UNet calls per library (alternating)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vidiff-bench"), help="where the random-weight folders live")
    ap.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (one extra call per library)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="the UNets' dtype (cast after capturing their float32 inputs)")
    ap.add_argument("--call", default="", help="pipeline arguments to change, e.g. 'guidance_scale=1.0' or "
                    "'min_guidance_scale=1.0,max_guidance_scale=1.0' (Python literals)")
    args = ap.parse_args()
    call = parse_call(args.call)
    import torch

    torch.set_num_threads(args.threads)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in bench.CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; pick from {list(bench.CASES)}")
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    peak = [sgemm_rates(dtype=args.dtype)]
    rows = []
    for case in cases:
        r = compare(case, args.cache, args.steps, flops=not args.no_flops, call=call, dtype=args.dtype)
        rows.append(r)
        print(f"  {case}: vidiff {r['vidiff_s']:.3f}s reference {r['reference_s']:.3f}s ratio {r['ratio']:.2f}x", flush=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    peak.append(sgemm_rates(dtype=args.dtype))
    print(f"\nload average before: {load_before}; after: {load_after}; torch threads: {args.threads}; CPU: {bench.cpu_kind()}; "
          f"{args.steps} alternating calls each; UNets in {args.dtype}"
          + (f"; call changed: {call}" if call else ""))
    rates = ", ".join(f"{k} {peak[0][k]:.0f} / {peak[1][k]:.0f}" for k in peak[0])
    print(f"2048x2048 {args.dtype} matmul before / after: {rates} GFLOP/s (the better one: the practical ceiling)")
    half = args.dtype != "float32"
    print("| case | step s vidiff / reference | ratio (median of pairs, min-max) | max UNet output diff |"
          + (" error vs float32 vidiff / reference |" if half else "") + " GFLOP/step | GFLOP/s |")
    print("|---|---|---|---|" + ("---|" if half else "") + "---|---|")
    for r in rows:
        fl = gf = "-"
        if "vidiff_gflop" in r:
            fl = f"{r['vidiff_gflop']:.1f} / {r['diffusers_gflop']:.1f}"
            gf = f"{r['vidiff_gflop'] / r['vidiff_s']:.1f} / {r['diffusers_gflop'] / r['reference_s']:.1f}"
        err = f" {r['error']['vidiff']:.1e} / {r['error']['diffusers']:.1e} |" if half else ""
        print(f"| {r['case']} | {r['vidiff_s']:.3f} / {r['reference_s']:.3f} | {r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
              f"{r['diff']:.1e} |{err} {fl} | {gf} |")


if __name__ == "__main__":
    main()
