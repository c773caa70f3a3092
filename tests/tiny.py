"""Tiny random components built with the reference (diffusers) and saved to folders, for parity tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(folder: Path, model_max_length: int = 77, merges: tuple[str, ...] = ("t h", "th e</w>", "a n", "o n</w>")) -> Path:
    """A byte-level CLIP tokenizer (every byte a token, with and without </w>, plus a few merges)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": model_max_length, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))
    return folder


def clip_tokenizer(tmp: Path, model_max_length: int = 77):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp) / "tok", model_max_length))


def clip_text_encoder(seed: int = 0, hidden_size: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden_size, intermediate_size=37,
                         layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=3, vocab_size=600,
                         hidden_act="gelu", projection_dim=32, max_position_embeddings=77)
    return CLIPTextModel(cfg).eval()


def ref_unet3d(seed: int = 0, **overrides):
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
                  down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=2)
    kwargs.update(overrides)
    return UNet3DConditionModel(**kwargs).eval()


def ref_vae(seed: int = 0, **overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(32, 64), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=32, norm_num_groups=2)
    kwargs.update(overrides)
    return AutoencoderKL(**kwargs).eval()


def ref_t2v_pipeline(tmp: Path, scheduler=None, seed: int = 0):
    """A reference TextToVideoSDPipeline of tiny random components (VAE scale factor 2)."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline

    scheduler = scheduler or DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           clip_sample=False, set_alpha_to_one=False)
    pipe = TextToVideoSDPipeline(vae=ref_vae(seed), text_encoder=clip_text_encoder(seed), tokenizer=clip_tokenizer(tmp),
                                 unet=ref_unet3d(seed), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_ref_pipeline(pipe, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


# ---------------------------------------------------------------------------------------------- Stable Video Diffusion
# stabilityai/stable-video-diffusion-img2vid(-xt) scheduler/scheduler_config.json (with its legacy keys)
SVD_SCHEDULER = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                     interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction",
                     set_alpha_to_one=False, sigma_max=700.0, sigma_min=0.002, skip_prk_steps=True, steps_offset=1,
                     timestep_spacing="leading", timestep_type="continuous", trained_betas=None, use_karras_sigmas=True)


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Random values for every parameter (zero-initialised output layers would otherwise hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def clip_vision_encoder(seed: int = 0, image_size: int = 224, patch_size: int = 56, projection_dim: int = 32):
    """A tiny CLIPVisionModelWithProjection; image_size 224 is what SVD's PIL path feeds it (16 patches of 56)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, projection_dim=projection_dim, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, intermediate_size=37, patch_size=patch_size)
    return CLIPVisionModelWithProjection(cfg).eval()


def clip_image_processor(size: int = 224):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size=size, size=size)


def ref_svd_unet(seed: int = 0, **overrides):
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                  up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
                  num_attention_heads=(2, 4), in_channels=8, out_channels=4, layers_per_block=1, sample_size=8,
                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, num_frames=3)
    kwargs.update(overrides)
    return randomize(UNetSpatioTemporalConditionModel(**kwargs), seed)


def ref_svd_vae(seed: int = 0, **overrides):
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
                  layers_per_block=1)
    kwargs.update(overrides)
    return randomize(AutoencoderKLTemporalDecoder(**kwargs), seed + 1)


def ref_svd_pipeline(seed: int = 0, unet: dict | None = None, vae: dict | None = None, image_size: int = 224):
    """A reference StableVideoDiffusionPipeline of tiny random components (VAE scale factor 2 by default)."""
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline(vae=ref_svd_vae(seed, **(vae or {})), image_encoder=clip_vision_encoder(seed, image_size),
                                        unet=ref_svd_unet(seed, **(unet or {})),
                                        scheduler=EulerDiscreteScheduler.from_config(SVD_SCHEDULER),
                                        feature_extractor=clip_image_processor(image_size))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------- I2VGen-XL
# ali-vilab/i2vgen-xl ships DDIM with v-prediction on a zero-terminal-SNR cosine schedule
I2VGEN_SCHEDULER = dict(beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02, clip_sample=False,
                        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                        set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")


def ref_i2vgen_unet(seed: int = 0, **overrides):
    from diffusers import I2VGenXLUNet

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
                  down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=2)
    kwargs.update(overrides)
    return randomize(I2VGenXLUNet(**kwargs), seed)


def ref_i2vgen_pipeline(tmp: Path, seed: int = 0, image_size: int = 32, **unet_overrides):
    """A reference I2VGenXLPipeline of tiny random components (VAE scale factor 2, CLIP image size 32)."""
    from diffusers import DDIMScheduler, I2VGenXLPipeline

    pipe = I2VGenXLPipeline(vae=ref_vae(seed), text_encoder=clip_text_encoder(seed), tokenizer=clip_tokenizer(tmp),
                            image_encoder=clip_vision_encoder(seed, image_size=image_size, patch_size=8),
                            feature_extractor=clip_image_processor(image_size), unet=ref_i2vgen_unet(seed, **unet_overrides),
                            scheduler=DDIMScheduler(**I2VGEN_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------- Stable Diffusion 1.x (Text2Video-Zero)
SD_DDIM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)


def ref_unet2d(seed: int = 0, **overrides):
    """A tiny SD-1.x-shaped UNet2DConditionModel (two levels, cross-attention, 4 -> 4 channels)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=2)
    kwargs.update(overrides)
    return randomize(UNet2DConditionModel(**kwargs), seed)


def ref_t2v_zero_pipeline(tmp: Path, seed: int = 0, scheduler=None):
    """A reference TextToVideoZeroPipeline of tiny random components (VAE scale factor 2, no safety checker)."""
    from diffusers import DDIMScheduler, TextToVideoZeroPipeline

    pipe = TextToVideoZeroPipeline(vae=ref_vae(seed), text_encoder=clip_text_encoder(seed), tokenizer=clip_tokenizer(tmp),
                                   unet=ref_unet2d(seed), scheduler=scheduler or DDIMScheduler(**SD_DDIM),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ref_controlnet(seed: int = 0, **overrides):
    """A tiny ControlNetModel matching ref_unet2d (conditioning images at 2x the latent size, as ref_vae makes)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    kwargs = dict(block_out_channels=(32, 64), layers_per_block=1, in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=2, conditioning_embedding_out_channels=(16, 32))
    kwargs.update(overrides)
    return randomize(ControlNetModel(**kwargs), seed + 7)


def ref_sd_controlnet_pipeline(tmp: Path, seed: int = 0, controlnet=None):
    """A reference StableDiffusionControlNetPipeline of tiny random components (no safety checker)."""
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(vae=ref_vae(seed), text_encoder=clip_text_encoder(seed), tokenizer=clip_tokenizer(tmp),
                                             unet=ref_unet2d(seed), controlnet=controlnet or ref_controlnet(seed),
                                             scheduler=DDIMScheduler(**SD_DDIM), safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ref_pix2pix_pipeline(tmp: Path, seed: int = 0):
    """A reference StableDiffusionInstructPix2PixPipeline of tiny random components (EulerAncestral, as the checkpoint)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=ref_vae(seed), text_encoder=clip_text_encoder(seed), tokenizer=clip_tokenizer(tmp), unet=ref_unet2d(seed, in_channels=8),
        scheduler=EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
