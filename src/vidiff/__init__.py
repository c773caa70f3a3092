"""vidiff: video diffusion that loads diffusers checkpoints and reproduces their frames.

The whole public API is importable from here (``from vidiff import TextToVideoSDPipeline``). Names resolve
lazily on first use, so ``import vidiff`` (and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # pipelines
    "DiffusionPipeline": "pipelines.base",
    "TextToVideoSDPipeline": "pipelines.text_to_video_synthesis",
    "VideoToVideoSDPipeline": "pipelines.text_to_video_synthesis",
    "TextToVideoSDPipelineOutput": "pipelines.text_to_video_synthesis",
    "VideoPipelineOutput": "pipelines.video_io",
    "StableVideoDiffusionPipeline": "pipelines.stable_video_diffusion",
    "StableVideoDiffusionPipelineOutput": "pipelines.stable_video_diffusion",
    "NonFiniteError": "pipelines.base",
    "AnimateDiffPipeline": "pipelines.animatediff",
    "AnimateDiffVideoToVideoPipeline": "pipelines.animatediff",
    "AnimateDiffPipelineOutput": "pipelines.animatediff",
    "FreeInitMixin": "pipelines.free_init",
    "StableDiffusionLoraLoaderMixin": "loading.lora",
    "I2VGenXLPipeline": "pipelines.i2vgen_xl",
    "I2VGenXLPipelineOutput": "pipelines.i2vgen_xl",
    "StableDiffusionPipeline": "pipelines.stable_diffusion",
    "StableDiffusionInstructPix2PixPipeline": "pipelines.stable_diffusion",
    "StableDiffusionPipelineOutput": "pipelines.stable_diffusion",
    "ImagePipelineOutput": "pipelines.stable_diffusion",
    "StableDiffusionControlNetPipeline": "pipelines.controlnet",
    "TextToVideoZeroPipeline": "pipelines.text_to_video_synthesis.pipeline_text_to_video_zero",
    "TextToVideoPipelineOutput": "pipelines.text_to_video_synthesis.pipeline_text_to_video_zero",
    "TextToVideoZeroControlNetPipeline": "pipelines.text_to_video_zero_video",
    "TextToVideoZeroPix2PixPipeline": "pipelines.text_to_video_zero_video",
    # models
    "ModelMixin": "models.modeling",
    "AutoencoderKL": "models.autoencoder_kl",
    "UNet3DConditionModel": "models.unet_3d_condition",
    "UNet2DConditionModel": "models.unet_2d_condition",
    "UNetMotionModel": "models.unet_motion",
    "MotionAdapter": "models.unet_motion",
    "UNetSpatioTemporalConditionModel": "models.unet_spatio_temporal",
    "AutoencoderKLTemporalDecoder": "models.autoencoder_kl_temporal_decoder",
    "I2VGenXLUNet": "models.unet_i2vgen_xl",
    "ControlNetModel": "models.controlnet",
    "MultiControlNetModel": "models.controlnet",
    "ControlNetOutput": "models.controlnet",
    # schedulers
    "SchedulerMixin": "schedulers",
    "DDIMScheduler": "schedulers",
    "DDPMScheduler": "schedulers",
    "DPMSolverMultistepScheduler": "schedulers",
    "EulerDiscreteScheduler": "schedulers",
    "EulerAncestralDiscreteScheduler": "schedulers",
    "LMSDiscreteScheduler": "schedulers",
    "PNDMScheduler": "schedulers",
    "LCMScheduler": "schedulers",
    # attention processors
    "AttnProcessor": "layers.attention",
    "AttnProcessor2_0": "layers.attention",
    "CrossFrameAttnProcessor": "layers.cross_frame",
    "CrossFrameAttnProcessor2_0": "layers.cross_frame",
    # media helpers (also under vidiff.utils, as diffusers.utils has them)
    "load_image": "media",
    "load_video": "media",
    "export_to_video": "media",
    "export_to_gif": "media",
    # config
    "ConfigMixin": "configuration",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vidiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
