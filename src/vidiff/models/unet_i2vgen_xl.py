"""I2VGenXLUNet: the I2VGen-XL image+text-to-video UNet, diffusers-checkpoint compatible.

It is the ModelScope 3-D UNet (same down/mid/up blocks, see ``unet_3d_condition``) with three kinds of image
conditioning on top:

- *local*: the VAE latents of the first image (plus a per-frame position mask, built by the pipeline) pass through
  ``image_latents_proj_in`` (convs) and ``image_latents_temporal_encoder`` (attention over frames) and are
  concatenated to the noisy sample on the channel axis, so ``conv_in`` takes ``2 * in_channels``;
- *context*: the first frame's latents become 8x8 = 64 extra cross-attention tokens
  (``image_latents_context_embedding``), and the CLIP image embedding becomes ``in_channels`` more
  (``context_embedding``), appended after the text tokens;
- *fps*: the target frame rate is embedded like a timestep (``fps_embedding``) and added to the time embedding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..configuration import Config, ConfigError
from ..layers.attention import Attention, AttentionProcessorMixin
from ..layers.embeddings import TimestepEmbedding, Timesteps, timesteps_for_batch
from ..layers.resnets import get_activation
from ..layers.temporal import fold_frames, unfold_frames
from ..layers.transformers import FeedForward, ForwardChunkingMixin, TransformerTemporalModel
from ..layers.unet_passes import FreeUMixin
from ..runtime.guidance import once_for_equal_halves
from ..runtime.layout import GroupNorm
from ..runtime.linear import Linear
from .modeling import ModelMixin
from .unet_2d_condition import UNetPassesMixin, check_video_sample
from .unet_3d_condition import UNet3DConditionModel, UNet3DConditionOutput, build_3d_blocks

logger = logging.getLogger(__name__)

_DOWN_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
_UP_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")
_IMAGE_LATENT_CHANNELS = 4  # the image-latent convs take 4 channels (the VAE's), whatever in_channels is


@dataclass
class I2VGenXLUNetConfig(Config):
    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
    up_block_types: tuple[str, ...] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    norm_num_groups: int | None = 32
    cross_attention_dim: int = 1024
    # Historically misnamed: the number of channels per head of the spatial/temporal transformers.
    attention_head_dim: int | tuple[int, ...] = 64
    # Read from config files but, as in the reference, not used: attention_head_dim decides the heads.
    num_attention_heads: int | tuple[int, ...] | None = None

    def validate(self) -> None:
        n = len(self.down_block_types)
        if len(self.up_block_types) != n or len(self.block_out_channels) != n:
            raise ConfigError(
                f"down_block_types ({n}), up_block_types ({len(self.up_block_types)}) and block_out_channels "
                f"({len(self.block_out_channels)}) must have the same length."
            )
        for name, types, known in (("down", self.down_block_types, _DOWN_TYPES), ("up", self.up_block_types, _UP_TYPES)):
            unknown = [t for t in types if t not in known]
            if unknown:
                raise ConfigError(f"{name}_block_types has unknown block types {unknown}; expected any of {list(known)}")
        if not isinstance(self.attention_head_dim, int):
            raise ConfigError(
                f"attention_head_dim must be one int for I2VGenXLUNet (its transformer_in uses it), got {self.attention_head_dim!r}"
            )
        if self.norm_num_groups is None:
            raise ConfigError("norm_num_groups=None is not supported by I2VGenXLUNet; set it (e.g. 32).")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.attention_head_dim:
                raise ConfigError(
                    f"every block_out_channels entry must be divisible by norm_num_groups={self.norm_num_groups} and "
                    f"attention_head_dim={self.attention_head_dim}; {c} is not (block_out_channels={list(self.block_out_channels)})."
                )


class I2VGenXLTransformerTemporalEncoder(nn.Module):
    """Pre-norm self-attention over frames + feed-forward (keys ``norm1``, ``attn1``, ``ff``): (n, f, c) -> (n, f, c)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, activation_fn: str = "geglu",
                 upcast_attention: bool = False, ff_inner_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=True, eps=1e-5)
        self.attn1 = Attention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                               bias=False, upcast_attention=upcast_attention, out_bias=True)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=False,
                              inner_dim=ff_inner_dim, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), encoder_hidden_states=None)
        return hidden_states + self.ff(hidden_states)


def _image_latents_proj_in(c: int) -> nn.Sequential:
    """3x3 convs 4 -> 4c -> 4c -> c with SiLU between (keys .0, .2, .4)."""
    return nn.Sequential(
        nn.Conv2d(_IMAGE_LATENT_CHANNELS, c * 4, 3, padding=1), nn.SiLU(),
        nn.Conv2d(c * 4, c * 4, 3, stride=1, padding=1), nn.SiLU(),
        nn.Conv2d(c * 4, c, 3, stride=1, padding=1),
    )  # fmt: skip


def _image_latents_context_embedding(c: int, cross_attention_dim: int) -> nn.Sequential:
    """First-frame latents -> a 8x8 grid of cross-attention tokens: conv, pool to 32x32, two stride-2 convs (keys .0, .3, .5)."""
    return nn.Sequential(
        nn.Conv2d(_IMAGE_LATENT_CHANNELS, c * 8, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d((32, 32)),
        nn.Conv2d(c * 8, c * 16, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(c * 16, cross_attention_dim, 3, stride=2, padding=1),
    )  # fmt: skip


class I2VGenXLUNet(ModelMixin, AttentionProcessorMixin, ForwardChunkingMixin, FreeUMixin, UNetPassesMixin):
    """Noisy video latents (b, c, f, h, w) + timestep + fps + image latents/embedding + text states -> (b, c_out, f, h, w)."""

    config_class = I2VGenXLUNetConfig
    _supports_gradient_checkpointing = False

    def __init__(self, config: I2VGenXLUNetConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        if cfg.num_attention_heads is not None and cfg.num_attention_heads != cfg.attention_head_dim:
            logger.debug("I2VGenXLUNet: num_attention_heads=%r is ignored (as in the reference); heads come from attention_head_dim",
                         cfg.num_attention_heads)
        channels, c, dim = cfg.block_out_channels, cfg.in_channels, cfg.cross_attention_dim
        time_embed_dim = channels[0] * 4
        self.sample_size = cfg.sample_size

        # registration order follows the reference (it fixes state_dict and attn_processors order)
        self.conv_in = nn.Conv2d(c + c, channels[0], kernel_size=3, padding=1)
        self.transformer_in = TransformerTemporalModel(
            num_attention_heads=8, attention_head_dim=cfg.attention_head_dim, in_channels=channels[0], num_layers=1,
            norm_num_groups=cfg.norm_num_groups,
        )  # fmt: skip
        self.image_latents_proj_in = _image_latents_proj_in(c)
        self.image_latents_temporal_encoder = I2VGenXLTransformerTemporalEncoder(
            dim=c, num_attention_heads=2, ff_inner_dim=c * 4, attention_head_dim=c, activation_fn="gelu")
        self.image_latents_context_embedding = _image_latents_context_embedding(c, dim)
        self.time_proj = Timesteps(channels[0], True, 0)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim, act_fn="silu")
        self.context_embedding = nn.Sequential(Linear(dim, time_embed_dim), nn.SiLU(), Linear(time_embed_dim, dim * c))
        self.fps_embedding = nn.Sequential(Linear(channels[0], time_embed_dim), nn.SiLU(), Linear(time_embed_dim, time_embed_dim))
        build_3d_blocks(self, cfg, time_embed_dim, eps=1e-05, act_fn="silu", downsample_padding=1, mid_block_scale_factor=1)
        self.conv_norm_out = GroupNorm(num_channels=channels[0], num_groups=cfg.norm_num_groups, eps=1e-05)
        self.conv_act = get_activation("silu")
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, kernel_size=3, padding=1)

    # The time embedding is the ModelScope UNet's (the down/mid/up passes come from UNetPassesMixin, as there).
    _embed_time = UNet3DConditionModel._embed_time

    # ------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        fps: torch.Tensor,
        image_latents: torch.Tensor,
        image_embeddings: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """Denoise ``sample`` (b, c, f, h, w).

        ``fps``: frame rate(s), a number or a tensor of 1 or b values; ``image_latents``: (b, 4, f, h, w) VAE latents
        of the conditioning image with the position mask; ``image_embeddings``: (b, 1, cross_attention_dim) CLIP image
        embeddings; ``encoder_hidden_states``: (b, seq, cross_attention_dim) text states.
        """
        self._check_inputs(sample, fps, image_latents, image_embeddings, encoder_hidden_states)
        batch, _, num_frames = sample.shape[:3]
        forward_upsample_size = self._needs_upsample_size(sample)

        emb = self._embed_time(timestep, timestep_cond, batch, sample.device)  # b d
        fps = timesteps_for_batch(fps, batch, sample.device)
        emb = emb + self.fps_embedding(self.time_proj(fps).to(dtype=emb.dtype))
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=batch * num_frames)  # (b f) d
        context = self._context(encoder_hidden_states, image_latents, image_embeddings)  # b n d, shared by the frames

        def prefix(sample: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:  # the same for [uncond, cond] halves
            x = torch.cat([sample, self._local_image_features(image_latents)], dim=1)  # b 2c f h w
            x = self.conv_in(fold_frames(x))  # (b f) c h w
            return self.transformer_in(x, num_frames=num_frames, cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]

        x = once_for_equal_halves(prefix, sample, image_latents)
        cond = dict(encoder_hidden_states=context, cross_attention_kwargs=cross_attention_kwargs)
        x, skips = self._down(x, emb, cond, num_frames)
        x = self._mid(x, emb, cond, num_frames)
        x = self._up(x, skips, emb, cond, num_frames, forward_upsample_size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        out = unfold_frames(x, num_frames)  # b c f h w
        return UNet3DConditionOutput(sample=out) if return_dict else (out,)

    def _context(self, text: torch.Tensor, image_latents: torch.Tensor, image_embeddings: torch.Tensor) -> torch.Tensor:
        """Cross-attention tokens: text, then 64 first-frame latent tokens, then in_channels CLIP-image tokens."""
        first = self.image_latents_context_embedding(image_latents[:, :, 0])  # b d 8 8
        first = first.permute(0, 2, 3, 1).flatten(1, 2)  # b 64 d
        image = self.context_embedding(image_embeddings)  # b 1 (c d)
        image = image.view(-1, self.config.in_channels, self.config.cross_attention_dim)  # b c d
        return torch.cat([text, first, image], dim=1)

    def _local_image_features(self, image_latents: torch.Tensor) -> torch.Tensor:
        """(b, 4, f, h, w) image latents -> (b, c, f, h, w): per-frame convs, then attention along frames at each pixel."""
        b, _, f, h, w = image_latents.shape
        x = self.image_latents_proj_in(fold_frames(image_latents))  # (b f) c h w
        c = x.shape[1]
        x = x.reshape(b, f, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, f, c)  # (b h w) f c
        x = self.image_latents_temporal_encoder(x)
        return x.reshape(b, h, w, f, c).permute(0, 4, 3, 1, 2)  # b c f h w

    def _check_inputs(self, sample, fps, image_latents, image_embeddings, encoder_hidden_states) -> None:
        cfg = self.config
        check_video_sample(sample, cfg.in_channels)
        b, _, f, h, w = sample.shape
        expected = (b, _IMAGE_LATENT_CHANNELS, f, h, w)
        if not isinstance(image_latents, torch.Tensor) or tuple(image_latents.shape) != expected:
            got = tuple(image_latents.shape) if isinstance(image_latents, torch.Tensor) else type(image_latents).__name__
            raise ValueError(f"image_latents must be {expected} (the image's VAE latents, one per frame with the position "
                             f"mask, as I2VGenXLPipeline.prepare_image_latents makes them), got {got}")
        d = cfg.cross_attention_dim
        for name, t, tokens in (("encoder_hidden_states", encoder_hidden_states, "tokens"), ("image_embeddings", image_embeddings, 1)):
            if t is None:
                raise ValueError(f"I2VGenXLUNet needs {name}: (batch={b}, {tokens}, {d})")
            if t.ndim != 3 or t.shape[0] != b or t.shape[-1] != d or (tokens == 1 and t.shape[1] != 1):
                raise ValueError(f"{name} must be (batch={b}, {tokens}, {d}), got shape {tuple(t.shape)}")
        if fps is None or (isinstance(fps, torch.Tensor) and (fps.ndim > 1 or fps.numel() not in (1, b))):
            got = None if fps is None else tuple(fps.shape)
            raise ValueError(f"fps must be a number or a tensor of 1 or batch={b} frame rates, got {got}")
