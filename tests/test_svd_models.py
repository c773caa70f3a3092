"""Stable Video Diffusion models against the reference (diffusers): UNetSpatioTemporalConditionModel,
AutoencoderKLTemporalDecoder and their spatio-temporal layers, on tiny random configs."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder as RefVAE
from diffusers import UNetSpatioTemporalConditionModel as RefUNet
from diffusers.models import resnet as ref_resnet
from diffusers.models.attention_processor import AttnProcessor as RefAttnProcessor
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel as RefTransformerST
from torch.testing import assert_close

from vidiff import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from vidiff.configuration import ConfigError
from vidiff.layers.attention import AttnProcessor, AttnProcessor2_0
from vidiff.layers.spatio_temporal import AlphaBlender, SpatioTemporalResBlock, TransformerSpatioTemporalModel

torch.set_num_threads(1)
ATOL = 1e-5

UNET_CONFIGS = {
    # diffusers' own SVD UNet test: one attended and one plain stage, per-stage head counts
    "two_level": dict(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=(2, 4), in_channels=8, out_channels=4, layers_per_block=2, sample_size=16,
        addition_time_embed_dim=32, projection_class_embeddings_input_dim=96, num_frames=3,
    ),
    # three levels (two upsamplers), one layer per block, per-stage transformer depth and cross-attention width
    "three_level": dict(
        block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=24, num_attention_heads=(1, 2, 4), transformer_layers_per_block=(2, 1, 1), layers_per_block=1,
        in_channels=8, out_channels=4, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, num_frames=2,
    ),
}


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter (zero-inits and the mix factors would otherwise hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def _assert_same_keys(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in ref_sd.items()}


def _unet_pair(name: str):
    ref = randomize_(RefUNet(**UNET_CONFIGS[name]))
    ours = UNetSpatioTemporalConditionModel.from_config(ref.config).eval()
    _assert_same_keys(ours, ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _unet_inputs(ref, batch=2, frames=2, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = ref.config
    sample = torch.randn(batch, frames, cfg.in_channels, h, w, generator=g)
    context = torch.randn(batch, 1, cfg.cross_attention_dim, generator=g)
    ids = torch.rand(batch, cfg.projection_class_embeddings_input_dim // cfg.addition_time_embed_dim, generator=g) * 100
    return sample, context, ids


@pytest.fixture(scope="module", params=list(UNET_CONFIGS))
def unet_pair(request):
    return _unet_pair(request.param)


# ---------------------------------------------------------------------------------------------- UNet


def test_unet_config_round_trip(unet_pair):
    ref, ours = unet_pair
    for key, value in ref.config.items():
        if not key.startswith("_"):
            mine = ours.config[key]
            assert (list(mine) if isinstance(mine, tuple) else mine) == (list(value) if isinstance(value, tuple) else value), key
    assert set(ours.config) == {k for k in ref.config if not k.startswith("_")}
    assert list(ours.attn_processors) == list(ref.attn_processors)


# frames 1 (a single image as video), 2 and 3; square, non-square and odd sizes (odd forces upsample sizes)
@pytest.mark.parametrize("frames,h,w,timestep", [(1, 8, 8, 999), (2, 8, 12, 0.5), (3, 6, 10, torch.tensor(37)), (3, 9, 7, 500)])
def test_unet_matches_reference(unet_pair, frames, h, w, timestep):
    ref, ours = unet_pair
    sample, context, ids = _unet_inputs(ref, frames=frames, h=h, w=w)
    with torch.no_grad():
        expected = ref(sample, timestep, context, ids).sample
        got = ours(sample, timestep, context, ids).sample
    assert got.shape == (2, frames, ref.config.out_channels, h, w)
    assert_close(got, expected, atol=ATOL, rtol=0)


def test_unet_per_sample_timesteps_and_tuple_output():
    ref, ours = _unet_pair("two_level")
    sample, context, ids = _unet_inputs(ref, batch=2, frames=2, h=8, w=6)
    t = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        expected = ref(sample, t, context, ids, return_dict=False)[0]
        got = ours(sample, t, context, ids, return_dict=False)
    assert isinstance(got, tuple) and len(got) == 1
    assert_close(got[0], expected, atol=ATOL, rtol=0)


def test_unet_forward_chunking_and_processors():
    ref, ours = _unet_pair("two_level")
    sample, context, ids = _unet_inputs(ref, frames=2, h=8, w=8)
    with torch.no_grad():
        plain = ours(sample, 10, context, ids).sample
        ref.enable_forward_chunking(chunk_size=1, dim=1)
        ours.enable_forward_chunking(chunk_size=1, dim=1)
        expected = ref(sample, 10, context, ids).sample
        assert_close(ours(sample, 10, context, ids).sample, expected, atol=ATOL, rtol=0)
        assert_close(ours(sample, 10, context, ids).sample, plain, atol=ATOL, rtol=0)
        ours.disable_forward_chunking()
        ref.set_attn_processor(RefAttnProcessor())
        ours.set_attn_processor(AttnProcessor())
        assert all(isinstance(p, AttnProcessor) for p in ours.attn_processors.values())
        assert_close(ours(sample, 10, context, ids).sample, ref(sample, 10, context, ids).sample, atol=ATOL, rtol=0)
        ours.set_attn_processor({k: AttnProcessor2_0() for k in ours.attn_processors})
        ours.set_default_attn_processor()
        assert all(type(p) is AttnProcessor for p in ours.attn_processors.values())


def test_unet_from_pretrained_folder(tmp_path):
    ref = randomize_(RefUNet(**UNET_CONFIGS["three_level"]))
    ref.save_pretrained(tmp_path / "unet")
    ours = UNetSpatioTemporalConditionModel.from_pretrained(tmp_path / "unet")
    sample, context, ids = _unet_inputs(ref, frames=2, h=8, w=8)
    with torch.no_grad():
        assert_close(ours(sample, 3, context, ids).sample, ref(sample, 3, context, ids).sample, atol=ATOL, rtol=0)


def test_unet_bad_inputs_and_configs():
    ref, ours = _unet_pair("two_level")
    sample, context, ids = _unet_inputs(ref, frames=2)
    with pytest.raises(ValueError, match="frames before channels"):
        ours(sample.transpose(1, 2), 1, context, ids)
    with pytest.raises(ValueError, match="3 ids per video"):
        ours(sample, 1, context, ids[:, :2])
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(sample, 1, context[:1], ids)
    with pytest.raises(ConfigError, match="same length"):
        UNetSpatioTemporalConditionModel(block_out_channels=(32, 64, 64))
    with pytest.raises(ConfigError, match="num_attention_heads"):
        UNetSpatioTemporalConditionModel(**{**UNET_CONFIGS["two_level"], "num_attention_heads": (2, 4, 8)})
    with pytest.raises(ConfigError, match="divisible by num_attention_heads"):
        UNetSpatioTemporalConditionModel(**{**UNET_CONFIGS["two_level"], "num_attention_heads": (3, 4)})
    with pytest.raises(ConfigError, match="unknown block types"):
        UNetSpatioTemporalConditionModel(**{**UNET_CONFIGS["two_level"], "up_block_types": ("UpBlock3D", "UpBlockSpatioTemporal")})
    with pytest.raises(TypeError, match="unexpected"):
        UNetSpatioTemporalConditionModel(num_frame=25)


def _small_unet():
    """two_level with one layer per block: every block type, half the tracing time."""
    return randomize_(UNetSpatioTemporalConditionModel(**{**UNET_CONFIGS["two_level"], "layers_per_block": 1}))


def test_unet_compiles_without_graph_breaks(monkeypatch):
    from vidiff.runtime import conv, linear

    monkeypatch.setattr(conv, "PACK_WEIGHTS", False)  # eager runs F.conv2d too, as the traced graph does: bit for bit
    monkeypatch.setattr(linear, "ONEDNN_LINEAR", False)  # and F.linear
    ours = _small_unet()
    sample, context, ids = _unet_inputs(ours, batch=1, frames=2, h=8, w=8)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")  # dynamo raises on any graph break
    with torch.no_grad():
        assert_close(compiled(sample, torch.tensor(10), context, ids).sample, ours(sample, torch.tensor(10), context, ids).sample, atol=0, rtol=0)


@pytest.mark.slow
def test_unet_inductor_compile_matches_eager():
    ours = _small_unet()
    sample, context, ids = _unet_inputs(ours, batch=1, frames=2, h=8, w=8)
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(sample, torch.tensor(10), context, ids).sample, ours(sample, torch.tensor(10), context, ids).sample,
                     atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- layers with still images


def _indicator():
    return torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # b=2, f=3: video 2 is all still images


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=32, out_channels=64, temb_channels=16, eps=1e-5),
    dict(in_channels=64, out_channels=32, temb_channels=None, eps=1e-6, temporal_eps=1e-5, merge_factor=0.0,
         merge_strategy="learned", switch_spatial_to_temporal_mix=True),
])
def test_spatio_temporal_resblock_matches_reference(kwargs):
    ref = randomize_(ref_resnet.SpatioTemporalResBlock(**kwargs))
    ours = SpatioTemporalResBlock(**kwargs).eval()
    _assert_same_keys(ours, ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, kwargs["in_channels"], 5, 4)
    temb = torch.randn(6, 16) if kwargs["temb_channels"] else None
    with torch.no_grad():
        assert_close(ours(x, temb, _indicator()), ref(x, temb, _indicator()), atol=ATOL, rtol=0)


def test_transformer_spatio_temporal_matches_reference():
    kwargs = dict(num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=2, cross_attention_dim=12)
    ref = randomize_(RefTransformerST(**kwargs))
    ours = TransformerSpatioTemporalModel(**kwargs).eval()
    _assert_same_keys(ours, ref)
    ours.load_state_dict(ref.state_dict())
    x, ctx = torch.randn(6, 32, 3, 5), torch.randn(6, 4, 12)
    with torch.no_grad():
        assert_close(ours(x, ctx, _indicator()).sample, ref(x, ctx, _indicator()).sample, atol=ATOL, rtol=0)


@pytest.mark.parametrize("strategy", ["fixed", "learned", "learned_with_images"])
@pytest.mark.parametrize("switch", [False, True])
def test_alpha_blender_matches_reference(strategy, switch):
    ref = ref_resnet.AlphaBlender(0.3, strategy, switch)
    ours = AlphaBlender(0.3, strategy, switch)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    for shape in ((2, 4, 3, 2, 2), (6, 5, 4)):
        a, b = torch.randn(shape), torch.randn(shape)
        assert_close(ours(a, b, _indicator()), ref(a, b, _indicator()), atol=0, rtol=0)
    with pytest.raises(ValueError, match="merge_strategy"):
        AlphaBlender(0.5, "mean")


# ---------------------------------------------------------------------------------------------- temporal-decoder VAE

VAE_CONFIGS = {
    # the SVD pipeline test's VAE: one layer per block (the mid-block attention is built but unused, as in diffusers)
    "l1": dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4),
    # two layers per block (as the real SVD VAE), three levels, 3 latent channels
    "l2": dict(block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3, latent_channels=3,
               layers_per_block=2, scaling_factor=0.5, force_upcast=False),
    # three layers per block: the mid block's third resnet is built but unused
    "l3": dict(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), layers_per_block=3, in_channels=1, out_channels=2),
}


@pytest.fixture(scope="module", params=list(VAE_CONFIGS))
def vae_pair(request):
    ref = randomize_(RefVAE(**VAE_CONFIGS[request.param]))
    ours = AutoencoderKLTemporalDecoder.from_config(ref.config).eval()
    _assert_same_keys(ours, ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert dict(ours.config.to_dict()) == {k: (list(v) if isinstance(v, tuple) else v) for k, v in ref.config.items() if not k.startswith("_")}
    return ref, ours


def test_vae_encode_matches_reference(vae_pair):
    ref, ours = vae_pair
    x = torch.randn(3, ref.config.in_channels, 16, 12)
    with torch.no_grad():
        expected, got = ref.encode(x).latent_dist, ours.encode(x).latent_dist
        assert_close(got.mean, expected.mean, atol=ATOL, rtol=0)
        assert_close(got.logvar, expected.logvar, atol=ATOL, rtol=0)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert_close(got.sample(g1), expected.sample(g2), atol=ATOL, rtol=0)


@pytest.mark.parametrize("num_frames", [1, 2, 3, 6])
def test_vae_decode_matches_reference(vae_pair, num_frames):
    ref, ours = vae_pair
    z = torch.randn(6, ref.config.latent_channels, 5, 4)  # 6 latents: num_frames per video
    with torch.no_grad():
        expected = ref.decode(z, num_frames=num_frames).sample
        got = ours.decode(z, num_frames=num_frames).sample
        assert_close(got, expected, atol=ATOL, rtol=0)
        # the SVD pipeline decodes in chunks of decode_chunk_size frames, each its own clip
        chunks = [ours.decode(part, num_frames=part.shape[0]).sample for part in z.split(4)]
        ref_chunks = [ref.decode(part, num_frames=part.shape[0]).sample for part in z.split(4)]
        assert_close(torch.cat(chunks), torch.cat(ref_chunks), atol=ATOL, rtol=0)


def test_vae_forward_slicing_and_errors(vae_pair):
    ref, ours = vae_pair
    x = torch.randn(4, ref.config.in_channels, 8, 8)
    with torch.no_grad():
        assert_close(ours(x, num_frames=2).sample, ref(x, num_frames=2).sample, atol=ATOL, rtol=0)
        assert_close(ours(x, num_frames=4, return_dict=False)[0], ref(x, num_frames=4, return_dict=False)[0], atol=ATOL, rtol=0)
        z = ours.encode(x).latent_dist.mode()
        full_enc, full_dec = z, ours.decode(z, num_frames=2).sample
        ours.enable_slicing()
        try:
            assert_close(ours.encode(x).latent_dist.mode(), full_enc, atol=ATOL, rtol=0)
            assert_close(ours.decode(z, num_frames=2).sample, full_dec, atol=ATOL, rtol=0)
        finally:
            ours.disable_slicing()
    with pytest.raises(ValueError, match="num_frames=3"):
        ours.decode(z, num_frames=3)
    with pytest.raises(ValueError, match="fold frames"):
        ours.decode(z[None], num_frames=1)
    with pytest.raises(NotImplementedError, match="decode_chunk_size"):
        ours.enable_tiling()
