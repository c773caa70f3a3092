"""AnimateDiff: ``MotionAdapter`` (the motion modules alone) and ``UNetMotionModel`` (an SD UNet with them inserted).

``UNetMotionModel.from_unet2d(unet, motion_adapter)`` builds the video UNet from a ``UNet2DConditionModel`` and an
adapter; keys match the reference, the SD weights keep their names and the adapter's
``{down,mid,up}_block(s).*.motion_modules.*`` keys land under the same names in the UNet.

Usage::

    adapter = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2")
    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(sd, subfolder="unet"), adapter)
    eps = unet(latents, t, encoder_hidden_states=text).sample   # latents (b, c, f, h, w); text (b*f or b, n, d)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..configuration import Config, ConfigError
from ..layers.attention import AttentionProcessorMixin
from ..layers.embeddings import add_text_time_embedding, add_unet_stem, timesteps_for_batch
from ..layers.motion import (
    CrossAttnDownBlockMotion,
    CrossAttnUpBlockMotion,
    DownBlockMotion,
    MotionModules,
    UNetMidBlockCrossAttnMotion,
    UpBlockMotion,
)
from ..layers.temporal import fold_frames, unfold_frames
from ..layers.transformers import ForwardChunkingMixin
from ..layers.unet_2d_blocks import UNetMidBlock2DCrossAttn
from ..layers.unet_passes import FreeUMixin
from ..runtime.layout import GroupNorm
from .modeling import ModelMixin
from .outputs import BaseOutput
from .unet_2d_condition import (
    UNetPassesMixin,
    check_unet_channels,
    check_unet_lengths,
    check_video_sample,
    expand,
    keep_mask_to_bias,
    text_time_embedding,
    without_lora_scale,
)

_DOWN = {"CrossAttnDownBlockMotion": CrossAttnDownBlockMotion, "DownBlockMotion": DownBlockMotion}
_UP = {"CrossAttnUpBlockMotion": CrossAttnUpBlockMotion, "UpBlockMotion": UpBlockMotion}


@dataclass
class UNetMotionOutput(BaseOutput):
    """``sample``: (batch, channels, frames, height, width)."""

    sample: torch.Tensor


# ---------------------------------------------------------------------------------------------- MotionAdapter


@dataclass
class MotionAdapterConfig(Config):
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    motion_layers_per_block: int | tuple[int, ...] = 2
    motion_transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] = 1
    motion_mid_block_layers_per_block: int = 1
    motion_transformer_layers_per_mid_block: int | tuple[int, ...] = 1
    motion_num_attention_heads: int | tuple[int, ...] = 8
    motion_norm_num_groups: int = 32
    motion_max_seq_length: int = 32
    use_motion_mid_block: bool = True
    conv_in_channels: int | None = None

    def validate(self) -> None:
        n = len(self.block_out_channels)
        for key in ("motion_layers_per_block", "motion_num_attention_heads"):
            if isinstance(self[key], tuple) and len(self[key]) != n:
                raise ConfigError(f"{key} must be one value or one per block ({n}), got {self[key]!r}")
        mid = self.motion_transformer_layers_per_mid_block
        if isinstance(mid, tuple) and len(mid) != self.motion_mid_block_layers_per_block:
            raise ConfigError(f"motion_transformer_layers_per_mid_block must have motion_mid_block_layers_per_block="
                              f"{self.motion_mid_block_layers_per_block} entries, got {mid!r}")


class MotionAdapter(ModelMixin):
    """The AnimateDiff motion modules of every UNet block (no forward: ``UNetMotionModel`` runs them)."""

    config_class = MotionAdapterConfig

    def __init__(self, config: MotionAdapterConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        channels, n = cfg.block_out_channels, len(cfg.block_out_channels)
        layers, t_layers = expand(cfg.motion_layers_per_block, n), expand(cfg.motion_transformer_layers_per_block, n)
        heads = expand(cfg.motion_num_attention_heads, n)
        common = dict(norm_num_groups=cfg.motion_norm_num_groups, max_seq_length=cfg.motion_max_seq_length)
        self.conv_in = nn.Conv2d(cfg.conv_in_channels, channels[0], kernel_size=3, padding=1) if cfg.conv_in_channels else None
        # built down, mid, up; registered conv_in, mid_block, down_blocks, up_blocks (the reference's orders)
        down_blocks = [
            MotionModules(c, num_attention_heads=heads[i], layers_per_block=layers[i], transformer_layers_per_block=t_layers[i], **common)
            for i, c in enumerate(channels)
        ]
        self.mid_block = (
            MotionModules(channels[-1], num_attention_heads=heads[-1], layers_per_block=cfg.motion_mid_block_layers_per_block,
                          transformer_layers_per_block=cfg.motion_transformer_layers_per_mid_block, **common)
            if cfg.use_motion_mid_block
            else None
        )  # fmt: skip
        up_blocks = [
            MotionModules(c, num_attention_heads=heads[::-1][i], layers_per_block=layers[::-1][i] + 1,
                          transformer_layers_per_block=t_layers[::-1][i], **common)
            for i, c in enumerate(reversed(channels))
        ]  # fmt: skip
        self.down_blocks = nn.ModuleList(down_blocks)
        self.up_blocks = nn.ModuleList(up_blocks)

    def forward(self, sample) -> None:
        """A container: the reference's forward does nothing either."""


# ---------------------------------------------------------------------------------------------- UNetMotionModel


@dataclass
class UNetMotionConfig(Config):
    sample_size: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "DownBlockMotion")
    up_block_types: tuple[str, ...] = ("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] = 1
    reverse_transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] | None = None
    temporal_transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] = 1
    reverse_temporal_transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] | None = None
    transformer_layers_per_mid_block: int | tuple[int, ...] | None = None
    temporal_transformer_layers_per_mid_block: int | tuple[int, ...] | None = 1
    use_linear_projection: bool = False
    num_attention_heads: int | tuple[int, ...] = 8
    motion_max_seq_length: int = 32
    motion_num_attention_heads: int | tuple[int, ...] = 8
    reverse_motion_num_attention_heads: int | tuple[int, ...] | None = None  # unused, as in the reference
    use_motion_mid_block: bool = True
    mid_block_layers: int = 1
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    time_cond_proj_dim: int | None = None

    def validate(self) -> None:
        check_unet_lengths(self, ("num_attention_heads", "cross_attention_dim", "layers_per_block", "motion_num_attention_heads"))
        for name, types, known in (("down", self.down_block_types, _DOWN), ("up", self.up_block_types, _UP)):
            unknown = [t for t in types if t not in known]
            if unknown:
                raise ConfigError(f"{name}_block_types has unknown block types {unknown}; expected any of {sorted(known)}")
        if self.encoder_hid_dim_type is not None:
            raise NotImplementedError(f"encoder_hid_dim_type={self.encoder_hid_dim_type!r} (IP-Adapter image projection) "
                                      "is not supported by vidiff's UNetMotionModel; leave it None.")
        if self.addition_embed_type not in (None, "text_time"):
            raise NotImplementedError(f"addition_embed_type={self.addition_embed_type!r} is not supported; use None or 'text_time'")
        check_unet_channels(self, self.num_attention_heads)


class UNetMotionModel(ModelMixin, AttentionProcessorMixin, ForwardChunkingMixin, FreeUMixin, UNetPassesMixin):
    """SD UNet + AnimateDiff motion modules: video latents (b, c, f, h, w) + timestep + text -> (b, c_out, f, h, w)."""

    config_class = UNetMotionConfig
    _supports_gradient_checkpointing = False

    def __init__(self, config: UNetMotionConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        channels = cfg.block_out_channels
        time_embed_dim = channels[0] * 4
        self.sample_size = cfg.sample_size
        add_unet_stem(self, cfg.in_channels, channels[0], time_embed_dim, act_fn=cfg.act_fn, cond_proj_dim=cfg.time_cond_proj_dim)
        self.encoder_hid_proj = None
        if cfg.addition_embed_type == "text_time":
            add_text_time_embedding(self, cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim, time_embed_dim)
        self._build_blocks(cfg, time_embed_dim)
        self.conv_norm_out = GroupNorm(num_channels=channels[0], num_groups=cfg.norm_num_groups, eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, kernel_size=3, padding=1)

    def _build_blocks(self, cfg: UNetMotionConfig, temb: int) -> None:
        channels, n = cfg.block_out_channels, len(cfg.block_out_channels)
        heads, cross_dims, layers = expand(cfg.num_attention_heads, n), expand(cfg.cross_attention_dim, n), expand(cfg.layers_per_block, n)
        t_layers, motion_heads = expand(cfg.transformer_layers_per_block, n), expand(cfg.motion_num_attention_heads, n)
        temporal = expand(cfg.temporal_transformer_layers_per_block, n)
        rev_t_layers = expand(cfg.reverse_transformer_layers_per_block, n) if cfg.reverse_transformer_layers_per_block is not None else t_layers[::-1]
        rev_temporal = expand(cfg.reverse_temporal_transformer_layers_per_block or temporal[::-1], n)
        common = dict(temb_channels=temb, resnet_eps=cfg.norm_eps, resnet_act_fn=cfg.act_fn, resnet_groups=cfg.norm_num_groups,
                      temporal_max_seq_length=cfg.motion_max_seq_length)

        def spatial(block_type: str, transformer_layers, num_heads: int, cross_dim: int) -> dict[str, Any]:
            if not block_type.startswith("CrossAttn"):
                return {}
            return dict(transformer_layers_per_block=transformer_layers, num_attention_heads=num_heads, cross_attention_dim=cross_dim,
                        use_linear_projection=cfg.use_linear_projection)

        self.down_blocks = nn.ModuleList(
            _DOWN[block_type](
                in_channels=channels[max(i - 1, 0)], out_channels=channels[i], num_layers=layers[i], add_downsample=i < n - 1,
                downsample_padding=cfg.downsample_padding, temporal_num_attention_heads=motion_heads[i],
                temporal_transformer_layers_per_block=temporal[i], **spatial(block_type, t_layers[i], heads[i], cross_dims[i]), **common,
            )  # fmt: skip
            for i, block_type in enumerate(cfg.down_block_types)
        )
        # built before the up blocks, registered after them, as in the reference
        mid_block = self._make_mid_block(cfg, temb, heads[-1], cross_dims[-1], t_layers[-1], motion_heads[-1])
        rev, heads, cross_dims, layers, motion_heads = channels[::-1], heads[::-1], cross_dims[::-1], layers[::-1], motion_heads[::-1]
        self.num_upsamplers = n - 1
        self.up_blocks = nn.ModuleList(
            _UP[block_type](
                in_channels=rev[min(i + 1, n - 1)], out_channels=rev[i], prev_output_channel=rev[max(i - 1, 0)],
                num_layers=layers[i] + 1, add_upsample=i < n - 1, resolution_idx=i, temporal_num_attention_heads=motion_heads[i],
                temporal_transformer_layers_per_block=rev_temporal[i], **spatial(block_type, rev_t_layers[i], heads[i], cross_dims[i]), **common,
            )  # fmt: skip
            for i, block_type in enumerate(cfg.up_block_types)
        )
        self.mid_block = mid_block

    @staticmethod
    def _make_mid_block(cfg: UNetMotionConfig, temb: int, heads: int, cross_dim: int, last_layers, motion_heads: int) -> nn.Module:
        mid_layers = cfg.transformer_layers_per_mid_block
        if mid_layers is None:
            mid_layers = last_layers if isinstance(last_layers, int) else 1
        common = dict(
            in_channels=cfg.block_out_channels[-1], temb_channels=temb, resnet_eps=cfg.norm_eps, resnet_act_fn=cfg.act_fn,
            output_scale_factor=cfg.mid_block_scale_factor, cross_attention_dim=cross_dim, num_attention_heads=heads,
            resnet_groups=cfg.norm_num_groups, use_linear_projection=cfg.use_linear_projection, num_layers=cfg.mid_block_layers,
            transformer_layers_per_block=mid_layers,
        )  # fmt: skip
        if not cfg.use_motion_mid_block:
            return UNetMidBlock2DCrossAttn(**common)
        return UNetMidBlockCrossAttnMotion(
            temporal_num_attention_heads=motion_heads, temporal_max_seq_length=cfg.motion_max_seq_length,
            temporal_transformer_layers_per_block=cfg.temporal_transformer_layers_per_mid_block or 1, **common,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ from a 2-D UNet

    @classmethod
    def from_unet2d(cls, unet: nn.Module, motion_adapter: MotionAdapter | None = None, load_weights: bool = True) -> "UNetMotionModel":
        """The motion UNet of an SD ``UNet2DConditionModel`` (weights copied) and, if given, a ``MotionAdapter``.

        Without an adapter the motion modules are freshly initialised (as in the reference); ``load_weights=False``
        returns the model with random weights and only takes the configs from ``unet`` and ``motion_adapter``.
        """
        config = cls._config_from_unet2d(unet.config, motion_adapter.config if motion_adapter is not None else None)
        if not load_weights:
            return cls(config)
        weights = _weights_from(unet, motion_adapter)
        if motion_adapter is None:  # the motion modules keep their random init
            model = cls(config)
            model.load_state_dict(weights, strict=False)
        else:  # every tensor comes from unet or adapter: build on meta and take copies, no random init
            from ..loading.checkpoint import build_on_meta

            model = build_on_meta(cls, config)
            _require_keys(model, weights)
            model.load_state_dict(weights, strict=False, assign=True)
        return model.to(device=unet.device, dtype=unet.dtype).train(unet.training)  # eval when unet is (loaded: it is)

    @classmethod
    def from_unet2d_pretrained(cls, pretrained_model_name_or_path: str | Path, motion_adapter: MotionAdapter, subfolder: str | None = None,
                               torch_dtype: torch.dtype | None = None, variant: str | None = None, use_safetensors: bool | None = None,
                               allow_pickle: bool = False, **hub_kwargs: Any) -> "UNetMotionModel":
        """``from_unet2d(UNet2DConditionModel.from_pretrained(path, subfolder, ...), motion_adapter)`` without building
        the 2-D UNet: the motion UNet is built on the meta device from the folder's config and the adapter's, the
        folder's weights are read into it and the adapter's motion modules copied in. Same model, tensors and
        dtypes; the load costs one module build and one read of the files (AnimateDiff's from_pretrained uses it).
        Adapters with their own input convolution (PIA) go through ``from_unet2d``."""
        from ..loading.checkpoint import build_on_meta, load_into_model, resolve_weight_files
        from .modeling import _check_dtype
        from .unet_2d_condition import UNet2DConditionModel

        if not isinstance(motion_adapter, MotionAdapter) or motion_adapter.conv_in is not None:
            raise ValueError("from_unet2d_pretrained needs a MotionAdapter without conv_in; use from_unet2d for PIA adapters or none")
        torch_dtype = _check_dtype(torch_dtype)
        config_2d = UNet2DConditionModel._config_for_loading(UNet2DConditionModel.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs), {})
        model = build_on_meta(cls, cls._config_from_unet2d(config_2d, motion_adapter.config))
        files = resolve_weight_files(pretrained_model_name_or_path, subfolder, prefix=UNet2DConditionModel._weights_prefix, variant=variant,
                                     use_safetensors=use_safetensors, allow_pickle=allow_pickle, **hub_kwargs)
        motion = {k: v for k, v in motion_adapter.state_dict().items() if ".motion_modules." in k}
        load_into_model(model, files, torch_dtype=torch_dtype, allow_pickle=allow_pickle, source=f"{files[0].parent} + the motion adapter",
                        supplied=motion, ignore_unexpected=["^" + re.escape(p) for p in _UNET2D_ONLY])
        return model.eval()

    @classmethod
    def _config_from_unet2d(cls, unet_config, adapter_config) -> dict[str, Any]:
        config = dict(unet_config)
        config["down_block_types"] = ["CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion" for t in config["down_block_types"]]
        config["up_block_types"] = ["CrossAttnUpBlockMotion" if "CrossAttn" in t else "UpBlockMotion" for t in config["up_block_types"]]
        if adapter_config is not None:
            _check_adapter(config, adapter_config)
            config.update(
                motion_num_attention_heads=adapter_config["motion_num_attention_heads"],
                motion_max_seq_length=adapter_config["motion_max_seq_length"],
                use_motion_mid_block=adapter_config["use_motion_mid_block"],
                layers_per_block=adapter_config["motion_layers_per_block"],
                temporal_transformer_layers_per_mid_block=adapter_config["motion_transformer_layers_per_mid_block"],
                temporal_transformer_layers_per_block=adapter_config["motion_transformer_layers_per_block"],
            )  # fmt: skip
            if adapter_config["conv_in_channels"]:  # PIA: extra input channels
                config["in_channels"] = adapter_config["conv_in_channels"]
        if not config.get("num_attention_heads"):  # SD configs keep the head count in attention_head_dim
            config["num_attention_heads"] = config["attention_head_dim"]
        names = set(cls.config_class._field_names())
        return {k: v for k, v in config.items() if k in names}

    # ------------------------------------------------------------------------------------------ motion modules

    def freeze_unet2d_params(self) -> None:
        """Freeze every weight except the motion modules' (for motion-module fine-tuning)."""
        for param in self.parameters():
            param.requires_grad = False
        for block in [*self.down_blocks, *self.up_blocks, self.mid_block]:
            if hasattr(block, "motion_modules"):
                for param in block.motion_modules.parameters():
                    param.requires_grad = True

    def load_motion_modules(self, motion_adapter: MotionAdapter | None) -> None:
        """Copy an adapter's motion modules into this UNet (strict: the layouts must match)."""
        if motion_adapter is None:
            raise ValueError("load_motion_modules needs a MotionAdapter (e.g. MotionAdapter.from_pretrained(...)), got None")
        for i, block in enumerate(motion_adapter.down_blocks):
            self.down_blocks[i].motion_modules.load_state_dict(block.motion_modules.state_dict())
        for i, block in enumerate(motion_adapter.up_blocks):
            self.up_blocks[i].motion_modules.load_state_dict(block.motion_modules.state_dict())
        if hasattr(self.mid_block, "motion_modules"):  # older adapters have no mid block
            self.mid_block.motion_modules.load_state_dict(motion_adapter.mid_block.motion_modules.state_dict())

    def save_motion_modules(self, save_directory: str | Path, is_main_process: bool = True, safe_serialization: bool = True,
                            variant: str | None = None, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Save the motion modules as a ``MotionAdapter`` folder (config.json + weights) loadable by either library."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by vidiff; save locally and upload the folder")
        cfg = self.config
        adapter = MotionAdapter(
            block_out_channels=cfg.block_out_channels, motion_layers_per_block=cfg.layers_per_block,
            motion_norm_num_groups=cfg.norm_num_groups, motion_num_attention_heads=cfg.motion_num_attention_heads,
            motion_max_seq_length=cfg.motion_max_seq_length, use_motion_mid_block=cfg.use_motion_mid_block,
            motion_transformer_layers_per_block=cfg.temporal_transformer_layers_per_block,
            motion_mid_block_layers_per_block=cfg.mid_block_layers,
            motion_transformer_layers_per_mid_block=cfg.temporal_transformer_layers_per_mid_block or 1,
        )  # fmt: skip
        adapter.load_state_dict({k: v for k, v in self.state_dict().items() if "motion_modules" in k})
        if is_main_process:
            adapter.save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant, **kwargs)

    # ------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNetMotionOutput | tuple[torch.Tensor]:
        """Denoise ``sample`` (b, c, f, h, w). ``encoder_hidden_states`` is (b*f, n, d) as the reference's AnimateDiff
        pipeline passes it (one copy per frame), or (b, n, d), shared by the frames without copies (the attention
        layers repeat it only where a processor or mask needs that). ControlNet residuals are ``(b f) c h w``."""
        batch, _, num_frames = sample.shape[:3]
        encoder_hidden_states = self._check_inputs(sample, encoder_hidden_states)
        forward_upsample_size = self._needs_upsample_size(sample)
        cond = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=keep_mask_to_bias(attention_mask, sample.dtype),
                    cross_attention_kwargs=without_lora_scale(cross_attention_kwargs))

        t_emb = self.time_proj(timesteps_for_batch(timestep, batch, sample.device)).to(dtype=self.conv_in.weight.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.config.addition_embed_type == "text_time":
            emb = emb + text_time_embedding(self.add_time_proj, self.add_embedding, added_cond_kwargs, emb.dtype)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=batch * num_frames)  # (b f) d

        x = self.conv_in(fold_frames(sample))  # (b f) c h w
        x, skips = self._down(x, emb, cond, num_frames)
        if down_block_additional_residuals is not None:
            skips = self._add_skip_residuals(skips, down_block_additional_residuals)
        x = self._mid(x, emb, cond, num_frames)
        if mid_block_additional_residual is not None:
            x = x + mid_block_additional_residual
        x = self._post(self._up(x, skips, emb, cond, num_frames, forward_upsample_size))
        out = unfold_frames(x, num_frames)  # b c f h w
        return UNetMotionOutput(sample=out) if return_dict else (out,)

    def _check_inputs(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        check_video_sample(sample, cfg.in_channels)
        batch, _, num_frames = sample.shape[:3]
        if num_frames > cfg.motion_max_seq_length:
            raise ValueError(
                f"{num_frames} frames exceed this motion model's limit of motion_max_seq_length={cfg.motion_max_seq_length} "
                f"frames (the length of its positional embeddings); generate at most {cfg.motion_max_seq_length} frames, "
                "or use a motion adapter trained for longer clips."
            )
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] not in (batch, batch * num_frames):
            raise ValueError(
                f"encoder_hidden_states must be (batch*frames={batch * num_frames}, sequence, dim) (or (batch={batch}, "
                f"sequence, dim)), got shape {tuple(encoder_hidden_states.shape)}."
            )
        return encoder_hidden_states


# ---------------------------------------------------------------------------------------------- helpers


def _check_adapter(unet_config: dict[str, Any], adapter_config) -> None:
    """An adapter fits a UNet when it has as many blocks, of the same widths, with as many layers each."""
    n = len(unet_config["down_block_types"])
    unet_channels, adapter_channels = list(unet_config["block_out_channels"]), list(adapter_config["block_out_channels"])
    if len(adapter_channels) != n:
        raise ValueError(f"Incompatible Motion Adapter, got different number of blocks: the UNet has {n}, the adapter "
                         f"{len(adapter_channels)} (block_out_channels {adapter_channels}).")
    if adapter_channels != unet_channels:
        raise ValueError(
            f"Incompatible Motion Adapter: its block_out_channels {adapter_channels} differ from the UNet's {unet_channels}. "
            "Use an adapter made for this base model (e.g. an SD 1.5 adapter with an SD 1.5 UNet)."
        )
    unet_layers = expand(unet_config["layers_per_block"], n)
    adapter_layers = expand(adapter_config["motion_layers_per_block"], n)
    if unet_layers != adapter_layers:
        raise ValueError(f"Incompatible Motion Adapter, got different number of layers per block: UNet {unet_layers}, "
                         f"adapter {adapter_layers}.")


_UNET2D_ONLY = ("class_embedding.", "encoder_hid_proj.")  # 2-D features the motion UNet does not have (dropped, as the reference does)


def _weights_from(unet: nn.Module, adapter: MotionAdapter | None) -> dict[str, torch.Tensor]:
    """The motion UNet's tensors: the 2-D UNet's (same names) plus the adapter's motion modules (same names)."""
    weights = {k: v for k, v in unet.state_dict().items() if not k.startswith(_UNET2D_ONLY)}
    if adapter is None:
        return weights
    weights.update((k, v) for k, v in adapter.state_dict().items() if ".motion_modules." in k)
    if adapter.conv_in is not None:  # PIA: the UNet's first 4 input channels, the adapter's others
        weights["conv_in.weight"] = torch.cat([unet.conv_in.weight, adapter.conv_in.weight[:, 4:].to(unet.conv_in.weight)], dim=1)
    return {k: v.detach().to(device=unet.device).clone() for k, v in weights.items()}


def _require_keys(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(model.state_dict()) - set(weights))
    if missing:
        raise ValueError(f"from_unet2d: the UNet and motion adapter do not provide {len(missing)} tensors of the motion "
                         f"UNet, e.g. {missing[:5]}; the two models do not fit together.")
