"""UNet3DConditionModel and its layers against the reference (diffusers) on tiny random configs."""

from __future__ import annotations

import pytest
import torch

from vidiff.configuration import ConfigError
from vidiff.layers import embeddings as E
from vidiff.layers import transformers as T
from vidiff.layers.attention import AttnProcessor, AttnProcessor2_0
from vidiff.layers.temporal import TemporalConvLayer
from vidiff.models.unet_3d_condition import UNet3DConditionModel

diffusers = pytest.importorskip("diffusers")
ATOL = 1e-5

# Two UNets: one layer per block with mixed block types, and two layers per block, all cross-attention,
# 32 groups and a timestep-condition projection.
CONFIGS = {
    "mixed_l1": dict(
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    ),
    "xattn_l2": dict(
        block_out_channels=(32, 64), norm_num_groups=32, cross_attention_dim=24, attention_head_dim=16, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock3D",) * 2, up_block_types=("CrossAttnUpBlock3D",) * 2,
        time_cond_proj_dim=8, norm_eps=1e-6, mid_block_scale_factor=1.5,
    ),
}


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter (the reference zero-inits some convs, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def load_pair(ref: torch.nn.Module, ours: torch.nn.Module) -> torch.nn.Module:
    randomize_(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval()


_PAIRS: dict[str, tuple] = {}


def unet_pair(name: str):
    if name not in _PAIRS:
        ref = diffusers.UNet3DConditionModel(**CONFIGS[name])
        _PAIRS[name] = (ref, load_pair(ref, UNet3DConditionModel.from_config(ref.config)))
    return _PAIRS[name]


def inputs(name: str, frames: int, height: int = 16, width: int = 24, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = CONFIGS[name]
    sample = torch.randn(batch, 4, frames, height, width, generator=g)
    context = torch.randn(batch, 5, cfg["cross_attention_dim"], generator=g)
    return sample, context


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL):
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"


# ---------------------------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_shapes_and_config(name):
    ref, ours = unet_pair(name)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == v.shape for k, v in ref_sd.items())
    assert list(ours.attn_processors) == list(ref.attn_processors)
    for key, value in ref.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == (tuple(value) if isinstance(value, list) else value), key


def test_default_config_matches_reference_defaults():
    import inspect

    params = inspect.signature(diffusers.UNet3DConditionModel.__init__).parameters
    ours = UNet3DConditionModel.config_class()
    for key, p in params.items():
        if key != "self":
            assert ours[key] == p.default, key


@pytest.mark.parametrize(
    "name, frames, timestep",
    [
        ("mixed_l1", 1, 10),
        ("mixed_l1", 3, 999.5),
        ("mixed_l1", 5, torch.tensor(250)),
        ("xattn_l2", 3, torch.tensor([3, 700])),
        ("xattn_l2", 5, 42.0),
        ("xattn_l2", 1, torch.tensor([17.25])),
    ],
)
def test_forward_matches_reference(name, frames, timestep):
    ref, ours = unet_pair(name)
    sample, context = inputs(name, frames)
    cond = torch.randn(2, 8, generator=torch.Generator().manual_seed(3)) if CONFIGS[name].get("time_cond_proj_dim") else None
    with torch.no_grad():
        expected = ref(sample, timestep, context, timestep_cond=cond).sample
        out = ours(sample, timestep, context, timestep_cond=cond)
    assert_close(out.sample, expected)
    assert expected.abs().mean() > 1e-2  # the random weights make a non-trivial output


def test_odd_latent_size_forwards_upsample_size():
    ref, ours = unet_pair("mixed_l1")
    sample, context = inputs("mixed_l1", 2, height=13, width=22)
    mask = torch.ones(2, 5)
    with torch.no_grad():
        expected = ref(sample, 5, context, attention_mask=mask).sample
        (out,) = ours(sample, 5, context, attention_mask=mask, return_dict=False)
    assert_close(out, expected)


def test_additional_residuals_match_reference():
    ref, ours = unet_pair("mixed_l1")
    sample, context = inputs("mixed_l1", 3)
    g = torch.Generator().manual_seed(7)
    # (b f) c h w skips: conv_in, down0 layer, down0 downsampler, down1 layer; mid is (b f) 64 8 12
    shapes = [(6, 32, 16, 24), (6, 32, 16, 24), (6, 32, 8, 12), (6, 64, 8, 12)]
    down = tuple(torch.randn(s, generator=g) for s in shapes)
    mid = torch.randn(6, 64, 8, 12, generator=g)
    with torch.no_grad():
        expected = ref(sample, 3, context, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        out = ours(sample, 3, context, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        with pytest.raises(ValueError, match="down_block_additional_residuals has 3 tensors"):
            ours(sample, 3, context, down_block_additional_residuals=down[:3])
    assert_close(out, expected)


@pytest.mark.parametrize("dim, chunk", [(0, None), (0, 3), (1, None)])
def test_forward_chunking_equals_unchunked(dim, chunk):
    ref, ours = unet_pair("mixed_l1")
    sample, context = inputs("mixed_l1", 3)
    with torch.no_grad():
        plain = ours(sample, 10, context).sample
        ours.enable_forward_chunking(chunk_size=chunk, dim=dim)
        blocks = [m for m in ours.modules() if isinstance(m, T.BasicTransformerBlock)]
        assert blocks and all(b._chunk_size == (chunk or 1) and b._chunk_dim == dim for b in blocks)
        chunked = ours(sample, 10, context).sample
        ours.disable_forward_chunking()
        assert all(b._chunk_size is None for b in blocks)
    assert_close(chunked, plain)
    with pytest.raises(ValueError, match="dim must be 0"):
        ours.enable_forward_chunking(dim=2)


def test_attention_processors_agree():
    ref, ours = unet_pair("xattn_l2")
    sample, context = inputs("xattn_l2", 3)
    cond = torch.zeros(2, 8)
    with torch.no_grad():
        assert all(isinstance(p, AttnProcessor2_0) for p in ours.attn_processors.values())
        sdpa = ours(sample, 10, context, timestep_cond=cond).sample
        ours.set_attn_processor(AttnProcessor())
        classic = ours(sample, 10, context, timestep_cond=cond).sample
        ours.set_attention_slice("auto")
        sliced = ours(sample, 10, context, timestep_cond=cond).sample
        ours.set_attn_processor(AttnProcessor2_0())
        ref.set_default_attn_processor()
        expected = ref(sample, 10, context, timestep_cond=cond).sample
    assert_close(classic, sdpa)
    assert_close(sliced, sdpa)
    assert_close(classic, expected)


def test_freeu_matches_reference():
    ref, ours = unet_pair("mixed_l1")
    sample, context = inputs("mixed_l1", 3)
    with torch.no_grad():
        plain = ours(sample, 10, context).sample
        ref.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        ours.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        expected = ref(sample, 10, context).sample
        out = ours(sample, 10, context).sample
        ref.disable_freeu()
        ours.disable_freeu()
        back = ours(sample, 10, context).sample
    assert_close(out, expected)
    assert (out - plain).abs().max() > 1e-3
    assert_close(back, plain, atol=0)


def test_bad_inputs_and_configs_raise_clear_errors():
    _, ours = unet_pair("mixed_l1")
    sample, context = inputs("mixed_l1", 3)
    with pytest.raises(ValueError, match="frames on axis 2"):
        ours(sample[:, :, 0], 1, context)
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        ours(sample, 1, context[:1])
    with pytest.raises(ValueError, match="timestep must be"):
        ours(sample, torch.tensor([1, 2, 3]), context)
    with pytest.raises(NotImplementedError, match="num_attention_heads"):
        UNet3DConditionModel(num_attention_heads=8)
    with pytest.raises(ConfigError, match="same length"):
        UNet3DConditionModel(block_out_channels=(32,))
    with pytest.raises(ConfigError, match="unknown block types"):
        UNet3DConditionModel(down_block_types=("DownBlock2D",) * 4)
    with pytest.raises(ConfigError, match="divisible"):
        UNet3DConditionModel(block_out_channels=(30, 60), down_block_types=("DownBlock3D",) * 2, up_block_types=("UpBlock3D",) * 2)
    with pytest.raises(TypeError, match="unexpected argument"):
        UNet3DConditionModel(block_out_chanels=(32, 64))


def test_from_pretrained_folder_written_by_reference(tmp_path):
    if not hasattr(UNet3DConditionModel, "from_pretrained"):
        pytest.skip("ModelMixin.from_pretrained is not in this tree yet")
    ref, _ = unet_pair("mixed_l1")
    ref.save_pretrained(tmp_path)
    ours = UNet3DConditionModel.from_pretrained(tmp_path).eval()
    sample, context = inputs("mixed_l1", 3)
    with torch.no_grad():
        assert_close(ours(sample, 10, context).sample, ref(sample, 10, context).sample)


def test_fullgraph_trace_without_graph_breaks(monkeypatch):
    """Dynamo traces the whole forward in one graph (the eager backend keeps this test fast)."""
    from vidiff.runtime import conv, linear

    monkeypatch.setattr(conv, "PACK_WEIGHTS", False)  # eager runs F.conv2d too, as the traced graph does: bit for bit
    monkeypatch.setattr(linear, "ONEDNN_LINEAR", False)  # and F.linear
    _, ours = unet_pair("mixed_l1")
    sample, context = inputs("mixed_l1", 3)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_close(compiled(sample, 10, context).sample, ours(sample, 10, context).sample, atol=0)


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    _, ours = unet_pair("mixed_l1")
    sample, context = inputs("mixed_l1", 3)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(sample, torch.tensor(10), context).sample, ours(sample, torch.tensor(10), context).sample)


# ---------------------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize(
    "dim, kwargs",
    [
        (32, dict(flip_sin_to_cos=True, downscale_freq_shift=0)),
        (33, dict(flip_sin_to_cos=False, downscale_freq_shift=1)),
        (16, dict(flip_sin_to_cos=True, downscale_freq_shift=1, scale=2.5, max_period=500)),
    ],
)
def test_get_timestep_embedding_matches_reference(dim, kwargs):
    from diffusers.models.embeddings import get_timestep_embedding as ref_fn

    for t in (torch.tensor([0, 1, 10, 999]), torch.tensor([0.5, 250.25], dtype=torch.float64)):
        assert torch.equal(E.get_timestep_embedding(t, dim, **kwargs), ref_fn(t, dim, **kwargs))
    with pytest.raises(ValueError, match="1-D"):
        E.get_timestep_embedding(torch.zeros(2, 2), dim)


def test_timesteps_and_timestep_embedding_match_reference():
    from diffusers.models.embeddings import TimestepEmbedding as RefEmb, Timesteps as RefProj

    t = torch.tensor([1.0, 500.0, 999.0])
    assert torch.equal(E.Timesteps(20, False, 1, scale=3)(t), RefProj(20, False, 1, scale=3)(t))
    ref = RefEmb(20, 40, act_fn="silu", out_dim=24, post_act_fn="mish", cond_proj_dim=6)
    ours = load_pair(ref, E.TimestepEmbedding(20, 40, act_fn="silu", out_dim=24, post_act_fn="mish", cond_proj_dim=6))
    x, cond = torch.randn(3, 20), torch.randn(3, 6)
    with torch.no_grad():
        assert_close(ours(x, cond), ref(x, cond))
        assert_close(ours(x), ref(x))
        with pytest.raises(ValueError, match="time_cond_proj_dim"):
            E.TimestepEmbedding(20, 40)(x, cond)


# ---------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(cross_attention_dim=12),
        dict(cross_attention_dim=12, only_cross_attention=True, activation_fn="gelu", upcast_attention=True),
        dict(double_self_attention=True, activation_fn="gelu-approximate", positional_embeddings="sinusoidal", num_positional_embeddings=8),
        dict(activation_fn="geglu-approximate", attention_bias=True, norm_elementwise_affine=False, final_dropout=True, ff_inner_dim=40),
    ],
)
def test_basic_transformer_block_matches_reference(kwargs):
    from diffusers.models.attention import BasicTransformerBlock as Ref

    torch.manual_seed(0)
    ref = Ref(16, 2, 8, **kwargs)
    ours = load_pair(ref, T.BasicTransformerBlock(16, 2, 8, **kwargs))
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(4, 6, 16, generator=g), torch.randn(4, 3, 12, generator=g)
    ctx = ctx if kwargs.get("cross_attention_dim") else None
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=ctx)
        assert_close(ours(x, encoder_hidden_states=ctx), expected)
        for dim, size in ((0, 2), (1, 3)):
            ours.set_chunk_feed_forward(size, dim)
            assert_close(ours(x, encoder_hidden_states=ctx), expected)
        ours.set_chunk_feed_forward(4, 1)
        with pytest.raises(ValueError, match="not divisible by chunk size 4"):
            ours(x, encoder_hidden_states=ctx)


@pytest.mark.parametrize("linear", [False, True])
def test_transformer_2d_matches_reference_with_masks(linear):
    from diffusers.models.transformers.transformer_2d import Transformer2DModel as Ref

    kwargs = dict(in_channels=16, num_layers=2, norm_num_groups=4, cross_attention_dim=12, use_linear_projection=linear)
    torch.manual_seed(0)
    ref = Ref(2, 8, **kwargs)
    ours = load_pair(ref, T.Transformer2DModel(2, 8, **kwargs))
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 16, 3, 5, generator=g), torch.randn(2, 4, 12, generator=g)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1]])
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
        assert_close(ours(x, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample, expected)
        assert_close(ours(x, encoder_hidden_states=ctx, return_dict=False)[0], ref(x, encoder_hidden_states=ctx).sample)


@pytest.mark.parametrize("frames", [1, 4])
def test_transformer_temporal_and_temporal_conv_match_reference(frames):
    from diffusers.models.resnet import TemporalConvLayer as RefConv
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel as Ref

    torch.manual_seed(0)
    ref = Ref(4, 4, in_channels=16, num_layers=2, norm_num_groups=8, cross_attention_dim=7)
    ours = load_pair(ref, T.TransformerTemporalModel(4, 4, in_channels=16, num_layers=2, norm_num_groups=8, cross_attention_dim=7))
    ref_conv = RefConv(16, 16, dropout=0.1, norm_num_groups=8)
    our_conv = load_pair(ref_conv, TemporalConvLayer(16, 16, dropout=0.1, norm_num_groups=8))
    x = torch.randn(2 * frames, 16, 3, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(ours(x, num_frames=frames).sample, ref(x, num_frames=frames).sample)
        assert_close(our_conv(x, num_frames=frames), ref_conv(x, num_frames=frames))
