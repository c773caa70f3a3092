"""AutoencoderKL: the Stable Diffusion / ModelScope image VAE (drop-in for diffusers' ``AutoencoderKL``).

Usage::

    vae = AutoencoderKL.from_config(config)          # or AutoencoderKL(block_out_channels=(128, 256, 512, 512), ...)
    posterior = vae.encode(images).latent_dist       # images (b, 3, H, W) in [-1, 1]
    latents = posterior.sample(generator) * vae.config.scaling_factor
    images = vae.decode(latents / vae.config.scaling_factor).sample
    vae.enable_slicing(); vae.enable_tiling()        # one image at a time; overlapping tiles blended
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..configuration import Config, ConfigError
from ..layers.attention import AttentionProcessorMixin
from ..layers.vae_blocks import Decoder, DiagonalGaussianDistribution, Encoder
from .modeling import ModelMixin
from .outputs import AutoencoderKLOutput, DecoderOutput


@dataclass
class AutoencoderKLConfig(Config):
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(
                f"AutoencoderKL: down_block_types ({len(self.down_block_types)}), up_block_types "
                f"({len(self.up_block_types)}) and block_out_channels ({n}) must have the same length")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(f"AutoencoderKL: block_out_channels {bad} are not divisible by "
                              f"norm_num_groups={self.norm_num_groups}")


class AutoencoderKL(ModelMixin, AttentionProcessorMixin):
    config_class = AutoencoderKLConfig
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]

    def __init__(self, config: AutoencoderKLConfig | None = None, **kwargs):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        self.encoder = Encoder(
            in_channels=cfg.in_channels, out_channels=cfg.latent_channels, down_block_types=cfg.down_block_types,
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block, act_fn=cfg.act_fn,
            norm_num_groups=cfg.norm_num_groups, double_z=True, mid_block_add_attention=cfg.mid_block_add_attention)
        self.decoder = Decoder(
            in_channels=cfg.latent_channels, out_channels=cfg.out_channels, up_block_types=cfg.up_block_types,
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_num_groups, act_fn=cfg.act_fn, mid_block_add_attention=cfg.mid_block_add_attention)
        c = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if cfg.use_post_quant_conv else None

        self.use_slicing = False
        self.use_tiling = False
        sample_size = cfg.sample_size[0] if isinstance(cfg.sample_size, (list, tuple)) else cfg.sample_size
        self.tile_sample_min_size = sample_size
        self.tile_latent_min_size = int(sample_size / (2 ** (len(cfg.block_out_channels) - 1)))
        self.tile_overlap_factor = 0.25

    # --- memory options ---
    def enable_slicing(self) -> None:
        """Encode/decode one batch item at a time."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_sample_min_size: int | None = None, tile_latent_min_size: int | None = None,
                      tile_overlap_factor: float | None = None) -> None:
        """Encode/decode large inputs in overlapping tiles; optional sizes override the config-derived ones."""
        if tile_sample_min_size is not None:
            self.tile_sample_min_size = tile_sample_min_size
            if tile_latent_min_size is None:
                tile_latent_min_size = int(tile_sample_min_size / (2 ** (len(self.config.block_out_channels) - 1)))
        if tile_latent_min_size is not None:
            self.tile_latent_min_size = tile_latent_min_size
        if tile_overlap_factor is not None:
            if not 0.0 <= tile_overlap_factor < 1.0:
                raise ValueError(f"tile_overlap_factor must be in [0, 1), got {tile_overlap_factor}")
            self.tile_overlap_factor = tile_overlap_factor
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # --- encode ---
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (x.shape[-1] > self.tile_sample_min_size or x.shape[-2] > self.tile_sample_min_size):
            return self._tiled_encode(x)
        enc = self.encoder(x)  # b 2c h w
        return self.quant_conv(enc) if self.quant_conv is not None else enc

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images (b, c, H, W) -> ``AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution)``."""
        _check_input("encode", x, self.config.in_channels)
        if self.use_slicing and x.shape[0] > 1:
            h = torch.cat([self._encode(x_slice) for x_slice in x.split(1)])
        else:
            h = self._encode(x)
        posterior = DiagonalGaussianDistribution(h)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    # --- decode ---
    def _decode(self, z: torch.Tensor, return_dict: bool = True):
        if self.use_tiling and (z.shape[-1] > self.tile_latent_min_size or z.shape[-2] > self.tile_latent_min_size):
            return self.tiled_decode(z, return_dict=return_dict)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        dec = self.decoder(z)  # b c H W
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """Latents (b, latent_channels, h, w) -> ``DecoderOutput(sample=images)``. ``generator`` is unused."""
        _check_input("decode", z, self.config.latent_channels)
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(z_slice).sample for z_slice in z.split(1)])
        else:
            decoded = self._decode(z).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    # --- tiling ---
    def blend_v(self, a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
        """Fade the top ``blend_extent`` rows of ``b`` in from the bottom rows of ``a`` (in place)."""
        return _blend(a, b, blend_extent, dim=2)

    def blend_h(self, a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
        """Fade the left ``blend_extent`` columns of ``b`` in from the right columns of ``a`` (in place)."""
        return _blend(a, b, blend_extent, dim=3)

    def _tiled(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], in_tile: int, out_tile: int) -> torch.Tensor:
        """Apply ``fn`` to overlapping ``in_tile`` tiles of x; blend the ``out_tile`` results and stitch them."""
        stride = int(in_tile * (1 - self.tile_overlap_factor))
        blend_extent = int(out_tile * self.tile_overlap_factor)
        row_limit = out_tile - blend_extent
        rows = [[fn(x[:, :, i: i + in_tile, j: j + in_tile]) for j in range(0, x.shape[3], stride)]
                for i in range(0, x.shape[2], stride)]
        result_rows = []
        for i, row in enumerate(rows):
            result_row = []
            for j, tile in enumerate(row):  # blending is in place: later tiles see blended neighbours
                if i > 0:
                    tile = self.blend_v(rows[i - 1][j], tile, blend_extent)
                if j > 0:
                    tile = self.blend_h(row[j - 1], tile, blend_extent)
                result_row.append(tile[:, :, :row_limit, :row_limit])
            result_rows.append(torch.cat(result_row, dim=3))
        return torch.cat(result_rows, dim=2)

    def _encode_tile(self, tile: torch.Tensor) -> torch.Tensor:
        tile = self.encoder(tile)
        return self.quant_conv(tile) if self.quant_conv is not None else tile

    def _decode_tile(self, tile: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            tile = self.post_quant_conv(tile)
        return self.decoder(tile)

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        """Moments (b, 2c, h, w) of x computed tile by tile."""
        return self._tiled(x, self._encode_tile, self.tile_sample_min_size, self.tile_latent_min_size)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True):
        posterior = DiagonalGaussianDistribution(self._tiled_encode(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True):
        dec = self._tiled(z, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size)
        return DecoderOutput(sample=dec) if return_dict else (dec,)


def _blend(a: torch.Tensor, b: torch.Tensor, blend_extent: int, dim: int) -> torch.Tensor:
    """b[..., :e] = a[..., -e:] * (1 - w) + b[..., :e] * w along ``dim``, w = k / e (weights rounded as the reference)."""
    e = min(a.shape[dim], b.shape[dim], blend_extent)
    if e <= 0:
        return b
    w = torch.tensor([k / e for k in range(e)], dtype=torch.float64)
    w_a, w_b = (1 - w).to(b.dtype), w.to(b.dtype)  # Python-float maths, then one rounding, as scalar ops do
    shape = [1, 1, 1, 1]
    shape[dim] = e
    w_a, w_b = w_a.view(shape).to(b.device), w_b.view(shape).to(b.device)
    head = b.narrow(dim, 0, e)
    head.copy_(a.narrow(dim, a.shape[dim] - e, e) * w_a + head * w_b)
    return b


def _check_input(what: str, x: torch.Tensor, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"AutoencoderKL.{what} expects a (batch, {channels}, height, width) tensor, got {got}"
                         + ("; for video, fold frames into the batch: (b f) c h w" if isinstance(x, torch.Tensor) and x.ndim == 5 else ""))
