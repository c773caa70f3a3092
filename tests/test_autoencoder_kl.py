"""AutoencoderKL parity with diffusers: keys, encode/decode/forward, slicing, tiling, processors."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers.models.attention_processor import AttnProcessor as RefAttnProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution as RefDiagonalGaussian

from vidiff.configuration import ConfigError
from vidiff.layers.attention import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor
from vidiff.layers.vae_blocks import DiagonalGaussianDistribution
from vidiff.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from vidiff.models.outputs import AutoencoderKLOutput, DecoderOutput

torch.set_num_threads(1)
TOL = 1e-5


@pytest.fixture(autouse=True)
def _reference_kernels(monkeypatch):
    """These checks compare the architecture with the reference's at 1e-5, below float32 rounding through a stack of
    convolutions and norms (the reference's own distance to float64 reaches 2e-5 here), so they run the reference's
    kernels: oneDNN with the weight reordered per call (NCHW out), GroupNorm in the layout it is given. vidiff's
    defaults (runtime.conv's kept weights, runtime.layout.GroupNorm's plain layout) round differently and are tested
    against float64 in test_runtime.py; the pipelines' frame tests run with them."""
    from vidiff.runtime import conv, layout

    monkeypatch.setattr(conv, "PACK_WEIGHTS", False)
    monkeypatch.setattr(layout, "PLAIN_GROUP_NORM", False)

CONFIGS = {
    # two levels (latent = image / 2), groups 8
    "two_level": dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
                      layers_per_block=1, sample_size=32),
    # three levels, groups 32, two layers per block, no quant convs, 3 latent channels
    "three_level_no_quant": dict(block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                                 up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32, latent_channels=3,
                                 layers_per_block=2, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                                 scaling_factor=0.5, shift_factor=0.1),
    # no mid-block attention, 1-channel images
    "no_mid_attention": dict(in_channels=1, out_channels=2, block_out_channels=(16, 32), norm_num_groups=4,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             layers_per_block=1, mid_block_add_attention=False, act_fn="silu", sample_size=16),
}


def _pair(name: str, seed: int = 0):
    torch.manual_seed(seed)
    ref = RefAutoencoderKL(**CONFIGS[name]).eval()
    with torch.no_grad():  # randomise norms and biases too, so every parameter matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = AutoencoderKL.from_config(ref.config).eval()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    ours.load_state_dict(ref_sd, strict=True)
    return ref, ours


def _images(ref, b=2, h=32, w=48, seed=1):
    return torch.randn(b, ref.config.in_channels, h, w, generator=torch.Generator().manual_seed(seed))


def _latents(ref, b=2, h=8, w=12, seed=2):
    return torch.randn(b, ref.config.latent_channels, h, w, generator=torch.Generator().manual_seed(seed))


def _maxdiff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_encode_decode_forward_match_reference(name):
    ref, ours = _pair(name)
    for field in ("scaling_factor", "shift_factor", "latents_mean", "force_upcast", "sample_size", "block_out_channels"):
        got, want = ours.config[field], ref.config[field]
        assert (list(got) if isinstance(got, tuple) else got) == (list(want) if isinstance(want, tuple) else want)
    x = _images(ref)
    post_ref, post = ref.encode(x).latent_dist, ours.encode(x).latent_dist
    assert isinstance(post, DiagonalGaussianDistribution)
    for attr in ("mean", "std", "var", "logvar"):
        assert _maxdiff(getattr(post, attr), getattr(post_ref, attr)) < TOL, attr
    s_ref = post_ref.sample(torch.Generator().manual_seed(3))
    assert _maxdiff(post.sample(torch.Generator().manual_seed(3)), s_ref) < TOL
    gens = lambda: [torch.Generator().manual_seed(s) for s in (4, 5)]  # noqa: E731
    assert _maxdiff(post.sample(gens()), post_ref.sample(gens())) < TOL
    assert _maxdiff(post.kl(), post_ref.kl()) < 1e-3 * post_ref.kl().abs().max().item()

    z = _latents(ref, h=x.shape[2] // 2 ** (len(ref.config.block_out_channels) - 1),
                 w=x.shape[3] // 2 ** (len(ref.config.block_out_channels) - 1))
    dec = ours.decode(z)
    assert isinstance(dec, DecoderOutput)
    assert _maxdiff(dec.sample, ref.decode(z).sample) < TOL
    assert _maxdiff(ours(x).sample, ref(x).sample) < TOL
    assert _maxdiff(ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(6)).sample,
                    ref(x, sample_posterior=True, generator=torch.Generator().manual_seed(6)).sample) < TOL


@torch.no_grad()
def test_return_dict_false_and_output_access():
    ref, ours = _pair("two_level")
    x = _images(ref, b=1)
    (post,) = ours.encode(x, return_dict=False)
    out = ours.encode(x)
    assert isinstance(out, AutoencoderKLOutput) and out[0] is out.latent_dist is out["latent_dist"]
    z = post.mode()
    (dec,) = ours.decode(z, return_dict=False)
    assert torch.equal(dec, ours.decode(z).sample)
    out = ours.decode(z)
    assert out.to_tuple() == (out.sample,) and list(out.keys()) == ["sample"]
    (fwd,) = ours(x, return_dict=False)
    assert torch.equal(fwd, ours(x).sample)


@pytest.mark.parametrize("name", ["two_level", "three_level_no_quant"])
@torch.no_grad()
def test_slicing_matches_reference_and_unsliced(name):
    ref, ours = _pair(name)
    x = _images(ref, b=3)
    z = _latents(ref, b=3, h=8, w=12)
    plain_enc, plain_dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
    ref.enable_slicing()
    ours.enable_slicing()
    assert ours.use_slicing
    sliced_enc, sliced_dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
    assert _maxdiff(sliced_enc, ref.encode(x).latent_dist.mean) < TOL
    assert _maxdiff(sliced_dec, ref.decode(z).sample) < TOL
    assert _maxdiff(sliced_enc, plain_enc) < TOL
    assert _maxdiff(sliced_dec, plain_dec) < TOL
    ours.disable_slicing()
    assert not ours.use_slicing


def _set_tiles(model, sample_tile: int):
    model.enable_tiling()
    model.tile_sample_min_size = sample_tile
    model.tile_latent_min_size = sample_tile // 2 ** (len(model.config.block_out_channels) - 1)


@pytest.mark.filterwarnings("ignore:The tiled_encode implementation:FutureWarning")
@pytest.mark.parametrize("name,sample_tile,slicing", [("two_level", 16, False), ("three_level_no_quant", 16, True),
                                                     ("two_level", 24, True)])
@torch.no_grad()
def test_tiling_matches_reference(name, sample_tile, slicing):
    ref, ours = _pair(name)
    x = _images(ref, h=40, w=56)
    levels = 2 ** (len(ref.config.block_out_channels) - 1)
    z = _latents(ref, h=40 // levels, w=56 // levels)
    untiled = ours.decode(z).sample
    for m in (ref, ours):
        _set_tiles(m, sample_tile)
        if slicing:
            m.enable_slicing()
    assert ours.use_tiling
    enc = ours.encode(x).latent_dist.mean
    assert enc.shape == ref.encode(x).latent_dist.mean.shape
    assert _maxdiff(enc, ref.encode(x).latent_dist.mean) < TOL
    dec = ours.decode(z).sample
    assert dec.shape == ref.decode(z).sample.shape
    assert _maxdiff(dec, ref.decode(z).sample) < TOL
    assert _maxdiff(dec, untiled) > 1e-4  # tiling really ran
    assert _maxdiff(ours(x).sample, ref(x).sample) < TOL
    assert _maxdiff(ours.tiled_encode(x).latent_dist.mean, ref.tiled_encode(x).latent_dist.mean) < TOL
    ours.disable_tiling()
    assert _maxdiff(ours.decode(z).sample, untiled) < TOL


@torch.no_grad()
def test_enable_tiling_defaults_and_overrides():
    ref, ours = _pair("three_level_no_quant")
    assert (ours.tile_sample_min_size, ours.tile_latent_min_size, ours.tile_overlap_factor) == (
        ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor)
    ours.enable_tiling(tile_sample_min_size=16)
    assert (ours.tile_sample_min_size, ours.tile_latent_min_size) == (16, 4)
    _set_tiles(ref, 16)
    z = _latents(ref, h=10, w=14)
    assert _maxdiff(ours.decode(z).sample, ref.decode(z).sample) < TOL
    ours.enable_tiling(tile_overlap_factor=0.5)
    ref.tile_overlap_factor = 0.5
    assert _maxdiff(ours.decode(z).sample, ref.decode(z).sample) < TOL
    with pytest.raises(ValueError, match="tile_overlap_factor"):
        ours.enable_tiling(tile_overlap_factor=1.5)


@torch.no_grad()
def test_attention_processors_round_trip():
    ref, ours = _pair("two_level")
    assert list(ours.attn_processors) == list(ref.attn_processors) == [
        "encoder.mid_block.attentions.0.processor", "decoder.mid_block.attentions.0.processor"]
    assert all(isinstance(p, AttnProcessor2_0) for p in ours.attn_processors.values())
    x = _images(ref, b=1)
    expected = ref(x).sample
    ours.set_attn_processor(AttnProcessor())
    assert _maxdiff(ours(x).sample, expected) < TOL
    saved = ours.attn_processors
    ours.set_attn_processor({k: SlicedAttnProcessor(1) for k in saved})
    assert all(isinstance(p, SlicedAttnProcessor) for p in ours.attn_processors.values())
    assert _maxdiff(ours(x).sample, expected) < TOL
    ours.set_attn_processor(saved)
    assert all(ours.attn_processors[k] is v for k, v in saved.items())
    ours.set_attention_slice("max")
    assert _maxdiff(ours(x).sample, expected) < TOL
    ours.set_default_attn_processor()
    ref.set_default_attn_processor()
    assert all(type(p) is AttnProcessor for p in ours.attn_processors.values())
    assert all(type(p) is RefAttnProcessor for p in ref.attn_processors.values())
    assert _maxdiff(ours(x).sample, ref(x).sample) < TOL
    with pytest.raises(ValueError, match="number of attention layers"):
        ours.set_attn_processor({"encoder.mid_block.attentions.0.processor": AttnProcessor()})


@torch.no_grad()
def test_diagonal_gaussian_matches_reference():
    params = torch.randn(2, 6, 4, 5) * 3
    params[:, 3:] = params[:, 3:].clamp(-40, 25) * 10  # exercise the logvar clamp
    ours, ref = DiagonalGaussianDistribution(params), RefDiagonalGaussian(params)
    other_p = torch.randn(2, 6, 4, 5)
    sample = torch.randn(2, 3, 4, 5)
    assert torch.equal(ours.mode(), ref.mode())
    assert torch.allclose(ours.kl(), ref.kl(), rtol=1e-6)
    assert torch.allclose(ours.kl(DiagonalGaussianDistribution(other_p)), ref.kl(RefDiagonalGaussian(other_p)), rtol=1e-6)
    assert torch.allclose(ours.nll(sample), ref.nll(sample), rtol=1e-6)
    det, det_ref = DiagonalGaussianDistribution(params, deterministic=True), RefDiagonalGaussian(params, deterministic=True)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(det.sample(g()), det_ref.sample(g())) and torch.equal(det.sample(g()), det.mean)
    assert torch.equal(det.kl(), det_ref.kl())


def test_kwargs_construction_and_bad_input():
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2)
    assert vae.config.block_out_channels == (8,) and vae.tile_latent_min_size == 32
    with pytest.raises(TypeError, match="block_out_channel"):
        AutoencoderKL(block_out_channel=(8,))
    with pytest.raises(ConfigError, match="same length"):
        AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=4)
    with pytest.raises(ConfigError, match="divisible"):
        AutoencoderKLConfig.from_dict({"block_out_channels": [12], "norm_num_groups": 8})
    with pytest.raises(NotImplementedError, match="AttnDownEncoderBlock2D"):
        AutoencoderKL(down_block_types=("AttnDownEncoderBlock2D",), block_out_channels=(8,), norm_num_groups=4)
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        vae.encode(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="fold frames"):
        vae.decode(torch.randn(1, 2, 3, 8, 8))
