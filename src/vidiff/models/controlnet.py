"""ControlNet (``ControlNetModel``) and several ControlNets summed (``MultiControlNetModel``), state-dict compatible
with diffusers.

A ControlNet is the down half of an SD UNet (``conv_in``, time embedding, ``down_blocks``, ``mid_block``: the same
blocks as :class:`~vidiff.models.unet_2d_condition.UNet2DConditionModel`) plus a small encoder of the control image
(``controlnet_cond_embedding``) and zero-initialised 1x1 convs (``controlnet_down_blocks``,
``controlnet_mid_block``) whose outputs are added to the UNet's skips and mid features.

Usage::

    controlnet = ControlNetModel.from_pretrained("lllyasviel/sd-controlnet-canny")
    down, mid = controlnet(latents, t, encoder_hidden_states=text, controlnet_cond=edges, return_dict=False)
    eps = unet(latents, t, encoder_hidden_states=text, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import Config, ConfigError
from ..layers.attention import AttentionProcessorMixin
from ..layers.embeddings import TimestepEmbedding, add_text_time_embedding, add_unet_stem, timesteps_for_batch
from ..layers.unet_2d_blocks import DOWN_BLOCKS, block_class, get_down_block, get_mid_block
from ..runtime.linear import Linear
from .modeling import ModelMixin
from .outputs import BaseOutput
from .unet_2d_condition import (
    UNet2DConditionModel,
    UNetPassesMixin,
    expand,
    keep_mask_to_bias,
    text_time_embedding,
    without_lora_scale,
)


@dataclass
class ControlNetOutput(BaseOutput):
    """``down_block_res_samples``: one residual per UNet skip; ``mid_block_res_sample``: the mid-block residual."""

    down_block_res_samples: tuple[torch.Tensor, ...] = None
    mid_block_res_sample: torch.Tensor = None


@dataclass
class ControlNetConfig(Config):
    in_channels: int = 4
    conditioning_channels: int = 3
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    projection_class_embeddings_input_dim: int | None = None
    controlnet_conditioning_channel_order: str = "rgb"
    conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256)
    global_pool_conditions: bool = False
    addition_embed_type_num_heads: int = 64

    def validate(self) -> None:
        n = len(self.down_block_types)
        if len(self.block_out_channels) != n:
            raise ConfigError(f"block_out_channels ({len(self.block_out_channels)}) and down_block_types ({n}) must have the same length")
        for key in ("only_cross_attention", "attention_head_dim", "num_attention_heads", "transformer_layers_per_block"):
            value = self[key]
            if isinstance(value, tuple) and len(value) != n:
                raise ConfigError(f"{key} must be one value or one per down block ({n}), got {value!r}")
        for block_type in self.down_block_types:
            block_class("down", block_type, DOWN_BLOCKS)
        if self.encoder_hid_dim is not None and self.encoder_hid_dim_type is None:
            self.encoder_hid_dim_type = "text_proj"  # the reference's default, written back as it does
        _supported(self, "mid_block_type", ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"))
        _supported(self, "encoder_hid_dim_type", (None, "text_proj"))
        _supported(self, "class_embed_type", (None, "timestep", "identity", "projection"))
        _supported(self, "addition_embed_type", (None, "text_time"))
        _supported(self, "controlnet_conditioning_channel_order", ("rgb", "bgr"))
        if self.encoder_hid_dim_type is not None and self.encoder_hid_dim is None:
            raise ConfigError(f"encoder_hid_dim must be set when encoder_hid_dim_type is {self.encoder_hid_dim_type!r}")
        if self.class_embed_type == "projection" and self.projection_class_embeddings_input_dim is None:
            raise ConfigError("class_embed_type='projection' needs projection_class_embeddings_input_dim")
        if self.addition_embed_type == "text_time" and None in (self.addition_time_embed_dim, self.projection_class_embeddings_input_dim):
            raise ConfigError("addition_embed_type='text_time' needs addition_time_embed_dim and projection_class_embeddings_input_dim")
        if self.norm_num_groups is None:
            raise ConfigError("norm_num_groups=None is not supported (the blocks need group norms); set it, e.g. 32")

    @property
    def heads(self) -> list[int]:
        """Heads per down block: ``num_attention_heads``, else ``attention_head_dim`` (the reference's naming)."""
        return expand(self.num_attention_heads or self.attention_head_dim, len(self.down_block_types))


def _supported(cfg: Config, key: str, values: tuple) -> None:
    if cfg[key] not in values:
        raise NotImplementedError(f"ControlNetModel: {key}={cfg[key]!r} is not supported by vidiff; supported: {list(values)}")


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ControlNetConditioningEmbedding(nn.Module):
    """Control image (b, 3, H, W) -> features (b, C0, H/2^k, W/2^k): conv_in, pairs of convs (the second strided), conv_out."""

    def __init__(self, conditioning_embedding_channels: int, conditioning_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        blocks = []
        for cin, cout in zip(block_out_channels[:-1], block_out_channels[1:]):
            blocks.append(nn.Conv2d(cin, cin, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = zero_module(nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1))

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


def _conv1x1(channels: int) -> nn.Conv2d:
    return zero_module(nn.Conv2d(channels, channels, kernel_size=1))


class ControlNetModel(ModelMixin, AttentionProcessorMixin, UNetPassesMixin):
    """ControlNet: noisy latents + timestep + text + control image -> residuals for the UNet's skips and mid block."""

    config_class = ControlNetConfig
    _supports_gradient_checkpointing = False

    def __init__(self, config: ControlNetConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        channels = cfg.block_out_channels
        time_embed_dim = channels[0] * 4
        add_unet_stem(self, cfg.in_channels, channels[0], time_embed_dim, flip_sin_to_cos=cfg.flip_sin_to_cos,
                      freq_shift=cfg.freq_shift, act_fn=cfg.act_fn)
        self.encoder_hid_proj = Linear(cfg.encoder_hid_dim, cfg.cross_attention_dim) if cfg.encoder_hid_dim_type else None
        self.class_embedding = self._make_class_embedding(cfg, channels[0], time_embed_dim)
        if cfg.addition_embed_type == "text_time":
            add_text_time_embedding(self, cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim, time_embed_dim,
                                    cfg.flip_sin_to_cos, cfg.freq_shift)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            channels[0], cfg.conditioning_channels, cfg.conditioning_embedding_out_channels)
        self._build_blocks(cfg, time_embed_dim)

    @staticmethod
    def _make_class_embedding(cfg: ControlNetConfig, timestep_input_dim: int, time_embed_dim: int) -> nn.Module | None:
        kind = cfg.class_embed_type
        if kind is None:
            return nn.Embedding(cfg.num_class_embeds, time_embed_dim) if cfg.num_class_embeds is not None else None
        if kind == "timestep":
            return TimestepEmbedding(timestep_input_dim, time_embed_dim)
        if kind == "identity":
            return nn.Identity()
        return TimestepEmbedding(cfg.projection_class_embeddings_input_dim, time_embed_dim)  # projection

    def _build_blocks(self, cfg: ControlNetConfig, temb: int) -> None:
        """down_blocks and one zero conv per skip (conv_in's output, each layer, each downsampler), then the mid block."""
        channels, n = cfg.block_out_channels, len(cfg.block_out_channels)
        heads, t_layers = cfg.heads, expand(cfg.transformer_layers_per_block, n)
        common = dict(
            temb_channels=temb, resnet_eps=cfg.norm_eps, resnet_act_fn=cfg.act_fn, resnet_groups=cfg.norm_num_groups,
            use_linear_projection=cfg.use_linear_projection, upcast_attention=cfg.upcast_attention,
            resnet_time_scale_shift=cfg.resnet_time_scale_shift, cross_attention_dim=cfg.cross_attention_dim,
        )  # fmt: skip
        self.down_blocks = nn.ModuleList(
            get_down_block(
                block_type, num_layers=cfg.layers_per_block, transformer_layers_per_block=t_layers[i],
                in_channels=channels[max(i - 1, 0)], out_channels=channels[i], add_downsample=i < n - 1,
                num_attention_heads=heads[i], downsample_padding=cfg.downsample_padding,
                only_cross_attention=expand(cfg.only_cross_attention, n)[i], **common,
            )  # fmt: skip
            for i, block_type in enumerate(cfg.down_block_types)
        )
        skips = [channels[0]]
        for i, c in enumerate(channels):
            skips += [c] * (cfg.layers_per_block + (i < n - 1))
        self.controlnet_down_blocks = nn.ModuleList(_conv1x1(c) for c in skips)
        self.controlnet_mid_block = _conv1x1(channels[-1])
        self.mid_block = get_mid_block(
            cfg.mid_block_type, in_channels=channels[-1], output_scale_factor=cfg.mid_block_scale_factor,
            transformer_layers_per_block=t_layers[-1], num_attention_heads=heads[-1], **common,
        )  # fmt: skip

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, controlnet_conditioning_channel_order: str = "rgb",
                  conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
                  load_weights_from_unet: bool = True, conditioning_channels: int = 3) -> "ControlNetModel":
        """A ControlNet with ``unet``'s architecture (and, by default, its encoder weights; the zero convs start at 0)."""
        u = unet.config
        keys = ("encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type", "addition_time_embed_dim",
                "transformer_layers_per_block", "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types",
                "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
                "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
                "attention_head_dim", "num_attention_heads", "use_linear_projection", "class_embed_type",
                "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
                "projection_class_embeddings_input_dim", "mid_block_type")
        controlnet = cls(**{k: u[k] for k in keys if k in u}, controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
                         conditioning_embedding_out_channels=conditioning_embedding_out_channels,
                         conditioning_channels=conditioning_channels)
        if load_weights_from_unet:
            for name in ("conv_in", "time_proj", "time_embedding", "class_embedding", "add_embedding", "down_blocks", "mid_block"):
                target = getattr(controlnet, name, None)
                if target is not None:
                    target.load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple:
        """Residuals for the UNet: ``down_block_res_samples`` (one per skip) and ``mid_block_res_sample``, scaled by
        ``conditioning_scale`` (``guess_mode``: scales rising log-evenly from 0.1 to 1 from the first skip to the mid)."""
        self._check_inputs(sample, controlnet_cond)
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        cond = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=keep_mask_to_bias(attention_mask, sample.dtype),
                    cross_attention_kwargs=without_lora_scale(cross_attention_kwargs), encoder_attention_mask=None)
        if self.encoder_hid_proj is not None:
            cond["encoder_hidden_states"] = self.encoder_hid_proj(encoder_hidden_states)
        emb = self._embed(sample, timestep, timestep_cond, class_labels, added_cond_kwargs)
        x = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)  # b c0 h w
        x, skips = self._down(x, emb, cond)
        x = self._mid(x, emb, cond)
        down = [block(s) for s, block in zip(skips, self.controlnet_down_blocks)]
        mid = self.controlnet_mid_block(x)
        down, mid = self._scale(down, mid, conditioning_scale, guess_mode)
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid) if return_dict else (down, mid)

    def _scale(self, down: list[torch.Tensor], mid: torch.Tensor, conditioning_scale: float, guess_mode: bool):
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=mid.device) * conditioning_scale  # 0.1 .. 1
            down, mid = [d * s for d, s in zip(down, scales)], mid * scales[-1]
        else:
            down, mid = [d * conditioning_scale for d in down], mid * conditioning_scale
        if self.config.global_pool_conditions:
            down, mid = [d.mean(dim=(2, 3), keepdim=True) for d in down], mid.mean(dim=(2, 3), keepdim=True)
        return down, mid

    def _embed(self, sample, timestep, timestep_cond, class_labels, added_cond_kwargs) -> torch.Tensor:
        t_emb = self.time_proj(timesteps_for_batch(timestep, sample.shape[0], sample.device)).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError(f"this ControlNet has a class embedding (class_embed_type={self.config.class_embed_type!r}, "
                                 f"num_class_embeds={self.config.num_class_embeds}): pass class_labels")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(dtype=self.dtype)
        if self.config.addition_embed_type == "text_time":
            emb = emb + text_time_embedding(self.add_time_proj, self.add_embedding, added_cond_kwargs, emb.dtype)
        return emb

    def _check_inputs(self, sample: torch.Tensor, controlnet_cond: torch.Tensor) -> None:
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample must be (batch, {cfg.in_channels}, height, width), got {tuple(sample.shape)}")
        factor = 2 ** (len(cfg.conditioning_embedding_out_channels) - 1)
        want = (cfg.conditioning_channels, sample.shape[-2] * factor, sample.shape[-1] * factor)
        if not isinstance(controlnet_cond, torch.Tensor) or controlnet_cond.ndim != 4 or tuple(controlnet_cond.shape[1:]) != want:
            got = tuple(controlnet_cond.shape) if isinstance(controlnet_cond, torch.Tensor) else type(controlnet_cond).__name__
            raise ValueError(f"controlnet_cond must be (batch, {want[0]}, {want[1]}, {want[2]}) for latents of size "
                             f"{tuple(sample.shape[-2:])} (the control image at {factor}x the latent size), got {got}")


class MultiControlNetModel(ModelMixin):
    """Several ControlNets: each runs on its own control image and scale; their residuals are summed."""

    config_class = Config

    def __init__(self, controlnets: list[ControlNetModel] | tuple[ControlNetModel, ...]):
        super().__init__()
        self.register_config(None, {})
        if not controlnets or not all(isinstance(c, ControlNetModel) for c in controlnets):
            raise TypeError("MultiControlNetModel needs a non-empty list of vidiff ControlNetModel objects")
        self.nets = nn.ModuleList(controlnets)

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond: list[torch.Tensor],
                conditioning_scale: list[float], class_labels=None, timestep_cond=None, attention_mask=None,
                added_cond_kwargs=None, cross_attention_kwargs=None, guess_mode: bool = False, return_dict: bool = True):
        if len(controlnet_cond) != len(self.nets) or len(conditioning_scale) != len(self.nets):
            raise ValueError(f"pass one control image and one conditioning scale per ControlNet ({len(self.nets)}); got "
                             f"{len(controlnet_cond)} images and {len(conditioning_scale)} scales")
        down, mid = None, None
        for image, scale, net in zip(controlnet_cond, conditioning_scale, self.nets):
            d, m = net(sample, timestep, encoder_hidden_states, image, scale, class_labels, timestep_cond, attention_mask,
                       added_cond_kwargs, cross_attention_kwargs, guess_mode, return_dict=False)
            down, mid = (d, m) if down is None else ([a + b for a, b in zip(down, d)], mid + m)
        return down, mid

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Saves net i to ``save_directory`` (i = 0) and ``save_directory_i`` (the reference's layout)."""
        for i, net in enumerate(self.nets):
            net.save_pretrained(f"{os.fspath(save_directory)}{'' if i == 0 else f'_{i}'}", **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str | os.PathLike, subfolder: str | None = None, **kwargs: Any) -> "MultiControlNetModel":
        """Loads ``<path>``, ``<path>_1``, ``<path>_2``... (as :meth:`save_pretrained` writes them)."""
        base = os.fspath(Path(pretrained_model_path) / subfolder if subfolder else Path(pretrained_model_path))
        nets, i = [], 0
        while Path(f"{base}{'' if i == 0 else f'_{i}'}").is_dir():
            nets.append(ControlNetModel.from_pretrained(f"{base}{'' if i == 0 else f'_{i}'}", **kwargs))
            i += 1
        if not nets:
            raise FileNotFoundError(f"no ControlNet folder at {base} (expected {base}, {base}_1, ...)")
        return cls(nets)
