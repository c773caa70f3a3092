"""Stable Video Diffusion layers: every spatial layer on folded frames is followed by a temporal twin, and the two
are blended by a learned factor.

Shapes: 2-D layers see frames folded into the batch, ``(b f) c h w``; temporal layers unfold them. The number of
frames is read from ``image_only_indicator`` (b, f), which also marks still images (1: spatial result only).

Usage::

    block = SpatioTemporalResBlock(in_channels=64, out_channels=64, temb_channels=128)
    x = block(x, temb, image_only_indicator=torch.zeros(b, f))        # (b f) c h w -> (b f) c h w
    attn = TransformerSpatioTemporalModel(2, 32, in_channels=64, cross_attention_dim=32)
    x = attn(x, encoder_hidden_states=ctx, image_only_indicator=ind, return_dict=False)[0]   # ctx: (b f) n d

Keys follow the reference (``spatial_res_block``/``temporal_res_block``/``time_mixer.mix_factor``;
``transformer_blocks``/``temporal_transformer_blocks``/``time_pos_embed``; ``resnets``/``attentions``/
``downsamplers``/``upsamplers``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.layout import GroupNorm, tokens_to_map
from ..runtime.linear import Linear
from ..runtime.memory import act_, add_, untracked
from .attention import Attention
from .embeddings import TimestepEmbedding, Timesteps
from .resnets import ResnetBlock2D
from .temporal import FrameConv, fold_frames, unfold_frames
from .transformers import BasicTransformerBlock, FeedForward, TransformerTemporalModelOutput, chunked_feed_forward
from .unet_passes import down_channels, down_pass, downsamplers, mid_pass, up_channels, up_pass, upsamplers
from .vae_blocks import _maybe_checkpoint

# ---------------------------------------------------------------------------------------------- blending


class AlphaBlender(nn.Module):
    """``alpha * x_spatial + (1 - alpha) * x_temporal``; alpha is ``mix_factor`` (fixed), its sigmoid (learned),
    or its sigmoid on video frames and 1 on still images (learned_with_images). ``switch_spatial_to_temporal_mix``
    swaps the roles (the temporal VAE)."""

    strategies = ("learned", "fixed", "learned_with_images")

    def __init__(self, alpha: float, merge_strategy: str = "learned_with_images", switch_spatial_to_temporal_mix: bool = False):
        super().__init__()
        if merge_strategy not in self.strategies:
            raise ValueError(f"AlphaBlender merge_strategy must be one of {list(self.strategies)}, got {merge_strategy!r}")
        self.merge_strategy = merge_strategy
        self.switch_spatial_to_temporal_mix = switch_spatial_to_temporal_mix
        factor = torch.tensor([float(alpha)])
        if merge_strategy == "fixed":
            self.register_buffer("mix_factor", factor)
        else:
            self.mix_factor = nn.Parameter(factor)

    def get_alpha(self, image_only_indicator: torch.Tensor | None, ndims: int) -> torch.Tensor:
        if self.merge_strategy == "fixed":
            return self.mix_factor
        if self.merge_strategy == "learned":
            return torch.sigmoid(self.mix_factor)
        if image_only_indicator is None:
            raise ValueError("AlphaBlender(merge_strategy='learned_with_images') needs image_only_indicator, a (batch, "
                             "frames) tensor: 0 for video frames, 1 for still images")
        ones = torch.ones(1, 1, device=image_only_indicator.device)
        alpha = torch.where(image_only_indicator.bool(), ones, torch.sigmoid(self.mix_factor)[..., None])  # b f
        if ndims == 5:
            return alpha[:, None, :, None, None]  # b 1 f 1 1
        if ndims == 3:
            return alpha.reshape(-1)[:, None, None]  # (b f) 1 1
        raise ValueError(f"AlphaBlender mixes 5-D (b c f h w) or 3-D ((b f) n c) tensors, got {ndims} dimensions")

    def forward(self, x_spatial: torch.Tensor, x_temporal: torch.Tensor, image_only_indicator: torch.Tensor | None = None,
                in_place: bool = False) -> torch.Tensor:
        """``in_place=True`` (for callers that own both inputs and need neither after): the same products and sum
        written into ``x_spatial`` when autograd does not record them."""
        alpha = self.get_alpha(image_only_indicator, x_spatial.ndim).to(x_spatial.dtype)
        if self.switch_spatial_to_temporal_mix:
            alpha = 1.0 - alpha
        if in_place and untracked(x_spatial) and untracked(x_temporal) and untracked(alpha) \
                and x_spatial.shape == x_temporal.shape and x_spatial.dtype == x_temporal.dtype:
            return x_spatial.mul_(alpha).add_(x_temporal.mul_(1.0 - alpha))
        return alpha * x_spatial + (1.0 - alpha) * x_temporal


# ---------------------------------------------------------------------------------------------- resnets


class TemporalResnetBlock(nn.Module):
    """ResnetBlock2D's twin along the frame axis, on ``b c f h w``; the time embedding (b, f, d) is added per frame."""

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512, eps: float = 1e-6):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = GroupNorm(num_groups=32, num_channels=in_channels, eps=eps, affine=True)
        self.conv1 = FrameConv(in_channels, out_channels)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = GroupNorm(num_groups=32, num_channels=out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = FrameConv(out_channels, out_channels)
        self.nonlinearity = nn.SiLU()
        self.use_in_shortcut = in_channels != out_channels
        self.conv_shortcut = FrameConv(in_channels, out_channels, kernel_size=1) if self.use_in_shortcut else None

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        hidden_states = self.conv1(act_(self.nonlinearity, self.norm1(input_tensor)))  # b c f h w
        if self.time_emb_proj is not None:
            temb = self.time_emb_proj(self.nonlinearity(temb))  # b f c
            hidden_states = add_(hidden_states, temb.permute(0, 2, 1)[:, :, :, None, None])  # + b c f 1 1
        hidden_states = self.conv2(self.dropout(act_(self.nonlinearity, self.norm2(hidden_states))))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        return add_(hidden_states, input_tensor)


class SpatioTemporalResBlock(nn.Module):
    """ResnetBlock2D on ``(b f) c h w``, then TemporalResnetBlock on ``b c f h w``, blended by ``time_mixer``."""

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512, eps: float = 1e-6,
                 temporal_eps: float | None = None, merge_factor: float = 0.5, merge_strategy: str = "learned_with_images",
                 switch_spatial_to_temporal_mix: bool = False):
        super().__init__()
        channels = out_channels if out_channels is not None else in_channels
        self.spatial_res_block = ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, eps=eps)
        self.temporal_res_block = TemporalResnetBlock(channels, channels, temb_channels=temb_channels,
                                                      eps=temporal_eps if temporal_eps is not None else eps)
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, switch_spatial_to_temporal_mix)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        num_frames = _frames_of(image_only_indicator)
        hidden_states = unfold_frames(self.spatial_res_block(hidden_states, temb), num_frames)  # b c f h w
        if temb is not None:
            temb = temb.reshape(hidden_states.shape[0], num_frames, -1)  # b f d
        temporal = self.temporal_res_block(hidden_states, temb)
        hidden_states = self.time_mixer(x_spatial=hidden_states, x_temporal=temporal, image_only_indicator=image_only_indicator, in_place=True)
        return fold_frames(hidden_states)  # (b f) c h w


def _frames_of(image_only_indicator: torch.Tensor | None) -> int:
    if image_only_indicator is None:
        raise ValueError("spatio-temporal layers need image_only_indicator, a (batch, frames) tensor (zeros for video); "
                         "it tells them how many frames are folded into the batch")
    return image_only_indicator.shape[-1]


# ---------------------------------------------------------------------------------------------- transformers


def _frames_to_sequences(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b f) n c -> (b n) f c"""
    bf, n, c = x.shape
    return x.reshape(bf // num_frames, num_frames, n, c).permute(0, 2, 1, 3).reshape(-1, num_frames, c)


def _sequences_to_frames(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(b n) f c -> (b f) n c"""
    bn, f, c = x.shape
    return x.reshape(bn // num_tokens, num_tokens, f, c).permute(0, 2, 1, 3).reshape(-1, num_tokens, c)


class TemporalBasicTransformerBlock(nn.Module):
    """Transformer block along frames at every token: ff_in, self-attention (attn1), cross-attention (attn2), ff.

    Feed-forward chunking always splits the frame axis (dim 1), whatever ``dim`` is asked for, as the reference does.
    """

    def __init__(self, dim: int, time_mix_inner_dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None = None):
        super().__init__()
        self.is_res = dim == time_mix_inner_dim
        attn = dict(query_dim=time_mix_inner_dim, heads=num_attention_heads, dim_head=attention_head_dim)
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=time_mix_inner_dim, activation_fn="geglu")
        self.norm1 = nn.LayerNorm(time_mix_inner_dim)
        self.attn1 = Attention(cross_attention_dim=None, **attn)
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(time_mix_inner_dim)
            self.attn2 = Attention(cross_attention_dim=cross_attention_dim, **attn)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(time_mix_inner_dim)
        self.ff = FeedForward(time_mix_inner_dim, activation_fn="geglu")
        self._chunk_size: int | None = None
        self._chunk_dim: int | None = None

    def set_chunk_feed_forward(self, chunk_size: int | None, **kwargs) -> None:
        self._chunk_size = chunk_size
        self._chunk_dim = 1

    def _ff(self, ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self._chunk_size is None:
            return ff(x)
        return chunked_feed_forward(ff, x, self._chunk_dim, self._chunk_size)

    def forward(self, hidden_states: torch.Tensor, num_frames: int, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        num_tokens = hidden_states.shape[1]
        hidden_states = _frames_to_sequences(hidden_states, num_frames)  # (b n) f c
        residual = hidden_states
        hidden_states = self._ff(self.ff_in, self.norm_in(hidden_states))
        if self.is_res:
            hidden_states = hidden_states + residual
        hidden_states = self.attn1(self.norm1(hidden_states), encoder_hidden_states=None) + hidden_states
        if self.attn2 is not None:
            hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states) + hidden_states
        ff_output = self._ff(self.ff, self.norm3(hidden_states))
        hidden_states = ff_output + hidden_states if self.is_res else ff_output
        return _sequences_to_frames(hidden_states, num_tokens)  # (b f) n c


class TransformerSpatioTemporalModel(nn.Module):
    """Per layer: a spatial BasicTransformerBlock over pixels, then a temporal block over frames (with a learned
    frame-position embedding and the first frame's context), blended by ``time_mixer``. Residual around the stack."""

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int = 320,
                 out_channels: int | None = None, num_layers: int = 1, cross_attention_dim: int | None = None):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.inner_dim = inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.norm = GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6)
        self.proj_in = Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim=cross_attention_dim)
            for _ in range(num_layers))
        self.temporal_transformer_blocks = nn.ModuleList(
            TemporalBasicTransformerBlock(inner_dim, inner_dim, num_attention_heads, attention_head_dim,
                                          cross_attention_dim=cross_attention_dim)
            for _ in range(num_layers))
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, out_dim=in_channels)
        self.time_proj = Timesteps(in_channels, True, 0)
        self.time_mixer = AlphaBlender(alpha=0.5, merge_strategy="learned_with_images")
        self.out_channels = in_channels if out_channels is None else out_channels
        self.proj_out = Linear(inner_dim, in_channels)  # in_channels, not out_channels, as the reference
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                image_only_indicator: torch.Tensor | None = None, return_dict: bool = True):
        bf, c, h, w = hidden_states.shape
        num_frames = _frames_of(image_only_indicator)
        batch = bf // num_frames
        time_context = _first_frame_context(encoder_hidden_states, batch, num_frames)  # b n d, for (b h w) rows
        residual = hidden_states

        x = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(bf, h * w, c)  # (b f) (h w) c
        x = self.proj_in(x)
        frame_ids = torch.arange(num_frames, device=x.device).repeat(batch, 1).reshape(-1)  # (b f)
        frame_emb = self.time_pos_embed(self.time_proj(frame_ids).to(dtype=x.dtype))[:, None, :]  # (b f) 1 c

        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            x = _maybe_checkpoint(self, block, x, None, encoder_hidden_states, None)
            x_mix = temporal_block(x + frame_emb, num_frames=num_frames, encoder_hidden_states=time_context)
            x = self.time_mixer(x_spatial=x, x_temporal=x_mix, image_only_indicator=image_only_indicator, in_place=True)

        x = tokens_to_map(self.proj_out(x), h, w, like=residual)  # (b f) c h w
        out = add_(x, residual)
        return TransformerTemporalModelOutput(sample=out) if return_dict else (out,)


def _first_frame_context(context: torch.Tensor, batch: int, num_frames: int) -> torch.Tensor:
    """(b f) n d (or b n d) -> b n d: every pixel's temporal block attends to its video's first-frame context, shared
    by the (b tokens) rows of the temporal blocks (see attention.context_repeats)."""
    if context is None or context.shape[0] == batch:
        return context
    return context.reshape(batch, num_frames, *context.shape[1:])[:, 0]  # b n d


# ---------------------------------------------------------------------------------------------- UNet blocks


def _st_resnets(in_channels: list[int], out_channels: int, temb_channels: int, eps: float) -> nn.ModuleList:
    return nn.ModuleList(SpatioTemporalResBlock(in_channels=c, out_channels=out_channels, temb_channels=temb_channels, eps=eps)
                         for c in in_channels)


def _st_transformers(count: int, channels: int, heads: int, layers: int | tuple[int, ...], cross_attention_dim: int) -> nn.ModuleList:
    layers = [layers] * count if isinstance(layers, int) else list(layers)
    return nn.ModuleList(TransformerSpatioTemporalModel(heads, channels // heads, in_channels=channels, num_layers=layers[i],
                                                        cross_attention_dim=cross_attention_dim) for i in range(count))


def _down_inputs(in_channels: int, out_channels: int, num_layers: int) -> list[int]:
    return [cin for cin, _ in down_channels(in_channels, out_channels, num_layers)]


def _up_inputs(in_channels: int, prev_output_channel: int, out_channels: int, num_layers: int) -> list[int]:
    return [cin for cin, _ in up_channels(in_channels, prev_output_channel, out_channels, num_layers)]


def _attend(attn: nn.Module | None, x: torch.Tensor, context, indicator) -> torch.Tensor:
    if attn is None:
        return x
    return attn(x, encoder_hidden_states=context, image_only_indicator=indicator, return_dict=False)[0]


class UNetMidBlockSpatioTemporal(nn.Module):
    """resnet, then ``num_layers`` x (spatio-temporal transformer, resnet)."""

    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, num_layers: int = 1, transformer_layers_per_block: int | tuple[int, ...] = 1,
                 num_attention_heads: int = 1, cross_attention_dim: int = 1280):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attentions = _st_transformers(num_layers, in_channels, num_attention_heads, transformer_layers_per_block, cross_attention_dim)
        self.resnets = _st_resnets([in_channels] * (num_layers + 1), in_channels, temb_channels, eps=1e-5)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        def resnet(i: int, h: torch.Tensor) -> torch.Tensor:  # the first resnet is never checkpointed, as in the reference
            if i == 0:
                return self.resnets[0](h, temb, image_only_indicator=image_only_indicator)
            return _maybe_checkpoint(self, self.resnets[i], h, temb, image_only_indicator)

        def attend(i: int, h: torch.Tensor) -> torch.Tensor:
            return _attend(self.attentions[i], h, encoder_hidden_states, image_only_indicator)

        return mid_pass(hidden_states, len(self.attentions), resnet, attend)


class _BlockST(nn.Module):
    """One layer: resnets[i] (checkpointed when training asks for it) -> attentions[i] (when present)."""

    has_cross_attention = False

    def _stages(self, temb, encoder_hidden_states, image_only_indicator):
        """(resnet, rest) of layer i; ``_layer_fn`` composes them."""
        def resnet(i: int, hidden_states: torch.Tensor) -> torch.Tensor:
            return _maybe_checkpoint(self, self.resnets[i], hidden_states, temb, image_only_indicator)

        def rest(i: int, hidden_states: torch.Tensor) -> torch.Tensor:
            attn = self.attentions[i] if self.attentions is not None else None
            return _attend(attn, hidden_states, encoder_hidden_states, image_only_indicator)

        return resnet, rest

    def _layer_fn(self, temb, encoder_hidden_states, image_only_indicator):
        resnet, rest = self._stages(temb, encoder_hidden_states, image_only_indicator)
        return lambda i, hidden_states: rest(i, resnet(i, hidden_states))


class _DownBlockST(_BlockST):
    def _run(self, hidden_states, temb, encoder_hidden_states, image_only_indicator):
        return down_pass(self, hidden_states, self._layer_fn(temb, encoder_hidden_states, image_only_indicator))


class DownBlockSpatioTemporal(_DownBlockST):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1, add_downsample: bool = True):
        super().__init__()
        self.attentions = None
        self.resnets = _st_resnets(_down_inputs(in_channels, out_channels, num_layers), out_channels, temb_channels, eps=1e-5)
        self.downsamplers = downsamplers(out_channels, add_downsample)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, image_only_indicator: torch.Tensor | None = None):
        return self._run(hidden_states, temb, None, image_only_indicator)


class CrossAttnDownBlockSpatioTemporal(_DownBlockST):
    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 transformer_layers_per_block: int | tuple[int, ...] = 1, num_attention_heads: int = 1,
                 cross_attention_dim: int = 1280, add_downsample: bool = True):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attentions = _st_transformers(num_layers, out_channels, num_attention_heads, transformer_layers_per_block, cross_attention_dim)
        self.resnets = _st_resnets(_down_inputs(in_channels, out_channels, num_layers), out_channels, temb_channels, eps=1e-6)
        self.downsamplers = downsamplers(out_channels, add_downsample)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                image_only_indicator: torch.Tensor | None = None):
        return self._run(hidden_states, temb, encoder_hidden_states, image_only_indicator)


class _UpBlockST(_BlockST):
    def _run(self, hidden_states, res_hidden_states_tuple, temb, encoder_hidden_states, image_only_indicator, upsample_size):
        stages = self._stages(temb, encoder_hidden_states, image_only_indicator)  # input: (b f) (c + c_skip) h w
        return up_pass(self, hidden_states, res_hidden_states_tuple, stages, upsample_size)


class UpBlockSpatioTemporal(_UpBlockST):
    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, num_layers: int = 1, resnet_eps: float = 1e-6, add_upsample: bool = True):
        super().__init__()
        inputs = _up_inputs(in_channels, prev_output_channel, out_channels, num_layers)
        self.attentions = None
        self.resnets = _st_resnets(inputs, out_channels, temb_channels, eps=resnet_eps)
        self.upsamplers = upsamplers(out_channels, add_upsample)
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...], temb: torch.Tensor | None = None,
                image_only_indicator: torch.Tensor | None = None, upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        return self._run(hidden_states, res_hidden_states_tuple, temb, None, image_only_indicator, upsample_size)


class CrossAttnUpBlockSpatioTemporal(_UpBlockST):
    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: int | None = None, num_layers: int = 1, transformer_layers_per_block: int | tuple[int, ...] = 1,
                 resnet_eps: float = 1e-6, num_attention_heads: int = 1, cross_attention_dim: int = 1280, add_upsample: bool = True):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        inputs = _up_inputs(in_channels, prev_output_channel, out_channels, num_layers)
        self.attentions = _st_transformers(num_layers, out_channels, num_attention_heads, transformer_layers_per_block, cross_attention_dim)
        self.resnets = _st_resnets(inputs, out_channels, temb_channels, eps=resnet_eps)
        self.upsamplers = upsamplers(out_channels, add_upsample)
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...], temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, image_only_indicator: torch.Tensor | None = None,
                upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        return self._run(hidden_states, res_hidden_states_tuple, temb, encoder_hidden_states, image_only_indicator, upsample_size)


DOWN_BLOCK_TYPES = ("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal")
UP_BLOCK_TYPES = ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")


def get_down_block(down_block_type: str, *, num_layers: int, in_channels: int, out_channels: int, temb_channels: int,
                   add_downsample: bool, num_attention_heads: int = 1, cross_attention_dim: int | None = None,
                   transformer_layers_per_block: int | tuple[int, ...] = 1) -> nn.Module:
    """A spatio-temporal down block by its config name."""
    if down_block_type == "DownBlockSpatioTemporal":
        return DownBlockSpatioTemporal(in_channels, out_channels, temb_channels, num_layers=num_layers, add_downsample=add_downsample)
    if down_block_type == "CrossAttnDownBlockSpatioTemporal":
        if cross_attention_dim is None:
            raise ValueError("cross_attention_dim must be specified for CrossAttnDownBlockSpatioTemporal")
        return CrossAttnDownBlockSpatioTemporal(
            in_channels, out_channels, temb_channels, num_layers=num_layers, transformer_layers_per_block=transformer_layers_per_block,
            num_attention_heads=num_attention_heads, cross_attention_dim=cross_attention_dim, add_downsample=add_downsample)
    raise ValueError(f"down block type {down_block_type!r} does not exist here; expected one of {list(DOWN_BLOCK_TYPES)}")


def get_up_block(up_block_type: str, *, num_layers: int, in_channels: int, out_channels: int, prev_output_channel: int,
                 temb_channels: int, add_upsample: bool, resolution_idx: int | None = None, num_attention_heads: int = 1,
                 cross_attention_dim: int | None = None, transformer_layers_per_block: int | tuple[int, ...] = 1) -> nn.Module:
    """A spatio-temporal up block by its config name (resnet eps stays at the blocks' 1e-6, as in the reference)."""
    if up_block_type == "UpBlockSpatioTemporal":
        return UpBlockSpatioTemporal(in_channels, prev_output_channel, out_channels, temb_channels, resolution_idx=resolution_idx,
                                     num_layers=num_layers, add_upsample=add_upsample)
    if up_block_type == "CrossAttnUpBlockSpatioTemporal":
        if cross_attention_dim is None:
            raise ValueError("cross_attention_dim must be specified for CrossAttnUpBlockSpatioTemporal")
        return CrossAttnUpBlockSpatioTemporal(
            in_channels, out_channels, prev_output_channel, temb_channels, resolution_idx=resolution_idx, num_layers=num_layers,
            transformer_layers_per_block=transformer_layers_per_block, num_attention_heads=num_attention_heads,
            cross_attention_dim=cross_attention_dim, add_upsample=add_upsample)
    raise ValueError(f"up block type {up_block_type!r} does not exist here; expected one of {list(UP_BLOCK_TYPES)}")
