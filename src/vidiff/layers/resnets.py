"""2D residual blocks and resamplers, state-dict compatible with diffusers' resnet/downsampling/upsampling.

Usage::

    from vidiff.layers.resnets import ResnetBlock2D, Downsample2D, Upsample2D, get_activation

    block = ResnetBlock2D(in_channels=320, out_channels=640, temb_channels=1280, groups=32, eps=1e-5)
    h = block(h, temb)                # (b, 320, H, W), (b, 1280) -> (b, 640, H, W); temb may be None
    film = ResnetBlock2D(in_channels=64, temb_channels=128, time_embedding_norm="scale_shift")
    down = Downsample2D(640, use_conv=True, out_channels=640, padding=1, name="op")   # keys: conv.*
    up = Upsample2D(640, use_conv=True, out_channels=640)                              # keys: conv.*
    h = down(h)                       # (b, c, H, W) -> (b, c, H/2, W/2)
    h = up(h, output_size=(H, W))     # nearest x2, or to the given size (odd skip connections)
    act = get_activation("silu")      # "swish" | "silu" | "mish" | "gelu" | "relu"
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.conv import Conv2d
from ..runtime.layout import GroupNorm
from ..runtime.linear import Linear
from ..runtime.memory import act_, add_, untracked

_ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}


def get_activation(act_fn: str) -> nn.Module:
    """A fresh activation module by name (case-insensitive)."""
    cls = _ACTIVATIONS.get(act_fn.lower())
    if cls is None:
        raise ValueError(f"activation function {act_fn!r} is unknown; expected one of {sorted(_ACTIVATIONS)}")
    return cls()


class ResnetBlock2D(nn.Module):
    """GroupNorm -> act -> conv -> (+ time embedding) -> GroupNorm -> act -> dropout -> conv, plus a shortcut."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        pre_norm: bool = True,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        skip_time_act: bool = False,
        time_embedding_norm: str = "default",
        kernel: torch.Tensor | None = None,
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        up: bool = False,
        down: bool = False,
        conv_shortcut_bias: bool = True,
        conv_2d_out_channels: int | None = None,
    ):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"ResnetBlock2D supports time_embedding_norm 'default' or 'scale_shift', "
                             f"got {time_embedding_norm!r}")
        if kernel is not None:
            raise NotImplementedError("FIR / sde_vp resampling kernels are not used by the video models; pass kernel=None")
        out_channels = in_channels if out_channels is None else out_channels
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.pre_norm = True
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.up, self.down = up, down
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        self.skip_time_act = skip_time_act

        self.norm1 = GroupNorm(num_groups=groups, num_channels=in_channels, eps=eps, affine=True)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels is None:
            self.time_emb_proj = None
        else:
            scale = 2 if time_embedding_norm == "scale_shift" else 1
            self.time_emb_proj = Linear(temb_channels, scale * out_channels)
        self.norm2 = GroupNorm(num_groups=groups_out or groups, num_channels=out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, conv_2d_out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)

        self.upsample = Upsample2D(in_channels, use_conv=False) if up else None
        self.downsample = Downsample2D(in_channels, use_conv=False, padding=1, name="op") if down and not up else None

        self.use_in_shortcut = in_channels != conv_2d_out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (Conv2d(in_channels, conv_2d_out_channels, kernel_size=1, stride=1, padding=0,
                                        bias=conv_shortcut_bias) if self.use_in_shortcut else None)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        # act_ / add_ work in place on the block's own intermediates where autograd allows (fewer maps alive)
        hidden_states = act_(self.nonlinearity, self.norm1(input_tensor))
        if self.upsample is not None:
            if hidden_states.shape[0] >= 64:  # nearest upsampling fails on large non-contiguous batches
                input_tensor, hidden_states = input_tensor.contiguous(), hidden_states.contiguous()
            input_tensor, hidden_states = self.upsample(input_tensor), self.upsample(hidden_states)
        elif self.downsample is not None:
            input_tensor, hidden_states = self.downsample(input_tensor), self.downsample(hidden_states)
        hidden_states = self.conv1(hidden_states)

        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]  # b c 1 1
        if self.time_embedding_norm == "default":
            if temb is not None:
                hidden_states = add_(hidden_states, temb)
            hidden_states = self.norm2(hidden_states)
        else:  # scale_shift (FiLM)
            if temb is None:
                raise ValueError("`temb` must not be None when time_embedding_norm is 'scale_shift'")
            time_scale, time_shift = torch.chunk(temb, 2, dim=1)
            hidden_states = self.norm2(hidden_states) * (1 + time_scale) + time_shift

        hidden_states = self.conv2(self.dropout(act_(self.nonlinearity, hidden_states)))
        if self.conv_shortcut is not None:
            if self.training:
                input_tensor = input_tensor.contiguous()
            input_tensor = self.conv_shortcut(input_tensor)
        out = add_(hidden_states, input_tensor)
        if self.output_scale_factor == 1:
            return out
        return out.div_(self.output_scale_factor) if untracked(out) else out / self.output_scale_factor


def _channel_norm(norm_type: str | None, channels: int, eps, elementwise_affine) -> nn.Module | None:
    if norm_type is None:
        return None
    if norm_type == "ln_norm":
        return nn.LayerNorm(channels, eps, elementwise_affine)
    if norm_type == "rms_norm":
        raise NotImplementedError("norm_type='rms_norm' resampling is not used by the video models")
    raise ValueError(f"unknown norm_type: {norm_type!r}; expected None or 'ln_norm'")


class Downsample2D(nn.Module):
    """Stride-2 conv (``use_conv``) or 2x2 average pool. ``padding=0`` pads right/bottom by one, as in the VAE."""

    def __init__(self, channels: int, use_conv: bool = False, out_channels: int | None = None, padding: int = 1,
                 name: str = "conv", kernel_size: int = 3, norm_type: str | None = None, eps=None,
                 elementwise_affine=None, bias: bool = True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        self.name = name
        self.norm = _channel_norm(norm_type, channels, eps, elementwise_affine)
        if use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size=kernel_size, stride=2, padding=padding, bias=bias)
        else:
            if self.out_channels != channels:
                raise ValueError(f"Downsample2D without a conv keeps the channels; got channels={channels}, "
                                 f"out_channels={self.out_channels}")
            conv = nn.AvgPool2d(kernel_size=2, stride=2)
        if name == "conv":  # the reference registers the layer twice under this name (both keys in the state dict)
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"Downsample2D expected {self.channels} channels, got input {tuple(hidden_states.shape)}")
        if self.norm is not None:
            hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Nearest x2 (or to ``output_size``) then an optional 3x3 conv; or a stride-2 transposed conv."""

    def __init__(self, channels: int, use_conv: bool = False, use_conv_transpose: bool = False,
                 out_channels: int | None = None, name: str = "conv", kernel_size: int | None = None, padding: int = 1,
                 norm_type: str | None = None, eps=None, elementwise_affine=None, bias: bool = True,
                 interpolate: bool = True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_conv_transpose = use_conv_transpose
        self.name = name
        self.interpolate = interpolate
        self.norm = _channel_norm(norm_type, channels, eps, elementwise_affine)
        conv = None
        if use_conv_transpose:
            conv = nn.ConvTranspose2d(channels, self.out_channels, kernel_size=kernel_size or 4, stride=2,
                                      padding=padding, bias=bias)
        elif use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size=kernel_size or 3, padding=padding, bias=bias)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"Upsample2D expected {self.channels} channels, got input {tuple(hidden_states.shape)}")
        if self.norm is not None:
            hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.use_conv_transpose:
            return self.conv(hidden_states)
        if hidden_states.shape[0] >= 64:  # upsample_nearest_nhwc fails with large batches (diffusers #984)
            hidden_states = hidden_states.contiguous()
        if self.interpolate:
            hidden_states = _nearest(hidden_states, output_size)
        if self.use_conv:
            hidden_states = (self.conv if self.name == "conv" else self.Conv2d_0)(hidden_states)
        return hidden_states


def _nearest(hidden_states: torch.Tensor, output_size: tuple[int, int] | None) -> torch.Tensor:
    """Nearest x2, or to ``output_size`` when given (then the size wins over the factor)."""
    factor = 2 if output_size is None else max(f / s for f, s in zip(output_size, hidden_states.shape[-2:]))
    if hidden_states.numel() * factor > 2**31:  # nearest on huge non-contiguous inputs fails (pytorch #141831)
        hidden_states = hidden_states.contiguous()
    if output_size is None:
        return F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
    return F.interpolate(hidden_states, size=output_size, mode="nearest")
