"""Parity of UNet2DConditionModel (SD 1.5 family) with diffusers: keys, outputs, ControlNet/T2I residuals, masks,
processors, slicing, chunking, FreeU, torch.compile(fullgraph=True), loading, and the errors for bad configs/inputs."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel as RefUNet
from diffusers.models.attention_processor import AttnProcessor as RefAttnProcessor

from vidiff import UNet2DConditionModel
from vidiff.configuration import ConfigError
from vidiff.layers.attention import AttnProcessor

torch.set_num_threads(1)
TOL = 1e-5
B, H, W = 2, 8, 12  # non-square latents

# The tiny SD UNet of diffusers' own pipeline tests, and variations over the options SD-1.5-family configs ship.
BASE = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4, cross_attention_dim=32,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip
CROSS_FIRST = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
CONFIGS = {
    "sd_tuple_heads": dict(attention_head_dim=(2, 4)),
    "int_heads_linear_upcast": dict(attention_head_dim=8, use_linear_projection=True, upcast_attention=True, norm_num_groups=16, **CROSS_FIRST),
    "lcm_class_timestep_film": dict(attention_head_dim=4, time_cond_proj_dim=16, class_embed_type="timestep", flip_sin_to_cos=False,
                                    freq_shift=1, resnet_time_scale_shift="scale_shift", center_input_sample=True),
    "class_embeds_concat": dict(attention_head_dim=2, num_class_embeds=10, class_embeddings_concat=True, **CROSS_FIRST),
    "identity_class_acts": dict(attention_head_dim=4, class_embed_type="identity", time_embedding_act_fn="silu", timestep_post_act="silu"),
    "deep_only_cross_no_mid": dict(attention_head_dim=2, transformer_layers_per_block=2, only_cross_attention=(True, False),
                                   mid_block_type=None, conv_in_kernel=1, conv_out_kernel=5, layers_per_block=(1, 2), **CROSS_FIRST),
    "text_time_resnet_mid": dict(attention_head_dim=4, addition_embed_type="text_time", addition_time_embed_dim=8,
                                 projection_class_embeddings_input_dim=80, transformer_layers_per_block=(1, 2), mid_block_type="UNetMidBlock2D"),
    "text_proj_asymmetric": dict(attention_head_dim=4, encoder_hid_dim=24, transformer_layers_per_block=((1, 2), (2, 1)),
                                 reverse_transformer_layers_per_block=((1, 1, 2), (2, 1, 1)), **CROSS_FIRST),
}


def _pair(seed: int = 0, **overrides):
    """The reference UNet (random weights) and ours built from its config with its state dict copied in."""
    torch.manual_seed(seed)
    ref = RefUNet(**{**BASE, **overrides}).eval()
    ours = UNet2DConditionModel.from_config(ref.config).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _inputs(ref, seed: int = 1, h: int = H, w: int = W) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = ref.config
    width = cfg.encoder_hid_dim or cfg.cross_attention_dim
    kwargs = dict(sample=torch.randn(B, 4, h, w, generator=g), timestep=torch.tensor([10, 500]),
                  encoder_hidden_states=torch.randn(B, 7, width, generator=g))
    if cfg.time_cond_proj_dim:
        kwargs["timestep_cond"] = torch.randn(B, cfg.time_cond_proj_dim, generator=g)
    if cfg.class_embed_type == "timestep" or cfg.num_class_embeds:
        kwargs["class_labels"] = torch.tensor([3, 7])
    elif cfg.class_embed_type == "identity":
        kwargs["class_labels"] = torch.randn(B, cfg.block_out_channels[0] * 4, generator=g)
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = dict(text_embeds=torch.randn(B, 32, generator=g), time_ids=torch.rand(B, 6, generator=g) * 512)
    return kwargs


def _maxdiff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def base_pair():
    return _pair(**CONFIGS["sd_tuple_heads"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_reference(name):
    ref, ours = _pair(**CONFIGS[name])
    kwargs = _inputs(ref)
    with torch.no_grad():
        expected = ref(**kwargs).sample
        out = ours(**kwargs)
        assert out.sample.shape == expected.shape == (B, 4, H, W)
        assert _maxdiff(out.sample, expected) < TOL
        assert _maxdiff(ours(**kwargs, return_dict=False)[0], expected) < TOL


def test_odd_sizes_and_timestep_forms(base_pair):
    ref, ours = base_pair
    kwargs = _inputs(ref, h=9, w=7)  # not a multiple of the upsampling factor: upsamplers follow the skips' sizes
    with torch.no_grad():
        for t in (10, 10.5, torch.tensor(10), torch.tensor([7]), torch.tensor([10, 500])):
            kwargs["timestep"] = t
            assert _maxdiff(ours(**kwargs).sample, ref(**kwargs).sample) < TOL, t


def _skip_shapes(h=H, w=W):
    """(channels, h, w) of every down-path skip of the BASE geometry, and the mid block output."""
    skips = [(32, h, w)] * 3 + [(32, h // 2, w // 2)] + [(64, h // 2, w // 2)] * 2
    return skips, (64, h // 2, w // 2)


def test_controlnet_residuals_match(base_pair):
    ref, ours = base_pair
    kwargs = _inputs(ref)
    g = torch.Generator().manual_seed(5)
    skips, mid = _skip_shapes()
    down = tuple(torch.randn(B, *s, generator=g) for s in skips)
    mid_res = torch.randn(B, *mid, generator=g)
    with torch.no_grad():
        plain = ours(**kwargs).sample
        expected = ref(**kwargs, down_block_additional_residuals=down, mid_block_additional_residual=mid_res).sample
        out = ours(**kwargs, down_block_additional_residuals=down, mid_block_additional_residual=mid_res).sample
    assert _maxdiff(out, expected) < TOL
    assert _maxdiff(out, plain) > 1e-2  # the residuals were really added
    with pytest.raises(ValueError, match="one residual per skip"):
        ours(**kwargs, down_block_additional_residuals=down[:-1], mid_block_additional_residual=mid_res)


@pytest.mark.filterwarnings("ignore:Passing intrablock residual:FutureWarning")
def test_t2i_adapter_residuals_match(base_pair):
    ref, ours = base_pair
    kwargs = _inputs(ref)
    g = torch.Generator().manual_seed(6)
    _, mid = _skip_shapes()
    # DownBlock2D takes its feature after its downsampler (skip included), CrossAttnDownBlock2D after its last layer
    feats = [torch.randn(B, 32, H // 2, W // 2, generator=g), torch.randn(B, 64, H // 2, W // 2, generator=g), torch.randn(B, *mid, generator=g)]
    with torch.no_grad():
        for n in (2, 3):  # one per down block; a third one of the mid block's shape joins after the mid block (XL)
            expected = ref(**kwargs, down_intrablock_additional_residuals=list(feats[:n])).sample
            given = list(feats[:n])
            assert _maxdiff(ours(**kwargs, down_intrablock_additional_residuals=given).sample, expected) < TOL
            assert len(given) == n  # the caller's list is not consumed
        legacy = ref(**kwargs, down_block_additional_residuals=list(feats[:2])).sample  # the reference's deprecated form
        assert _maxdiff(ours(**kwargs, down_block_additional_residuals=tuple(feats[:2])).sample, legacy) < TOL


def test_encoder_attention_mask_matches(base_pair):
    ref, ours = base_pair
    kwargs = _inputs(ref)
    mask = torch.ones(B, 7)
    mask[1, 4:] = 0
    with torch.no_grad():
        expected = ref(**kwargs, encoder_attention_mask=mask).sample
        assert _maxdiff(ours(**kwargs, encoder_attention_mask=mask).sample, expected) < TOL
        assert _maxdiff(expected, ref(**kwargs).sample) > 1e-4


def test_processors_slicing_chunking_freeu(caplog):
    ref, ours = _pair(**CONFIGS["int_heads_linear_upcast"])
    kwargs = _inputs(ref)
    assert list(ours.attn_processors) == list(ref.attn_processors)
    with torch.no_grad():
        ref.set_attn_processor(RefAttnProcessor())
        ours.set_attn_processor(AttnProcessor())
        expected = ref(**kwargs).sample
        assert _maxdiff(ours(**kwargs).sample, expected) < TOL
        lora_scale = dict(cross_attention_kwargs={"scale": 1.0})  # taken out before the blocks, as the reference does
        assert _maxdiff(ours(**kwargs, **lora_scale).sample, ref(**kwargs, **lora_scale).sample) < TOL
        assert not [r for r in caplog.records if r.name.startswith("vidiff") and "scale" in r.getMessage()]
        for size in ("auto", "max", 2):
            ours.set_attention_slice(size)
            assert _maxdiff(ours(**kwargs).sample, expected) < TOL, size
        ours.set_default_attn_processor()
        for dim in (0, 1):
            ours.enable_forward_chunking(chunk_size=1, dim=dim)
            assert _maxdiff(ours(**kwargs).sample, expected) < TOL
        ours.disable_forward_chunking()
        ref.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        ours.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        freeu = ref(**kwargs).sample
        assert _maxdiff(ours(**kwargs).sample, freeu) < TOL and _maxdiff(freeu, expected) > 1e-3
        ours.disable_freeu()
        assert _maxdiff(ours(**kwargs).sample, expected) < TOL


def test_compile_fullgraph_has_no_graph_break():
    one_block = dict(block_out_channels=(32,), down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",))
    ref, ours = _pair(attention_head_dim=4, layers_per_block=1, time_cond_proj_dim=8, **one_block)
    kwargs = _inputs(ref)
    g = torch.Generator().manual_seed(3)
    kwargs.update(down_block_additional_residuals=tuple(torch.randn(B, 32, H, W, generator=g) for _ in range(2)),
                  mid_block_additional_residual=torch.randn(B, 32, H, W, generator=g),
                  encoder_attention_mask=torch.ones(B, 7))  # fmt: skip
    compiled = torch.compile(ours, fullgraph=True, backend="eager")  # fullgraph: any graph break raises
    with torch.no_grad():
        assert _maxdiff(compiled(**kwargs).sample, ref(**kwargs).sample) < TOL


def test_seeded_init_matches_reference():
    kwargs = {**BASE, **CONFIGS["lcm_class_timestep_film"]}
    torch.manual_seed(0)
    ref = RefUNet(**kwargs)
    torch.manual_seed(0)
    ours = UNet2DConditionModel(**kwargs)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_loads_reference_folder_and_saves_one_it_reads(tmp_path, base_pair):
    ref, _ = base_pair
    ref.save_pretrained(tmp_path / "ref")
    ours = UNet2DConditionModel.from_pretrained(tmp_path / "ref").eval()
    assert ours.config.attention_head_dim == (2, 4)
    kwargs = _inputs(ref)
    with torch.no_grad():
        assert _maxdiff(ours(**kwargs).sample, ref(**kwargs).sample) < TOL
    ours.save_pretrained(tmp_path / "ours")
    back = RefUNet.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert _maxdiff(back(**kwargs).sample, ref(**kwargs).sample) < TOL


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(num_attention_heads=8), ConfigError, "attention_head_dim"),
        (dict(dual_cross_attention=True), NotImplementedError, "dual_cross_attention"),
        (dict(class_embed_type="bogus"), NotImplementedError, "class_embed_type"),
        (dict(addition_embed_type="text"), NotImplementedError, "addition_embed_type"),
        (dict(time_embedding_type="fourier"), NotImplementedError, "time_embedding_type"),
        (dict(down_block_types=("AttnDownBlock2D", "DownBlock2D")), NotImplementedError, "AttnDownBlock2D"),
        (dict(up_block_types=("UpBlock2D",)), ConfigError, "same length"),
        (dict(attention_head_dim=(2, 4, 8)), ConfigError, "one per block"),
        (dict(attention_head_dim=3), ConfigError, "divisible"),
        (dict(transformer_layers_per_block=((1, 2), (2, 1))), ConfigError, "reverse_transformer_layers_per_block"),
        (dict(class_embed_type="projection"), ConfigError, "projection_class_embeddings_input_dim"),
    ],
)
def test_bad_config_is_refused_clearly(overrides, error, message):
    with pytest.raises(error, match=message):
        UNet2DConditionModel(**{**BASE, **overrides})


def test_bad_inputs_are_refused_clearly():
    ours = UNet2DConditionModel(**BASE, attention_head_dim=2, class_embed_type="timestep").eval()
    x, ctx = torch.randn(1, 4, H, W), torch.randn(1, 7, 32)
    with pytest.raises(ValueError, match="class_labels"):
        ours(x, 1, ctx)
    with pytest.raises(ValueError, match=r"\(batch, 4, height, width\)"):
        ours(x[:, :, None], 1, ctx, class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(x, 1, torch.randn(1, 7, 16), class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="timestep"):
        ours(x, torch.tensor([1, 2, 3]), ctx, class_labels=torch.tensor([1]))
