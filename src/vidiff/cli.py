"""The ``vidiff`` command: ``vidiff generate`` (text -> video) and ``vidiff upscale`` (video -> video)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


class CliError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint: a diffusers-format folder or a hub id")
    p.add_argument("--prompt", required=True, help="what the video should show")
    p.add_argument("--negative-prompt", default=None, help="what the video should avoid")
    p.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default: the pipeline's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same video (default 0)")
    p.add_argument("--fps", type=_positive_int, default=8, help="frames per second of the written file (default 8)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights' precision (default float32)")
    p.add_argument("--variant", default=None, help='weight file variant to load, e.g. "fp16"')
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: an accelerator if present, else cpu)")
    p.add_argument("--cpu-offload", action="store_true", help="keep each component on the accelerator only while it runs")
    p.add_argument("--decode-chunk-size", type=_positive_int, default=None, help="frames the VAE decodes at once (lower memory)")
    p.add_argument("--output", "-o", default=None, help="output .mp4 or .gif path (default: out.mp4)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidiff", description="Make short videos with diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="text -> video")
    _common(gen)
    gen.add_argument("--frames", type=_positive_int, default=None, help="number of frames (default: the pipeline's)")
    gen.add_argument("--height", type=_positive_int, default=None, help="frame height in pixels, a multiple of 8")
    gen.add_argument("--width", type=_positive_int, default=None, help="frame width in pixels, a multiple of 8")
    up = sub.add_parser("upscale", help="video -> video (e.g. zeroscope_v2_XL refining a zeroscope_v2_576w clip)")
    _common(up)
    up.add_argument("--video", required=True, help="input video file (mp4, gif, webm...)")
    up.add_argument("--strength", type=float, default=0.6, help="how much to change the video, 0..1 (default 0.6)")
    up.add_argument("--size", default=None, help="resize the input frames to WIDTHxHEIGHT first, e.g. 1024x576")
    return parser


def _device(name: str | None):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _load(args: argparse.Namespace, kind: str):
    import torch

    from .pipelines.base import DiffusionPipeline

    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    dtype = getattr(torch, DTYPES[args.dtype])
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, variant=args.variant)
    accepted = {"generate": ("TextToVideoSDPipeline",), "upscale": ("VideoToVideoSDPipeline", "TextToVideoSDPipeline")}[kind]
    if type(pipe).__name__ not in accepted:
        raise CliError(f"{args.model} holds a {type(pipe).__name__}; `vidiff {kind}` needs one of {list(accepted)}")
    if kind == "upscale" and type(pipe).__name__ != "VideoToVideoSDPipeline":
        from .pipelines.text_to_video_synthesis import VideoToVideoSDPipeline

        pipe = VideoToVideoSDPipeline(**pipe.components)  # zeroscope_v2_XL ships as a text-to-video folder
    pipe.set_progress_bar_config(disable=args.quiet)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(_device(args.device))
    return pipe


def _check_args(args: argparse.Namespace) -> None:
    """Cheap checks before any weights are read."""
    for name in ("height", "width"):
        value = getattr(args, name, None)
        if value is not None and value % 8:
            raise CliError(f"--{name} must be a multiple of 8, got {value}")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise CliError(f"--guidance must be a finite number, got {args.guidance}")


def _call_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    kwargs: dict[str, Any] = {"prompt": args.prompt, "negative_prompt": args.negative_prompt,
                              "generator": torch.Generator("cpu").manual_seed(args.seed),
                              "decode_chunk_size": args.decode_chunk_size}
    optional = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def _output_path(args: argparse.Namespace) -> Path:
    out = Path(args.output or "out.mp4")
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise CliError(f"--output must end in .mp4 or .gif, got {out.name!r}")
    if not out.parent.exists():
        raise CliError(f"the output folder {out.parent} does not exist")
    return out


def _write(frames, out: Path, fps: int) -> None:
    from .media import export_to_gif, export_to_video

    if out.suffix.lower() == ".gif":
        export_to_gif(frames, str(out), fps=fps)
    else:
        export_to_video(frames, str(out), fps=fps)


def _read_video(args: argparse.Namespace):
    from .media import load_video

    if not Path(args.video).exists() and not str(args.video).startswith(("http://", "https://")):
        raise CliError(f"--video {args.video}: no such file")
    frames = load_video(args.video)
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise CliError(f"--size must look like 1024x576, got {args.size!r}") from None
        frames = [f.resize((w, h)) for f in frames]
    return frames


def run(args: argparse.Namespace) -> Path:
    out = _output_path(args)
    _check_args(args)
    if args.command == "upscale" and not 0.0 <= args.strength <= 1.0:
        raise CliError(f"--strength must be between 0 and 1, got {args.strength}")
    video = _read_video(args) if args.command == "upscale" else None
    pipe = _load(args, args.command)
    kwargs = _call_kwargs(args)
    if args.command == "generate":
        extra = {"num_frames": args.frames, "height": args.height, "width": args.width}
        kwargs.update({k: v for k, v in extra.items() if v is not None})
    else:
        kwargs.update(video=video, strength=args.strength)
    start = time.perf_counter()
    frames = pipe(**kwargs).frames[0]
    _write(frames, out, args.fps)
    logging.getLogger("vidiff").info("generated in %.1fs", time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from .configuration import ConfigError

    try:
        out = run(args)
    except (CliError, ConfigError, ValueError, TypeError, FileNotFoundError, NotImplementedError) as e:
        print(f"vidiff: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"vidiff: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
