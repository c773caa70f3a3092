"""The Stable Diffusion 1.x/2.x conditional UNet (``UNet2DConditionModel``), state-dict compatible with diffusers.

Keys: ``conv_in``, ``time_proj``/``time_embedding`` (``cond_proj`` with LCM's time_cond_proj_dim),
``class_embedding``, ``add_embedding``, ``down_blocks``, ``up_blocks``, ``mid_block``, ``conv_norm_out``, ``conv_out``.
ControlNet residuals (``down_block_additional_residuals`` + ``mid_block_additional_residual``) and T2I-Adapter
features (``down_intrablock_additional_residuals``) are added exactly where the reference adds them.

Usage::

    unet = UNet2DConditionModel.from_pretrained("runwayml/stable-diffusion-v1-5", subfolder="unet")
    eps = unet(latents, t, encoder_hidden_states=text).sample          # (b, 4, h, w) -> (b, 4, h, w)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..configuration import Config, ConfigError
from ..layers.attention import AttentionProcessorMixin
from ..layers.embeddings import TimestepEmbedding, add_text_time_embedding, add_unet_stem, timesteps_for_batch
from ..layers.resnets import get_activation
from ..layers.transformers import ForwardChunkingMixin
from ..layers.unet_2d_blocks import DOWN_BLOCKS, MID_BLOCKS, UP_BLOCKS, block_class, get_down_block, get_mid_block, get_up_block
from ..layers.unet_passes import FreeUMixin
from ..runtime.layout import GroupNorm
from ..runtime.linear import Linear
from .modeling import ModelMixin
from .outputs import BaseOutput

_CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection", "simple_projection")


@dataclass
class UNet2DConditionOutput(BaseOutput):
    """``sample``: (batch, channels, height, width)."""

    sample: torch.Tensor = None


@dataclass
class UNet2DConditionConfig(Config):
    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] = 1
    reverse_transformer_layers_per_block: tuple[tuple[int, ...], ...] | None = None
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    # Historically misnamed (diffusers issue #2011): this is the number of heads of the spatial transformers.
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False  # only used by block types vidiff does not build (as in the reference)
    resnet_out_scale_factor: float = 1.0  # idem
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    projection_class_embeddings_input_dim: int | None = None
    attention_type: str = "default"
    class_embeddings_concat: bool = False
    mid_block_only_cross_attention: bool | None = None  # only used by UNetMidBlock2DSimpleCrossAttn
    cross_attention_norm: str | None = None  # only used by the SimpleCrossAttn block types
    addition_embed_type_num_heads: int = 64

    def validate(self) -> None:
        if self.num_attention_heads is not None:
            raise ConfigError(
                "UNet2DConditionModel does not accept num_attention_heads (the reference refuses it too, see diffusers "
                "issue #2011): its attention_head_dim holds the number of heads; leave num_attention_heads=None."
            )
        if self.encoder_hid_dim is not None and self.encoder_hid_dim_type is None:
            self.encoder_hid_dim_type = "text_proj"  # the reference's default, written back to the config as it does
        check_unet_lengths(self, ("only_cross_attention", "attention_head_dim", "cross_attention_dim", "layers_per_block"))
        self._check_supported()
        check_unet_channels(self, self.attention_head_dim)

    def _check_supported(self) -> None:
        for name, types, known in (("down", self.down_block_types, DOWN_BLOCKS), ("up", self.up_block_types, UP_BLOCKS)):
            for block_type in types:
                block_class(name, block_type, known)
        _require(self.mid_block_type in MID_BLOCKS, "mid_block_type", self.mid_block_type, MID_BLOCKS)
        _require(self.time_embedding_type == "positional", "time_embedding_type", self.time_embedding_type, ("positional",))
        _require(self.class_embed_type in _CLASS_EMBED_TYPES, "class_embed_type", self.class_embed_type, _CLASS_EMBED_TYPES)
        _require(self.addition_embed_type in (None, "text_time"), "addition_embed_type", self.addition_embed_type, (None, "text_time"))
        _require(self.encoder_hid_dim_type in (None, "text_proj"), "encoder_hid_dim_type", self.encoder_hid_dim_type, (None, "text_proj"))
        _require(self.resnet_time_scale_shift in ("default", "scale_shift"), "resnet_time_scale_shift",
                 self.resnet_time_scale_shift, ("default", "scale_shift"))
        _require(not self.dual_cross_attention, "dual_cross_attention", self.dual_cross_attention, (False,))
        _require(self.attention_type == "default", "attention_type", self.attention_type, ("default",))
        if self.encoder_hid_dim_type is not None and self.encoder_hid_dim is None:
            raise ConfigError(f"encoder_hid_dim must be set when encoder_hid_dim_type is {self.encoder_hid_dim_type!r}")
        needs_projection = self.class_embed_type in ("projection", "simple_projection") or self.addition_embed_type == "text_time"
        if needs_projection and self.projection_class_embeddings_input_dim is None:
            raise ConfigError("projection_class_embeddings_input_dim must be set for class_embed_type "
                              f"{self.class_embed_type!r} / addition_embed_type {self.addition_embed_type!r}")
        if self.addition_embed_type == "text_time" and self.addition_time_embed_dim is None:
            raise ConfigError("addition_embed_type='text_time' needs addition_time_embed_dim (e.g. 256)")


def _require(ok: bool, key: str, value: Any, supported: tuple) -> None:
    if not ok:
        raise NotImplementedError(f"{key}={value!r} is not supported by vidiff's UNet; supported values: {list(supported)}")


def check_unet_lengths(cfg: Config, per_block_keys: tuple[str, ...]) -> None:
    """Block lists of equal length; per-block options either one value or one per block; asymmetry spelled out."""
    n = len(cfg.down_block_types)
    if len(cfg.up_block_types) != n or len(cfg.block_out_channels) != n:
        raise ConfigError(
            f"down_block_types ({n}), up_block_types ({len(cfg.up_block_types)}) and block_out_channels "
            f"({len(cfg.block_out_channels)}) must have the same length."
        )
    for key in per_block_keys:
        value = cfg[key]
        if isinstance(value, tuple) and len(value) != n:
            raise ConfigError(f"{key} must be one value or one per block ({n}), got {value!r}")
    layers = cfg.transformer_layers_per_block
    if isinstance(layers, tuple) and any(isinstance(v, tuple) for v in layers) and cfg.reverse_transformer_layers_per_block is None:
        raise ConfigError("transformer_layers_per_block gives per-layer counts (an asymmetrical UNet): "
                          "set reverse_transformer_layers_per_block for the up blocks too.")


def check_unet_channels(cfg: Config, heads: int | tuple[int, ...]) -> None:
    """Every block width divisible by the norm groups and, where attended, by its number of heads."""
    if cfg.norm_num_groups is None:
        raise ConfigError("norm_num_groups=None is not supported (the UNet blocks need group norms); set it, e.g. 32.")
    heads = heads if isinstance(heads, tuple) else (heads,) * len(cfg.block_out_channels)
    for c, h, block_type in zip(cfg.block_out_channels, heads, cfg.down_block_types):
        if c % cfg.norm_num_groups or ("CrossAttn" in block_type and c % h):
            raise ConfigError(
                f"block width {c} must be divisible by norm_num_groups={cfg.norm_num_groups} and by its number of "
                f"attention heads {h} (block_out_channels={list(cfg.block_out_channels)})."
            )


def expand(value: Any, n: int) -> list[Any]:
    """A per-block option as a list of ``n`` values."""
    return list(value) if isinstance(value, (tuple, list)) else [value] * n


def keep_mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A (batch, key_tokens) keep-mask (1 keep, 0 discard) -> an additive bias (batch, 1, key_tokens)."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


def without_lora_scale(cross_attention_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The kwargs minus the LoRA ``scale``, which the reference takes out before the blocks (no LoRA layers here)."""
    if not cross_attention_kwargs or "scale" not in cross_attention_kwargs:
        return cross_attention_kwargs
    return {k: v for k, v in cross_attention_kwargs.items() if k != "scale"}


def check_video_sample(sample: torch.Tensor, in_channels: int) -> None:
    """Video UNets take channels-first latents (batch, in_channels, frames, height, width)."""
    if sample.ndim != 5 or sample.shape[1] != in_channels:
        raise ValueError(
            f"sample must be (batch, {in_channels}, frames, height, width), got shape {tuple(sample.shape)}; "
            "video latents are channels-first with frames on axis 2."
        )


def text_time_embedding(add_time_proj: nn.Module, add_embedding: nn.Module, added_cond_kwargs: dict | None, dtype) -> torch.Tensor:
    """SDXL-style extra embedding from ``added_cond_kwargs['text_embeds']`` and ``['time_ids']``."""
    missing = [k for k in ("text_embeds", "time_ids") if k not in (added_cond_kwargs or {})]
    if missing:
        raise ValueError(f"addition_embed_type='text_time' needs added_cond_kwargs with {missing} (pooled text embeddings "
                         "and the size/crop time ids), as the SDXL pipelines pass them.")
    text_embeds = added_cond_kwargs["text_embeds"]
    time_embeds = add_time_proj(added_cond_kwargs["time_ids"].flatten()).reshape((text_embeds.shape[0], -1))
    return add_embedding(torch.concat([text_embeds, time_embeds], dim=-1).to(dtype))


class UNetPassesMixin:
    """Down, mid and up passes shared by the SD-style UNets (2-D, motion, ModelScope 3-D, I2VGen-XL, ControlNet).

    ``cond`` holds the keywords of the blocks with cross-attention; blocks with temporal layers (``needs_num_frames``)
    also get ``num_frames``.
    """

    @staticmethod
    def _block_kwargs(block: nn.Module, cond: dict[str, Any], num_frames: int) -> dict[str, Any]:
        kwargs = dict(cond) if getattr(block, "has_cross_attention", False) else {}
        if getattr(block, "needs_num_frames", False):
            kwargs["num_frames"] = num_frames
        return kwargs

    def _down(self, x, emb, cond, num_frames: int = 1, intrablock: list | None = None):
        """Run the down blocks; returns the features and every skip (T2I-Adapter features consumed from ``intrablock``)."""
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            kwargs = self._block_kwargs(block, cond, num_frames)
            if intrablock and block.has_cross_attention:
                kwargs["additional_residuals"] = intrablock.pop(0)
            x, res = block(hidden_states=x, temb=emb, **kwargs)
            if intrablock and not block.has_cross_attention:
                x = x + intrablock.pop(0)
                res = res[:-1] + (x,)  # the reference adds in place, so the last skip gets it too
            skips += res
        return x, skips

    def _mid(self, x, emb, cond, num_frames: int = 1):
        if self.mid_block is None:
            return x
        return self.mid_block(x, emb, **self._block_kwargs(self.mid_block, cond, num_frames))

    def _up(self, x, skips, emb, cond, num_frames: int, forward_upsample_size: bool):
        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            if forward_upsample_size and i < len(self.up_blocks) - 1:  # odd sizes: upsample to the next skip's size
                upsample_size = skips[-1].shape[2:]
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                      **self._block_kwargs(block, cond, num_frames))
        return x

    @staticmethod
    def _add_skip_residuals(skips, residuals):
        if residuals is None:
            return skips
        if len(residuals) != len(skips):
            raise ValueError(
                f"down_block_additional_residuals has {len(residuals)} tensors but the down path produces {len(skips)} "
                "skip connections; pass one residual per skip (e.g. the matching ControlNet's down_block_res_samples)."
            )
        return tuple(s + r for s, r in zip(skips, residuals))

    def _needs_upsample_size(self, sample: torch.Tensor) -> bool:
        factor = 2**self.num_upsamplers
        return any(s % factor != 0 for s in sample.shape[-2:])

    def _post(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_norm_out is not None:
            x = self.conv_act(self.conv_norm_out(x))
        return self.conv_out(x)


class UNet2DConditionModel(ModelMixin, AttentionProcessorMixin, ForwardChunkingMixin, FreeUMixin, UNetPassesMixin):
    """Conditional 2-D UNet: noisy latents (b, c, h, w) + timestep + text states (b, n, d) -> (b, c_out, h, w)."""

    config_class = UNet2DConditionConfig
    _supports_gradient_checkpointing = False

    def __init__(self, config: UNet2DConditionConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        channels = cfg.block_out_channels
        self.sample_size = cfg.sample_size
        time_embed_dim = cfg.time_embedding_dim or channels[0] * 4
        add_unet_stem(self, cfg.in_channels, channels[0], time_embed_dim, conv_kernel=cfg.conv_in_kernel,
                      flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift, act_fn=cfg.act_fn,
                      post_act_fn=cfg.timestep_post_act, cond_proj_dim=cfg.time_cond_proj_dim)
        self.encoder_hid_proj = Linear(cfg.encoder_hid_dim, cfg.cross_attention_dim) if cfg.encoder_hid_dim_type else None
        self.class_embedding = self._make_class_embedding(cfg, channels[0], time_embed_dim)
        if cfg.addition_embed_type == "text_time":
            add_text_time_embedding(self, cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim, time_embed_dim,
                                    cfg.flip_sin_to_cos, cfg.freq_shift)
        self.time_embed_act = get_activation(cfg.time_embedding_act_fn) if cfg.time_embedding_act_fn else None
        self._build_blocks(cfg, time_embed_dim * 2 if cfg.class_embeddings_concat else time_embed_dim)
        self.conv_norm_out = GroupNorm(num_channels=channels[0], num_groups=cfg.norm_num_groups, eps=cfg.norm_eps)
        self.conv_act = get_activation(cfg.act_fn)
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, kernel_size=cfg.conv_out_kernel, padding=(cfg.conv_out_kernel - 1) // 2)

    @staticmethod
    def _make_class_embedding(cfg: UNet2DConditionConfig, timestep_input_dim: int, time_embed_dim: int) -> nn.Module | None:
        kind = cfg.class_embed_type
        if kind is None:
            return nn.Embedding(cfg.num_class_embeds, time_embed_dim) if cfg.num_class_embeds is not None else None
        if kind == "timestep":
            return TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=cfg.act_fn)
        if kind == "identity":
            return nn.Identity()
        if kind == "projection":
            return TimestepEmbedding(cfg.projection_class_embeddings_input_dim, time_embed_dim)
        return Linear(cfg.projection_class_embeddings_input_dim, time_embed_dim)  # simple_projection

    def _build_blocks(self, cfg: UNet2DConditionConfig, temb: int) -> None:
        channels, n = cfg.block_out_channels, len(cfg.block_out_channels)
        heads, cross_dims = expand(cfg.attention_head_dim, n), expand(cfg.cross_attention_dim, n)
        layers, t_layers = expand(cfg.layers_per_block, n), expand(cfg.transformer_layers_per_block, n)
        only_cross = expand(cfg.only_cross_attention, n)
        common = dict(
            temb_channels=temb, resnet_eps=cfg.norm_eps, resnet_act_fn=cfg.act_fn, resnet_groups=cfg.norm_num_groups,
            use_linear_projection=cfg.use_linear_projection, upcast_attention=cfg.upcast_attention,
            resnet_time_scale_shift=cfg.resnet_time_scale_shift, dropout=cfg.dropout,
        )  # fmt: skip
        self.down_blocks = nn.ModuleList(
            get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=t_layers[i], in_channels=channels[max(i - 1, 0)],
                out_channels=channels[i], add_downsample=i < n - 1, cross_attention_dim=cross_dims[i],
                num_attention_heads=heads[i], downsample_padding=cfg.downsample_padding, only_cross_attention=only_cross[i], **common,
            )  # fmt: skip
            for i, block_type in enumerate(cfg.down_block_types)
        )
        # the reference builds down, mid, up but registers down, up, mid (state_dict and attn_processors order)
        mid_block = get_mid_block(
            cfg.mid_block_type, in_channels=channels[-1], output_scale_factor=cfg.mid_block_scale_factor,
            transformer_layers_per_block=t_layers[-1], num_attention_heads=heads[-1], cross_attention_dim=cross_dims[-1], **common,
        )  # fmt: skip
        rev = list(reversed(channels))
        rev_t_layers = cfg.reverse_transformer_layers_per_block or list(reversed(t_layers))
        rev_heads, rev_layers, rev_cross = heads[::-1], layers[::-1], cross_dims[::-1]
        self.num_upsamplers = n - 1
        self.up_blocks = nn.ModuleList(
            get_up_block(
                block_type, num_layers=rev_layers[i] + 1, transformer_layers_per_block=rev_t_layers[i],
                in_channels=rev[min(i + 1, n - 1)], out_channels=rev[i], prev_output_channel=rev[max(i - 1, 0)],
                add_upsample=i < n - 1, resolution_idx=i, cross_attention_dim=rev_cross[i], num_attention_heads=rev_heads[i],
                only_cross_attention=only_cross[::-1][i], **common,
            )  # fmt: skip
            for i, block_type in enumerate(cfg.up_block_types)
        )
        self.mid_block = mid_block

    # ------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict the noise (or v) in ``sample`` at ``timestep`` given ``encoder_hidden_states``.

        ControlNet: pass both ``down_block_additional_residuals`` (one per skip) and ``mid_block_additional_residual``.
        T2I-Adapter: ``down_intrablock_additional_residuals`` (the reference's legacy form, down residuals without a mid
        residual, is read the same way). Masks are (batch, key_tokens) keep-masks, turned into additive biases.
        """
        self._check_inputs(sample, encoder_hidden_states)
        forward_upsample_size = self._needs_upsample_size(sample)
        cond = dict(
            encoder_hidden_states=encoder_hidden_states, attention_mask=keep_mask_to_bias(attention_mask, sample.dtype),
            cross_attention_kwargs=without_lora_scale(cross_attention_kwargs),
            encoder_attention_mask=keep_mask_to_bias(encoder_attention_mask, sample.dtype),
        )  # fmt: skip
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self._embed(sample, timestep, timestep_cond, class_labels, added_cond_kwargs)
        if self.encoder_hid_proj is not None:
            cond["encoder_hidden_states"] = self.encoder_hid_proj(encoder_hidden_states)

        is_controlnet = mid_block_additional_residual is not None and down_block_additional_residuals is not None
        intrablock = down_intrablock_additional_residuals
        if intrablock is None and mid_block_additional_residual is None and down_block_additional_residuals is not None:
            intrablock = down_block_additional_residuals  # legacy T2I-Adapter call, as the reference reads it
        intrablock = list(intrablock) if intrablock is not None else None  # consumed as blocks use them; caller's copy kept

        x, skips = self._down(self.conv_in(sample), emb, cond, intrablock=intrablock)  # b c h w
        if is_controlnet:
            skips = self._add_skip_residuals(skips, down_block_additional_residuals)
        x = self._mid(x, emb, cond)
        if self.mid_block is not None and intrablock and x.shape == intrablock[0].shape:  # T2I-Adapter-XL
            x = x + intrablock.pop(0)
        if is_controlnet:
            x = x + mid_block_additional_residual
        x = self._post(self._up(x, skips, emb, cond, 1, forward_upsample_size))
        return UNet2DConditionOutput(sample=x) if return_dict else (x,)

    def _embed(self, sample, timestep, timestep_cond, class_labels, added_cond_kwargs) -> torch.Tensor:
        """Timestep (+ class) (+ SDXL text/time) embedding, (b, time_embed_dim)."""
        t_emb = self.time_proj(timesteps_for_batch(timestep, sample.shape[0], sample.device)).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            class_emb = self._class_embed(sample, class_labels)
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        if self.config.addition_embed_type == "text_time":
            emb = emb + text_time_embedding(self.add_time_proj, self.add_embedding, added_cond_kwargs, emb.dtype)
        return self.time_embed_act(emb) if self.time_embed_act is not None else emb

    def _class_embed(self, sample: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        if class_labels is None:
            raise ValueError(
                f"this UNet has a class embedding (class_embed_type={self.config.class_embed_type!r}, num_class_embeds="
                f"{self.config.num_class_embeds}): pass class_labels (one per sample) to forward."
            )
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
        return self.class_embedding(class_labels).to(dtype=sample.dtype)

    def _check_inputs(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(
                f"sample must be (batch, {cfg.in_channels}, height, width), got shape {tuple(sample.shape)}; "
                "for video latents (batch, channels, frames, h, w) use a video UNet (UNetMotionModel, UNet3DConditionModel)."
            )
        width = cfg.encoder_hid_dim if cfg.encoder_hid_dim_type else cfg.cross_attention_dim
        width = width if isinstance(width, int) else None
        if encoder_hidden_states is None or encoder_hidden_states.ndim != 3 or (width and encoder_hidden_states.shape[-1] != width):
            got = None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape)
            raise ValueError(f"encoder_hidden_states must be (batch, sequence, {width or 'cross_attention_dim'}), got {got}.")
