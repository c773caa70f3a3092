"""vidiff vs the reference (diffusers), side by side: load time, per-step denoiser time, end-to-end time, peak RSS,
frame difference and (full-size UNets) FLOPs per step and achieved GFLOP/s.

    python bench/run.py                       # every case, 2 interleaved repeats
    python bench/run.py --cases t2v-mid,svd-mid --repeats 3

Each case is a diffusers-format folder of random weights, built once with the reference and cached under
``--cache`` (default /tmp/vidiff-bench). Every (library, case, repeat) runs in its own subprocess so its peak RSS is
its own; the runs are interleaved (A B, B A, ...) and the table shows medians over repeats. The machine may be shared:
the table prints the load average before and after. diffusers is needed only by this script, never by vidiff.
For step times on a machine whose speed drifts, bench/steps.py alternates the two UNets in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------------- cases
# ModelScope text-to-video (damo-vilab/text-to-video-ms-1.7b): its unet/config.json is UNet3DConditionModel's defaults.
T2V_FULL_UNET: dict = dict(sample_size=32)  # (its config sets sample_size, the class default is None)
# stabilityai/stable-video-diffusion-img2vid-xt unet/config.json is UNetSpatioTemporalConditionModel's defaults.
SVD_FULL_UNET: dict = {}
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=256)
SVD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2,
               latent_channels=4)

# mid size: a denoising step of about a second on 2 cores; the same widths for every pipeline's model
MID_VAE = dict(block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
               layers_per_block=1, latent_channels=4, norm_num_groups=32)
MID_UNET = dict(sample_size=32, block_out_channels=(64, 128, 128), layers_per_block=2, attention_head_dim=32, norm_num_groups=32,
                cross_attention_dim=256)
MID_UNET3D = dict(MID_UNET, down_block_types=("CrossAttnDownBlock3D",) * 2 + ("DownBlock3D",),
                  up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 2)
# UNet2DConditionModel reads attention_head_dim as the number of heads (a naming slip it keeps for its checkpoints):
# 8, as in Stable Diffusion 1.5 (the AnimateDiff / Text2Video-Zero base), i.e. head dims 8 and 16 at these widths.
# (MID_UNET's 32 would mean head dim 2-4, where the same SDPA kernel in both libraries takes a third to a half of the step.)
MID_UNET2D = dict(MID_UNET, attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2)
MID_CALL = dict(num_frames=4, height=64, width=64, num_inference_steps=4)
SVD_MID_UNET = dict(block_out_channels=(64, 128, 128), layers_per_block=1, num_attention_heads=(2, 4, 4), cross_attention_dim=256,
                    addition_time_embed_dim=64, projection_class_embeddings_input_dim=192,
                    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
                    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2)
SVD_MID_VAE = dict(block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3, layers_per_block=1, latent_channels=4)

CASES: dict[str, dict] = {
    "t2v-mid": dict(kind="t2v", full=False, text_dim=256, unet=MID_UNET3D, vae=MID_VAE, call=MID_CALL),
    "svd-mid": dict(kind="svd", full=False, text_dim=256, randomize=None, unet=SVD_MID_UNET, vae=SVD_MID_VAE,
                    call=dict(MID_CALL, decode_chunk_size=2)),
    # the svd-mid model at 256x256, 8 frames: activations, not weights or libraries, set the peak RSS
    "svd-mid-256": dict(kind="svd", full=False, text_dim=256, randomize=None, unet=SVD_MID_UNET, vae=SVD_MID_VAE,
                        call=dict(num_frames=8, height=256, width=256, num_inference_steps=2, decode_chunk_size=2)),
    "i2vgen-mid": dict(kind="i2vgen", full=False, text_dim=256, unet=MID_UNET3D, vae=MID_VAE, call=MID_CALL),
    "animatediff-mid": dict(kind="animatediff", full=False, text_dim=256, unet=MID_UNET2D, vae=MID_VAE, call=MID_CALL,
                            adapter=dict(block_out_channels=(64, 128, 128), motion_layers_per_block=2, motion_norm_num_groups=32,
                                         motion_num_attention_heads=4, motion_max_seq_length=32)),
    "t2v-zero-mid": dict(kind="t2v-zero", full=False, text_dim=256, unet=MID_UNET2D, vae=MID_VAE,
                         call=dict(video_length=4, height=64, width=64, num_inference_steps=6, t0=2, t1=4)),
    "t2v-full": dict(kind="t2v", full=True, text_dim=1024, unet=T2V_FULL_UNET, vae=SD_VAE,
                     call=dict(num_frames=4, height=128, width=128, num_inference_steps=2)),
    "svd-full": dict(kind="svd", full=True, text_dim=1024, unet=SVD_FULL_UNET, vae=SVD_VAE, randomize=None,
                     call=dict(num_frames=4, height=128, width=128, num_inference_steps=2, decode_chunk_size=2)),
}


PIPELINES = {"t2v": "TextToVideoSDPipeline", "svd": "StableVideoDiffusionPipeline", "i2vgen": "I2VGenXLPipeline",
             "animatediff": "AnimateDiffPipeline", "t2v-zero": "TextToVideoZeroPipeline"}


def build(case: str, folder: Path) -> None:
    """Random-weight diffusers folder for ``case`` (made with the reference)."""
    import torch
    from diffusers import (AutoencoderKL, AutoencoderKLTemporalDecoder, DDIMScheduler, EulerDiscreteScheduler, I2VGenXLPipeline,
                           I2VGenXLUNet, MotionAdapter, StableDiffusionPipeline, StableVideoDiffusionPipeline, TextToVideoSDPipeline,
                           UNet2DConditionModel, UNet3DConditionModel, UNetSpatioTemporalConditionModel)

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import SVD_SCHEDULER, clip_image_processor, clip_tokenizer, randomize
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    spec = CASES[case]
    torch.manual_seed(0)
    dim = spec["text_dim"]
    kind = spec["kind"]
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=dim, intermediate_size=4 * dim, num_attention_heads=dim // 64,
                                        num_hidden_layers=2, vocab_size=600, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                        projection_dim=dim, max_position_embeddings=77)).eval()
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=64, projection_dim=dim, num_hidden_layers=2,
                                                            num_attention_heads=4, image_size=224, intermediate_size=128,
                                                            patch_size=56)).eval()
    tokenizer = clip_tokenizer(folder.parent / f"{case}-tok")
    tmp = folder.with_name(folder.name + ".partial")
    if kind == "t2v":
        pipe = TextToVideoSDPipeline(vae=AutoencoderKL(**spec["vae"]), text_encoder=text, tokenizer=tokenizer,
                                     unet=UNet3DConditionModel(**spec["unet"]), scheduler=ddim)
    elif kind == "i2vgen":
        pipe = I2VGenXLPipeline(vae=AutoencoderKL(**spec["vae"]), text_encoder=text, tokenizer=tokenizer, image_encoder=vision,
                                feature_extractor=clip_image_processor(224), unet=I2VGenXLUNet(**spec["unet"]), scheduler=ddim)
    elif kind in ("animatediff", "t2v-zero"):  # an SD 1.5-layout folder (+ a motion adapter beside it)
        pipe = StableDiffusionPipeline(vae=AutoencoderKL(**spec["vae"]), text_encoder=text, tokenizer=tokenizer,
                                       unet=UNet2DConditionModel(**spec["unet"]), scheduler=ddim, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        if kind == "animatediff":
            MotionAdapter(**spec["adapter"]).save_pretrained(tmp / "adapter")
            tmp = tmp / "sd"
    else:
        # randomize: N(0, scale) for every weight (else the reference's default initialisation)
        scale = spec.get("randomize", 0.02)
        init = (lambda m, seed: randomize(m, seed, scale)) if scale else (lambda m, seed: m.eval())
        pipe = StableVideoDiffusionPipeline(vae=init(AutoencoderKLTemporalDecoder(**spec["vae"]), 1), image_encoder=vision,
                                            unet=init(UNetSpatioTemporalConditionModel(**spec["unet"]), 0),
                                            scheduler=EulerDiscreteScheduler.from_config(SVD_SCHEDULER),
                                            feature_extractor=clip_image_processor(224))
    pipe.save_pretrained(tmp, safe_serialization=True)
    folder.with_name(folder.name + ".partial").rename(folder)


# ---------------------------------------------------------------------------------------------------------- worker
def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_kernel_flops():
    """FlopCounterMode has no formula for the CPU flash-attention op, for oneDNN's convolution with a reordered
    weight (vidiff.runtime.conv) or for oneDNN's matrix product (vidiff.runtime.linear); count them as the other
    SDPA kernels, as aten.convolution and as aten.mm."""
    import torch
    from math import prod

    from torch.utils.flop_counter import conv_flop_count, sdpa_flop_count

    def attention(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def convolution(x, w, *args, out_shape=None, **kwargs):
        return conv_flop_count(x, w, out_shape, transposed=False)

    def matmul(x, w, *args, out_shape=None, **kwargs):
        return 2 * prod(x) * w[0]  # (the counter passes shapes) rows x inputs x outputs multiply-adds

    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention,
            torch.ops.mkldnn._convolution_pointwise: convolution, torch.ops.mkldnn._linear_pointwise: matmul}


def load_pipeline(lib_mod, kind: str, folder: Path, dtype=None):
    """The case's pipeline from its folder, with ``lib_mod`` (vidiff or diffusers); ``dtype``: ``torch_dtype``."""
    cls = getattr(lib_mod, PIPELINES[kind])
    reference = lib_mod.__name__ == "diffusers"
    kw = {} if dtype is None else {"torch_dtype": dtype}
    if kind == "animatediff":
        pipe = cls.from_pretrained(folder / "sd", motion_adapter=lib_mod.MotionAdapter.from_pretrained(folder / "adapter", **kw), **kw)
    elif kind == "t2v-zero" and reference:  # the reference insists on its SD components being named
        pipe = cls.from_pretrained(folder, safety_checker=None, feature_extractor=None, **kw)
    else:
        pipe = cls.from_pretrained(folder, **kw)
    if kind == "i2vgen" and reference:  # its encode_prompt reads text_model, gone in transformers 5 (tests/test_i2vgen_xl.py)
        import types

        pipe.text_encoder.text_model = types.SimpleNamespace(final_layer_norm=pipe.text_encoder.final_layer_norm)
    return pipe


def call_arguments(spec: dict) -> dict:
    """The pipeline call of a case (seeded generator, numpy output)."""
    import numpy as np
    import torch
    from PIL import Image

    call = dict(spec["call"], generator=torch.Generator().manual_seed(0), output_type="np")
    if spec["kind"] != "svd":
        call["prompt"] = "a red panda eating bamboo"
    if spec["kind"] in ("svd", "i2vgen"):
        rgb = np.random.default_rng(0).integers(0, 256, (call["height"], call["width"], 3), dtype=np.uint8)
        call["image"] = Image.fromarray(rgb)
    return call


def case_folder(case: str, cache: Path) -> Path:
    """The case's random-weight folder under ``cache``, built with the reference on first use."""
    spec_id = hashlib.sha1(repr(CASES[case]).encode()).hexdigest()[:8]  # a changed case gets a new folder
    folder = cache / f"{case}-{spec_id}"
    if not folder.exists():
        print(f"building {folder} with the reference ...", flush=True)
        build(case, folder)
    return folder


def worker(lib: str, case: str, folder: Path, out: Path) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    spec = CASES[case]
    t0 = time.perf_counter()
    if lib == "vidiff":
        import vidiff as lib_mod
    else:
        import diffusers as lib_mod
    kind = spec["kind"]
    getattr(lib_mod, PIPELINES[kind]), getattr(lib_mod, "MotionAdapter")  # both libraries import these lazily: not load time
    # the reference imports its component classes and transformers' CLIP with its pipeline module, vidiff on first
    # use: import them here in both so that load_s is from_pretrained alone; import_s is the import cost (cold start
    # = import_s + load_s)
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection  # noqa: F401

    index = json.loads(((folder / "sd") if kind == "animatediff" else folder).joinpath("model_index.json").read_text())
    for entry in index.values():
        if isinstance(entry, list) and entry[0] == "diffusers":
            getattr(lib_mod, entry[1], None)

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dtype = os.environ.get("BENCH_DTYPE", "float32")  # --dtype
    pipe = load_pipeline(lib_mod, kind, folder, None if dtype == "float32" else getattr(torch, dtype))
    load_s = time.perf_counter() - t0
    if lib == "vidiff" and os.environ.get("BENCH_CHANNELS_LAST") == "1":  # --channels-last
        from vidiff.runtime.layout import channels_last

        channels_last(pipe.unet)
        channels_last(pipe.vae)
    if lib == "vidiff" and os.environ.get("BENCH_STREAM") == "1":  # --stream
        pipe.enable_weight_streaming()
    rss_after_load = _peak_rss_mb()
    pipe.set_progress_bar_config(disable=True)

    calls: list[tuple[float, float]] = []  # (timestep, seconds) of every UNet call
    captured: dict = {}

    def pre(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        captured.setdefault("t0", t)
        if t is captured["t0"] or (torch.is_tensor(t) and torch.equal(t, captured["t0"])):
            captured.setdefault("first_step", []).append((args, kwargs))  # vidiff may split a guidance batch in two
        captured["timestep"] = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
        captured["t"] = time.perf_counter()

    def post(module, args, kwargs, output):
        calls.append((captured["timestep"], time.perf_counter() - captured["t"]))

    hooks = [pipe.unet.register_forward_pre_hook(pre, with_kwargs=True), pipe.unet.register_forward_hook(post, with_kwargs=True)]
    call = call_arguments(spec)
    torch.manual_seed(0)  # I2VGen-XL draws some noise from the global generator (both libraries)
    profile_to = os.environ.get("BENCH_PROFILE")  # a file: torch.profiler table of the whole call (timings then skewed)
    t0 = time.perf_counter()
    with torch.inference_mode(), (torch.profiler.profile() if profile_to else contextlib.nullcontext()) as prof:
        video = pipe(**call)
        frames = video.frames if hasattr(video, "frames") else video.images
    e2e_s = time.perf_counter() - t0
    if profile_to:
        Path(profile_to).write_text(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=int(os.environ.get("BENCH_PROFILE_ROWS", "40"))))
    np.save(out.with_suffix(".npy"), np.asarray(frames, dtype=np.float32))
    for hook in hooks:  # the FLOP count below calls the UNet again: it must not add to the captured calls
        hook.remove()
    steps = _step_times(calls)
    result = dict(lib=lib, case=case, import_s=import_s, load_s=load_s, e2e_s=e2e_s, step_s=statistics.median(steps),
                  steps=list(steps), rss_mb=_peak_rss_mb(), rss_load_mb=rss_after_load)
    if lib == "vidiff":  # the kernel choice this worker measured (each process measures its own)
        result["kernels"] = kernel_choice()
    if spec["full"]:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=cpu_kernel_flops()) as counter:
            for args, kwargs in captured["first_step"]:
                pipe.unet(*args, **kwargs)
        result["flops"] = counter.get_total_flops()
    out.write_text(json.dumps(result))


def _step_times(calls: list[tuple[float, float]]) -> list[float]:
    """Seconds per denoising step: consecutive UNet calls at the same timestep are one step (vidiff runs a large
    guidance batch as two half-batch calls, runtime.guidance)."""
    steps: list[list] = []
    for t, dt in calls:
        if steps and steps[-1][0] == t:
            steps[-1][1] += dt
        else:
            steps.append([t, dt])
    return [dt for _, dt in steps]


# ---------------------------------------------------------------------------------------------------------- parent
def _run_worker(lib: str, case: str, folder: Path, out: Path, threads: int, channels_last: bool = False,
                stream: bool = False, dtype: str = "float32") -> dict:
    env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1",
               BENCH_CHANNELS_LAST="1" if channels_last else "0", BENCH_STREAM="1" if stream else "0", BENCH_DTYPE=dtype)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lib, "--cases", case, "--folder", str(folder), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def _warm_page_cache(folder: Path) -> None:
    """Read every file once so that the first run does not pay for the disk (both libraries map the weights)."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def kernel_choice() -> str:
    """The matrix-product kernels vidiff.runtime.linear measured the faster in this process (float32: measured now if
    not yet; bfloat16: where a bfloat16 product measured it)."""
    from vidiff.runtime import linear

    if not linear.ONEDNN_LINEAR:
        return "F.linear everywhere"
    pick = lambda on: "oneDNN" if on else "MKL"  # noqa: E731
    bf16 = "" if linear.ONEDNN_BF16 is None else f", bfloat16 {'oneDNN' if linear.ONEDNN_BF16 else 'F.linear'}"
    return f"matrix products wide {pick(linear.wide_onednn())}, narrow {pick(linear.narrow_onednn())}{bf16}"


def cpu_kind(choice: str | None = None) -> str:
    """The CPU (model name, family and model) and its SIMD level as torch reads it (AVX2, AVX512, ...), with the
    matrix-product kernel choice (``choice``, else :func:`kernel_choice` in this process): the kernels' ranking
    depends on them."""
    import torch

    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        pass
    name = f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}; {choice or kernel_choice()}"


def _fmt(v: float, r: float, unit: str = "", digits: int = 2) -> str:
    return f"{v:.{digits}f}{unit} / {r:.{digits}f}{unit} = {v / r:.2f}x"


def table(results: dict[str, dict[str, list[dict]]], load_before: str, load_after: str, threads: int) -> str:
    import numpy as np

    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    choices = sorted({r["kernels"] for by_lib in results.values() for r in by_lib["vidiff"] if "kernels" in r})
    choice = " / ".join(choices) + (" (vidiff's workers differed)" if len(choices) > 1 else "") if choices else None
    lines = [f"load average before: {load_before}; after: {load_after}; torch threads: {threads}; CPU: {cpu_kind(choice)}",
             "figures are vidiff / reference = ratio (median over repeats); load = from_pretrained, import = import of the",
             "library, its pipeline and component classes and transformers' CLIP", "",
             "| case | import s | load s | step s (median) | end-to-end s | peak RSS MB | max frame diff | GFLOP/step | GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case, by_lib in results.items():
        v, r = by_lib["vidiff"], by_lib["diffusers"]
        diff = max(float(np.abs(np.load(a["npy"]) - np.load(b["npy"])).max()) for a, b in zip(v, r))
        flops = gflops = "-"
        if "flops" in v[0]:
            fv, fr = v[0]["flops"] / 1e9, r[0]["flops"] / 1e9
            flops = f"{fv:.1f} / {fr:.1f}"
            gflops = _fmt(fv / med(v, "step_s"), fr / med(r, "step_s"), digits=1)
        lines.append(f"| {case} | {_fmt(med(v, 'import_s'), med(r, 'import_s'))} | {_fmt(med(v, 'load_s'), med(r, 'load_s'))} | {_fmt(med(v, 'step_s'), med(r, 'step_s'), digits=3)} | "
                     f"{_fmt(med(v, 'e2e_s'), med(r, 'e2e_s'))} | {_fmt(med(v, 'rss_mb'), med(r, 'rss_mb'), digits=0)} | "
                     f"{diff:.1e} | {flops} | {gflops} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per library and case (medians are reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vidiff-bench"), help="where the random-weight folders live")
    ap.add_argument("--json", type=Path, help="also write every raw figure here")
    ap.add_argument("--channels-last", action="store_true", help="vidiff runs with vidiff.runtime.layout.channels_last on its UNet and VAE")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                    help="both libraries load the weights in this dtype (torch_dtype; the folders hold float32, so it is a cast at load)")
    ap.add_argument("--stream", action="store_true", help="vidiff runs with pipe.enable_weight_streaming() (vidiff.runtime.stream)")
    ap.add_argument("--worker", choices=("vidiff", "diffusers"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; pick from {list(CASES)}")
    if args.worker:
        return worker(args.worker, cases[0], args.folder, args.out)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    args.cache.mkdir(parents=True, exist_ok=True)
    runs = args.cache / "runs" / time.strftime("%Y%m%d-%H%M%S")
    runs.mkdir(parents=True)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[str, dict[str, list[dict]]] = {}
    for case in cases:
        folder = case_folder(case, args.cache)
        _warm_page_cache(folder)
        results[case] = {"vidiff": [], "diffusers": []}
        for rep in range(args.repeats):
            order = ("vidiff", "diffusers") if rep % 2 == 0 else ("diffusers", "vidiff")
            for lib in order:
                out = runs / f"{case}-{lib}-{rep}.json"
                res = _run_worker(lib, case, folder, out, args.threads, args.channels_last, args.stream, args.dtype)
                res["npy"] = str(out.with_suffix(".npy"))
                results[case][lib].append(res)
                print(f"  {case} {lib} #{rep}: load {res['load_s']:.2f}s step {res['step_s']:.3f}s e2e {res['e2e_s']:.2f}s "
                      f"rss {res['rss_mb']:.0f}MB", flush=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print()
    print(table(results, load_before, load_after, args.threads) + ("\nvidiff with channels-last UNet and VAE" if args.channels_last else "")
          + ("\nvidiff with pipe.enable_weight_streaming()" if args.stream else "")
          + (f"\nboth libraries in {args.dtype} (frame diff: vidiff vs the reference, both in {args.dtype})" if args.dtype != "float32" else ""))


if __name__ == "__main__":
    main()
