"""Parity of the shared layers (attention + processors, resnets, resamplers) with diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers.models import attention_processor as ref_ap
from diffusers.models.attention import AttentionMixin as RefAttentionMixin
from diffusers.models.downsampling import Downsample2D as RefDownsample2D
from diffusers.models.resnet import ResnetBlock2D as RefResnetBlock2D
from diffusers.models.upsampling import Upsample2D as RefUpsample2D
from torch import nn

from vidiff.layers.attention import (
    Attention,
    AttentionProcessorMixin,
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
)
from vidiff.layers.resnets import Downsample2D, ResnetBlock2D, Upsample2D, get_activation

torch.set_num_threads(1)
TOL = 1e-5


def _pair(ref_cls, ours_cls, seed=0, **kwargs):
    """The reference module with random weights (biases and norms too) and ours with its state dict copied in."""
    torch.manual_seed(seed)
    ref = ref_cls(**kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = ours_cls(**kwargs).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _maxdiff(a, b):
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------------- Attention
ATTN_CONFIGS = {
    "self": (dict(query_dim=32, heads=4, dim_head=8), (2, 7, 32), None),
    "cross_bias": (dict(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16, bias=True, out_bias=False), (2, 9, 32), (2, 5, 24)),
    "upcast_dropout": (dict(query_dim=16, heads=2, dim_head=8, upcast_attention=True, dropout=0.1), (3, 6, 16), None),
    "vae_groupnorm_residual": (dict(query_dim=32, heads=1, dim_head=32, norm_num_groups=8, eps=1e-6, bias=True,
                                    residual_connection=True, upcast_softmax=True, rescale_output_factor=2.0,
                                    _from_deprecated_attn_block=True), (2, 32, 4, 5), None),
    "out_dim": (dict(query_dim=16, heads=2, dim_head=8, out_dim=32), (2, 5, 16), None),
}


@pytest.mark.parametrize("name", list(ATTN_CONFIGS))
def test_attention_matches_reference(name):
    kwargs, x_shape, ctx_shape = ATTN_CONFIGS[name]
    ref, ours = _pair(ref_ap.Attention, Attention, **kwargs)
    assert isinstance(ours.processor, AttnProcessor2_0)
    x = torch.randn(x_shape)
    ctx = torch.randn(ctx_shape) if ctx_shape else None
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=ctx)
        assert _maxdiff(ours(x, encoder_hidden_states=ctx), expected) < TOL
        ref.set_processor(ref_ap.AttnProcessor())
        expected_explicit = ref(x, encoder_hidden_states=ctx)
        for proc in (AttnProcessor(), SlicedAttnProcessor(1), SlicedAttnProcessor(3), ref_ap.AttnProcessor2_0()):
            ours.set_processor(proc)
            assert _maxdiff(ours(x, encoder_hidden_states=ctx), expected_explicit) < TOL, proc


@pytest.mark.parametrize("proc_cls", [AttnProcessor, AttnProcessor2_0, lambda: SlicedAttnProcessor(2)])
def test_attention_mask_matches_reference(proc_cls):
    ref, ours = _pair(ref_ap.Attention, Attention, query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 4, 12)
    mask = torch.zeros(2, 1, 4)
    mask[1, :, 2:] = -10000.0  # second sample ignores its last two context tokens
    ref.set_processor(ref_ap.AttnProcessor())
    ours.set_processor(proc_cls())
    with torch.no_grad():
        expected = ref(x, ctx, attention_mask=mask)
        got = ours(x, ctx, attention_mask=mask)
        unmasked = ours(x, ctx)
    assert _maxdiff(got, expected) < TOL
    assert _maxdiff(got[1], unmasked[1]) > 1e-3  # the mask really acts


def test_attention_helpers_match_reference():
    ref, ours = _pair(ref_ap.Attention, Attention, query_dim=24, heads=3, dim_head=8)
    t = torch.randn(2, 5, 24)
    assert torch.equal(ours.head_to_batch_dim(t), ref.head_to_batch_dim(t))
    assert torch.equal(ours.head_to_batch_dim(t, out_dim=4), ref.head_to_batch_dim(t, out_dim=4))
    b = torch.randn(6, 5, 8)
    assert torch.equal(ours.batch_to_head_dim(b), ref.batch_to_head_dim(b))
    q, k = torch.randn(6, 5, 8), torch.randn(6, 7, 8)
    assert _maxdiff(ours.get_attention_scores(q, k), ref.get_attention_scores(q, k)) < 1e-7
    mask = torch.randn(2, 1, 3)
    for out_dim in (3, 4):
        assert torch.equal(ours.prepare_attention_mask(mask, 3, 2, out_dim), ref.prepare_attention_mask(mask, 3, 2, out_dim))
    assert torch.equal(ours.prepare_attention_mask(mask, 5, 2), ref.prepare_attention_mask(mask, 5, 2))  # padded
    assert ours.prepare_attention_mask(None, 3, 2) is None
    for attr in ("heads", "scale", "inner_dim", "sliceable_head_dim", "is_cross_attention", "cross_attention_dim",
                 "rescale_output_factor", "residual_connection", "upcast_attention", "upcast_softmax", "out_dim"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert ours.spatial_norm is None and ours.norm_cross is None and ours.norm_q is None


def test_diffusers_user_processors_work_unchanged():
    """Processors written for diffusers (Text2Video-Zero's cross-frame attention) run on our Attention."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor,
        CrossFrameAttnProcessor2_0,
    )

    ref, ours = _pair(ref_ap.Attention, Attention, query_dim=16, heads=2, dim_head=8)
    x = torch.randn(6, 5, 16)  # batch 2 x 3 frames
    for proc in (CrossFrameAttnProcessor(batch_size=2), CrossFrameAttnProcessor2_0(batch_size=2)):
        ref.set_processor(proc)
        ours.set_processor(proc)
        with torch.no_grad():
            assert _maxdiff(ours(x), ref(x)) < TOL
    assert ours.get_processor() is proc


def test_cross_attention_kwargs_are_forwarded_or_dropped(caplog):
    seen = {}

    class Scaled:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, gain=1.0):
            seen["gain"] = gain
            return AttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask) * gain

    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    x = torch.randn(1, 3, 8)
    base = attn(x)
    attn.set_processor(Scaled())
    with caplog.at_level("WARNING"):
        out = attn(x, gain=2.0, unknown=1)
    assert seen["gain"] == 2.0 and _maxdiff(out, 2 * base) < TOL
    assert "unknown" in caplog.text


def test_attention_set_attention_slice_and_errors():
    attn = Attention(query_dim=16, heads=4, dim_head=4)
    attn.set_attention_slice(2)
    assert isinstance(attn.processor, SlicedAttnProcessor) and attn.processor.slice_size == 2
    attn.set_attention_slice(None)
    assert isinstance(attn.processor, AttnProcessor2_0)
    with pytest.raises(ValueError, match="smaller or equal"):
        attn.set_attention_slice(5)
    assert isinstance(Attention(query_dim=8, heads=2, dim_head=4, scale_qk=False).processor, AttnProcessor)
    with pytest.raises(NotImplementedError, match="added_kv_proj_dim"):
        Attention(query_dim=8, added_kv_proj_dim=8)
    with pytest.raises(NotImplementedError, match="qk_norm"):
        Attention(query_dim=8, qk_norm="layer_norm")
    with pytest.raises(ValueError, match="only_cross_attention"):
        Attention(query_dim=8, only_cross_attention=True)


# ------------------------------------------------------------------------------------- AttentionProcessorMixin
def _tree(attn_cls, mixin):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn1 = attn_cls(query_dim=16, heads=4, dim_head=4)
            self.attn2 = attn_cls(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)

    class Model(nn.Module, mixin):
        def __init__(self):
            super().__init__()
            self.down_blocks = nn.ModuleList([nn.ModuleDict({"attentions": nn.ModuleList([Block(), Block()])})])
            self.mid = Block()

        def forward(self, x, ctx):
            for blk in [*self.down_blocks[0]["attentions"], self.mid]:
                x = blk.attn2(blk.attn1(x), ctx)
            return x

    torch.manual_seed(0)
    return Model().eval()


def test_processor_mixin_matches_reference_semantics():
    ref, ours = _tree(ref_ap.Attention, RefAttentionMixin), _tree(Attention, AttentionProcessorMixin)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert list(ours.attn_processors) == list(ref.attn_processors)
    assert "down_blocks.0.attentions.1.attn2.processor" in ours.attn_processors
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = ref(x, ctx)
        # one processor everywhere, then a dict round trip
        ours.set_attn_processor(AttnProcessor())
        assert all(isinstance(p, AttnProcessor) for p in ours.attn_processors.values())
        assert _maxdiff(ours(x, ctx), expected) < TOL
        procs = {k: (AttnProcessor2_0() if i % 2 else SlicedAttnProcessor(1)) for i, k in enumerate(ours.attn_processors)}
        ours.set_attn_processor(dict(procs))
        assert all(ours.attn_processors[k] is v for k, v in procs.items())
        assert _maxdiff(ours(x, ctx), expected) < TOL
        ours.set_default_attn_processor()
        assert all(type(p) is AttnProcessor for p in ours.attn_processors.values())
        for size in ("auto", "max", 1, [1, 2, 1, 2, 1, 2]):
            ours.set_attention_slice(size)
            assert all(isinstance(p, SlicedAttnProcessor) for p in ours.attn_processors.values())
            assert _maxdiff(ours(x, ctx), expected) < TOL
    assert [p.slice_size for p in ours.attn_processors.values()] == [1, 2, 1, 2, 1, 2]
    ours.set_attention_slice("auto")
    assert [p.slice_size for p in ours.attn_processors.values()] == [2, 1] * 3
    with pytest.raises(ValueError, match="number of attention layers"):
        ours.set_attn_processor({"x.processor": AttnProcessor()})
    with pytest.raises(ValueError, match="smaller or equal"):
        ours.set_attention_slice(3)
    with pytest.raises(ValueError, match="len\\(slice_size\\)"):
        ours.set_attention_slice([1, 1])

    class Custom:
        def __call__(self, attn, hidden_states, **kw):
            return hidden_states

    ours.set_attn_processor(Custom())
    with pytest.raises(ValueError, match="set_default_attn_processor"):
        ours.set_default_attn_processor()


# ------------------------------------------------------------------------------------------------ ResnetBlock2D
RESNET_CONFIGS = {
    "default": dict(in_channels=32, out_channels=64, temb_channels=16, groups=8),
    "scale_shift": dict(in_channels=32, temb_channels=16, groups=8, time_embedding_norm="scale_shift", eps=1e-5),
    "no_temb_up": dict(in_channels=32, out_channels=16, temb_channels=None, groups=4, groups_out=2, up=True),
    "down_skip_time_act": dict(in_channels=16, temb_channels=8, groups=4, down=True, skip_time_act=True,
                               output_scale_factor=2.0, non_linearity="mish"),
    "conv_shortcut_flag": dict(in_channels=16, out_channels=16, temb_channels=8, groups=4, use_in_shortcut=True,
                               conv_shortcut_bias=False, conv_2d_out_channels=24),
}


@pytest.mark.parametrize("name", list(RESNET_CONFIGS))
def test_resnet_block_matches_reference(name):
    kwargs = RESNET_CONFIGS[name]
    ref, ours = _pair(RefResnetBlock2D, ResnetBlock2D, **kwargs)
    x = torch.randn(2, kwargs["in_channels"], 6, 10)
    temb = torch.randn(2, kwargs["temb_channels"]) if kwargs["temb_channels"] else None
    with torch.no_grad():
        expected = ref(x, temb)
        assert _maxdiff(ours(x, temb), expected) < TOL


def test_resnet_block_errors():
    with pytest.raises(ValueError, match="time_embedding_norm"):
        ResnetBlock2D(in_channels=8, groups=4, time_embedding_norm="ada_group")
    block = ResnetBlock2D(in_channels=8, groups=4, temb_channels=None, time_embedding_norm="scale_shift")
    with pytest.raises(ValueError, match="temb"):
        block(torch.randn(1, 8, 4, 4), None)
    with pytest.raises(ValueError, match="activation"):
        get_activation("tanhh")
    assert isinstance(get_activation("SiLU"), nn.SiLU)


# ---------------------------------------------------------------------------------------------- resamplers
@pytest.mark.parametrize("kwargs", [
    dict(channels=8, use_conv=True, padding=1, name="op"),
    dict(channels=8, use_conv=True, out_channels=12, padding=0, name="op"),
    dict(channels=8, use_conv=True, name="conv"),  # the reference registers Conv2d_0 and conv
    dict(channels=8, use_conv=False),
    dict(channels=8, use_conv=True, kernel_size=1, padding=0, bias=False, norm_type="ln_norm", eps=1e-5, elementwise_affine=True),
])
def test_downsample_matches_reference(kwargs):
    ref, ours = _pair(RefDownsample2D, Downsample2D, **kwargs)
    x = torch.randn(2, 8, 7, 10)
    with torch.no_grad():
        assert _maxdiff(ours(x), ref(x)) < TOL


@pytest.mark.parametrize("kwargs", [
    dict(channels=8, use_conv=True),
    dict(channels=8, use_conv=True, out_channels=4, name="Conv2d_0"),
    dict(channels=8, use_conv=False),
    dict(channels=8, use_conv_transpose=True, out_channels=6),
    dict(channels=8, use_conv=True, interpolate=False, kernel_size=1, padding=0),
])
@pytest.mark.parametrize("output_size", [None, (9, 11)])
def test_upsample_matches_reference(kwargs, output_size):
    ref, ours = _pair(RefUpsample2D, Upsample2D, **kwargs)
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        expected = ref(x, output_size=output_size)
        got = ours(x, output_size=output_size)
    assert got.shape == expected.shape
    assert _maxdiff(got, expected) < TOL


def test_upsample_large_batch_non_contiguous():
    ref, ours = _pair(RefUpsample2D, Upsample2D, channels=4, use_conv=True)
    x = torch.randn(64, 3, 3, 4).permute(0, 3, 1, 2)  # channels-last view, batch >= 64
    with torch.no_grad():
        assert _maxdiff(ours(x, output_size=(7, 5)), ref(x, output_size=(7, 5))) < TOL


def test_resampler_channel_errors():
    with pytest.raises(ValueError, match="expected 8 channels"):
        Downsample2D(8, use_conv=True)(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="expected 8 channels"):
        Upsample2D(8)(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="keeps the channels"):
        Downsample2D(8, use_conv=False, out_channels=4)


# ---------------------------------------------------------------------------------------------------- shared context
def test_shared_context_equals_the_repeated_context():
    """One context per video (b n d) for hidden states with frames folded into the batch ((b r) n c): the default
    processor attends as if the context were repeated r times; processors without ``shares_context`` (and any call
    with a mask) get it repeated; a batch that does not divide is refused."""
    from vidiff.layers.attention import context_repeats

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    x, ctx = torch.randn(6, 5, 16), torch.randn(2, 7, 12)  # 2 videos x 3 frames, 7 context tokens each
    repeated = ctx.repeat_interleave(3, dim=0)
    with torch.no_grad():
        want = attn(x, encoder_hidden_states=repeated)
        assert _maxdiff(attn(x, encoder_hidden_states=ctx), want) < 1e-6
        mask = torch.zeros(6, 1, 7)
        mask[:, :, -2:] = -10000.0
        assert _maxdiff(attn(x, encoder_hidden_states=ctx, attention_mask=mask), attn(x, encoder_hidden_states=repeated, attention_mask=mask)) < 1e-6

    seen = []

    class Spy(AttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            seen.append(encoder_hidden_states.shape)
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)

    attn.set_processor(Spy())
    with torch.no_grad():
        assert _maxdiff(attn(x, encoder_hidden_states=ctx), want) < 1e-5
    assert seen == [torch.Size([6, 7, 12])]
    assert context_repeats(x, ctx) == 3 and context_repeats(x, repeated) == 1
    with pytest.raises(ValueError, match="does not divide"):
        attn(x, encoder_hidden_states=torch.randn(4, 7, 12))


# ---------------------------------------------------------------------------------------------------- FrameConv
@pytest.mark.parametrize("kernel,shape", [(3, (2, 8, 5, 3, 4)), (1, (1, 8, 3, 2, 2)), (3, (1, 8, 1, 4, 4))])
def test_frame_conv_equals_conv3d(kernel, shape):
    """FrameConv (the temporal convolutions, run as 2-D convolutions) gives Conv3d's output with Conv3d's keys."""
    from vidiff.layers.temporal import FrameConv

    torch.manual_seed(0)
    ref = nn.Conv3d(8, 6, (kernel, 1, 1), padding=(kernel // 2, 0, 0))
    ours = FrameConv(8, 6, kernel_size=kernel)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert _maxdiff(ours(x), ref(x)) < 1e-5
        assert _maxdiff(ours(x.transpose(3, 4)), ref(x.transpose(3, 4))) < 1e-5  # non-contiguous input
