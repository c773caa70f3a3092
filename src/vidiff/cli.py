"""The ``vidiff`` command: ``vidiff generate`` (text -> video, or image -> video with ``--image`` on a Stable Video
Diffusion checkpoint) and ``vidiff upscale`` (video -> video)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


SVD = "StableVideoDiffusionPipeline"
I2VGEN = "I2VGenXLPipeline"
SVD_DEFAULT_FPS, DEFAULT_FPS, I2VGEN_DEFAULT_FPS = 7, 8, 16
# the model shipped inside the package (train/train.py made it): `vidiff generate` uses it when --model is not given,
# with the clip length it was trained on (its train_config.json) unless --frames says otherwise, and guidance 3:
# measured with train/evaluate.py, guidance 9 (the pipeline's default) over-saturates its colours (51% right, 99% at 3)
DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_GUIDANCE = 3.0


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


def _common(p: argparse.ArgumentParser, prompt_required: bool = True, default_model: bool = False) -> None:
    if default_model:
        p.add_argument("--model", default=None, help="checkpoint: a diffusers-format folder or a hub id (default: vidiff's "
                       "built-in 32x32 shapes model, which needs no download)")
    else:
        p.add_argument("--model", required=True, help="checkpoint: a diffusers-format folder or a hub id")
    p.add_argument("--prompt", required=prompt_required, default=None,
                   help="what the video should show" + ("" if prompt_required else " (text-to-video models)"))
    p.add_argument("--negative-prompt", default=None, help="what the video should avoid")
    p.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default: the pipeline's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the pipeline's; 3 for the built-in model)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same video (default 0)")
    p.add_argument("--fps", type=_positive_int, default=None,
                   help="frames per second of the written file (default 8; SVD: 7, also its fps conditioning)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights' precision (default float32)")
    p.add_argument("--variant", default=None, help='weight file variant to load, e.g. "fp16"')
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: an accelerator if present, else cpu)")
    p.add_argument("--cpu-offload", action="store_true", help="keep each component on the accelerator only while it runs")
    p.add_argument("--stream-weights", action="store_true",
                   help="CPU runs: each layer's weights stay in memory only while it runs (lower peak memory, up to about 10%% slower)")
    p.add_argument("--decode-chunk-size", type=_positive_int, default=None, help="frames the VAE decodes at once (lower memory)")
    p.add_argument("--output", "-o", default=None, help="output .mp4 or .gif path (default: out.mp4)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidiff", description="Make short videos with diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="text -> video, or image -> video (--image, Stable Video Diffusion)")
    _common(gen, prompt_required=False, default_model=True)
    gen.add_argument("--frames", type=_positive_int, default=None,
                     help="number of frames (default: the pipeline's; for the built-in model the clip length it was trained on)")
    gen.add_argument("--height", type=_positive_int, default=None, help="frame height in pixels, a multiple of 8")
    gen.add_argument("--width", type=_positive_int, default=None, help="frame width in pixels, a multiple of 8")
    svd = gen.add_argument_group("image-to-video (Stable Video Diffusion checkpoints)")
    svd.add_argument("--image", default=None, help="first frame: an image file or URL (required for SVD and I2VGen-XL)")
    svd.add_argument("--motion-bucket-id", type=int, default=None, help="amount of motion, higher moves more (default 127)")
    svd.add_argument("--noise-aug-strength", type=float, default=None, help="noise added to the image, >= 0 (default 0.02)")
    svd.add_argument("--min-guidance", type=float, default=None, help="guidance scale of the first frame (default 1.0)")
    svd.add_argument("--max-guidance", type=float, default=None, help="guidance scale of the last frame (default 3.0; <= 1: off)")
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
    accepted = {"generate": ("TextToVideoSDPipeline", SVD, I2VGEN), "upscale": ("VideoToVideoSDPipeline", "TextToVideoSDPipeline")}[kind]
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
    if args.stream_weights:  # _check_args refused it for runs that would use an accelerator
        pipe.enable_weight_streaming()
    return pipe


def _check_args(args: argparse.Namespace) -> None:
    """Cheap checks before any weights are read."""
    for name in ("height", "width"):
        value = getattr(args, name, None)
        if value is not None and value % 8:
            raise CliError(f"--{name} must be a multiple of 8, got {value}")
    if args.stream_weights:  # a CPU option: refuse it before loading where the run would be elsewhere
        from .runtime.offload import accelerator_device

        if args.device and not args.device.startswith("cpu") and not args.cpu_offload:
            raise CliError(f"--stream-weights is for CPU runs, not --device {args.device}")
        if (args.cpu_offload or not args.device) and accelerator_device() is not None:
            raise CliError("--stream-weights is for CPU runs and this run would use the accelerator; add --device cpu "
                           "(without --cpu-offload) or drop --stream-weights")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise CliError(f"--guidance must be a finite number, got {args.guidance}")
    for flag in ("noise_aug_strength", "min_guidance", "max_guidance"):
        value = getattr(args, flag, None)
        if value is not None and not math.isfinite(value):
            raise CliError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    if getattr(args, "noise_aug_strength", None) is not None and args.noise_aug_strength < 0:
        raise CliError(f"--noise-aug-strength must be at least 0, got {args.noise_aug_strength}")
    if args.command == "generate":
        low = 1.0 if args.min_guidance is None else args.min_guidance
        high = 3.0 if args.max_guidance is None else args.max_guidance
        if low > high:
            raise CliError(f"--min-guidance ({low}) is larger than --max-guidance ({high}); guidance ramps from min (first frame) to max (last)")


def _pipeline_class_name(model: str) -> str | None:
    """The pipeline class a local folder's model_index.json names (None for a hub id: known after loading)."""
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return None
    from .configuration import read_json

    name = read_json(index).get("_class_name")
    return name if isinstance(name, str) else None


def _check_generate_mode(args: argparse.Namespace, class_name: str | None) -> None:
    """Image-to-video options only with an SVD checkpoint, a prompt only (and always) with a text-to-video one."""
    svd_flags = {"--image": args.image, "--motion-bucket-id": args.motion_bucket_id, "--noise-aug-strength": args.noise_aug_strength,
                 "--min-guidance": args.min_guidance, "--max-guidance": args.max_guidance}
    if class_name is None:
        if args.prompt is None and args.image is None:
            raise CliError("pass --prompt (text-to-video models) or --image (image-to-video models such as Stable Video Diffusion)")
    elif class_name == I2VGEN:
        missing = [flag for flag, v in (("--image", args.image), ("--prompt", args.prompt)) if v is None]
        if missing:
            raise CliError(f"{args.model} is an image+text-to-video model ({I2VGEN}); pass {' and '.join(missing)}, "
                           "e.g. --image first.png --prompt 'papers floating in a library'")
        svd_only = [flag for flag, v in svd_flags.items() if flag != "--image" and v is not None]
        if svd_only:
            raise CliError(f"{', '.join(svd_only)} apply to Stable Video Diffusion only, not to {I2VGEN} ({args.model}); use --guidance")
    elif class_name == SVD:
        if args.image is None:
            raise CliError(f"{args.model} is an image-to-video model ({SVD}); pass --image with the first frame, e.g. --image first.png")
        text = [flag for flag, v in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt), ("--guidance", args.guidance)) if v is not None]
        if text:
            raise CliError(f"{args.model} is an image-to-video model ({SVD}) and takes no {', '.join(text)}; "
                           "set guidance with --min-guidance / --max-guidance")
    else:
        given = [flag for flag, v in svd_flags.items() if v is not None]
        if given:
            raise CliError(f"{given[0]} needs an image-to-video checkpoint (e.g. stabilityai/stable-video-diffusion-img2vid-xt); "
                           f"{args.model} is a {class_name}")
        if args.prompt is None:
            raise CliError(f"{args.model} is a text-to-video model ({class_name}); pass --prompt")


def _read_image(args: argparse.Namespace):
    from .media import load_image

    if not Path(args.image).exists() and not str(args.image).startswith(("http://", "https://")):
        raise CliError(f"--image {args.image}: no such file")
    return load_image(args.image)


def _svd_kwargs(args: argparse.Namespace, image) -> dict[str, Any]:
    import torch

    kwargs: dict[str, Any] = {"image": image, "generator": torch.Generator("cpu").manual_seed(args.seed),
                              "decode_chunk_size": args.decode_chunk_size, "fps": args.fps or SVD_DEFAULT_FPS}
    optional = {"num_inference_steps": args.steps, "num_frames": args.frames, "height": args.height, "width": args.width,
                "motion_bucket_id": args.motion_bucket_id, "noise_aug_strength": args.noise_aug_strength,
                "min_guidance_scale": args.min_guidance, "max_guidance_scale": args.max_guidance}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def _i2vgen_kwargs(args: argparse.Namespace, image) -> dict[str, Any]:
    kwargs = _call_kwargs(args)
    kwargs.update(image=image, target_fps=args.fps or I2VGEN_DEFAULT_FPS)
    if kwargs["decode_chunk_size"] is None:
        del kwargs["decode_chunk_size"]  # the pipeline's default (1 frame at a time) keeps 704x1280 decoding small
    return kwargs


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


def _use_default_model(args: argparse.Namespace) -> None:
    """No --model: the built-in model, with the clip length it was trained on and guidance 3 unless told otherwise."""
    if not (DEFAULT_MODEL / "model_index.json").is_file():
        raise CliError(f"this vidiff install has no built-in model ({DEFAULT_MODEL} is missing); pass --model with a "
                       "checkpoint folder or hub id, e.g. --model damo-vilab/text-to-video-ms-1.7b")
    args.model = str(DEFAULT_MODEL)
    if args.frames is None:
        args.frames = default_model_frames()
    if args.guidance is None:
        args.guidance = DEFAULT_MODEL_GUIDANCE


def default_model_frames() -> int:
    """The clip length the built-in model was trained on (its train_config.json; 16, the pipeline's default, if absent)."""
    from .configuration import read_json

    config = DEFAULT_MODEL / "train_config.json"
    return int(read_json(config)["frames"]) if config.is_file() else 16


def run(args: argparse.Namespace) -> Path:
    if args.model is None:
        _use_default_model(args)
    out = _output_path(args)
    _check_args(args)
    if args.command == "upscale" and not 0.0 <= args.strength <= 1.0:
        raise CliError(f"--strength must be between 0 and 1, got {args.strength}")
    video = _read_video(args) if args.command == "upscale" else None
    if args.command == "generate":
        _check_generate_mode(args, _pipeline_class_name(args.model))
    image = _read_image(args) if args.command == "generate" and args.image is not None else None
    pipe = _load(args, args.command)
    is_svd, is_i2vgen = type(pipe).__name__ == SVD, type(pipe).__name__ == I2VGEN
    if args.command == "generate":
        _check_generate_mode(args, type(pipe).__name__)  # a hub id's class is known only now
        kwargs = _svd_kwargs(args, image) if is_svd else _i2vgen_kwargs(args, image) if is_i2vgen else _call_kwargs(args)
        extra = {} if is_svd else {"num_frames": args.frames, "height": args.height, "width": args.width}
        kwargs.update({k: v for k, v in extra.items() if v is not None})
    else:
        kwargs = _call_kwargs(args)
        kwargs.update(video=video, strength=args.strength)
    start = time.perf_counter()
    frames = pipe(**kwargs).frames[0]
    _write(frames, out, args.fps or (SVD_DEFAULT_FPS if is_svd else I2VGEN_DEFAULT_FPS if is_i2vgen else DEFAULT_FPS))
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
