"""Parity of MotionAdapter / UNetMotionModel (AnimateDiff) with diffusers: from_unet2d with a tiny adapter and SD UNet,
1, 3 and 8 frames, keys, ControlNet residuals, motion-module save/load/freeze, and the clear errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter as RefAdapter
from diffusers import UNet2DConditionModel as RefUNet
from diffusers import UNetMotionModel as RefMotion

from vidiff import MotionAdapter, UNet2DConditionModel, UNetMotionModel

torch.set_num_threads(1)
TOL = 1e-5
B, H, W = 2, 8, 6

UNET = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=32,
    norm_num_groups=16, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)  # fmt: skip
ADAPTER = dict(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=16, motion_num_attention_heads=4,
               motion_max_seq_length=8)
CONFIGS = {
    "default": ({}, {}),
    "no_mid_linear_deep": (dict(use_linear_projection=True, time_cond_proj_dim=8),
                           dict(use_motion_mid_block=False, motion_num_attention_heads=(2, 4), motion_transformer_layers_per_block=2)),
    "pia_conv_in_mid_layers": (dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
                               dict(conv_in_channels=9, motion_transformer_layers_per_mid_block=2)),
}


def _perturbed(module, seed):
    """Random non-zero values everywhere (biases, norms), so that no path is silently the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


def _build(name):
    unet_kw, adapter_kw = CONFIGS[name]
    torch.manual_seed(0)
    ref_unet = _perturbed(RefUNet(**{**UNET, **unet_kw}), 1)
    ref_adapter = _perturbed(RefAdapter(**{**ADAPTER, **adapter_kw}), 2)
    ref = RefMotion.from_unet2d(ref_unet, ref_adapter).eval()
    unet = UNet2DConditionModel.from_config(ref_unet.config)
    unet.load_state_dict(ref_unet.state_dict())
    adapter = MotionAdapter.from_config(ref_adapter.config)
    assert list(adapter.state_dict()) == list(ref_adapter.state_dict())
    adapter.load_state_dict(ref_adapter.state_dict())
    ours = UNetMotionModel.from_unet2d(unet, adapter).eval()
    return ref, ours


_CACHE: dict[str, tuple] = {}


def _pair(name):
    if name not in _CACHE:
        _CACHE[name] = _build(name)
    return _CACHE[name]


def _inputs(model, frames: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    kwargs = dict(sample=torch.randn(B, model.config.in_channels, frames, H, W, generator=g), timestep=torch.tensor(321),
                  encoder_hidden_states=torch.randn(B * frames, 5, 32, generator=g))
    if model.config.time_cond_proj_dim:
        kwargs["timestep_cond"] = torch.randn(B, model.config.time_cond_proj_dim, generator=g)
    return kwargs


def _maxdiff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("frames", [1, 3, 8])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_unet2d_matches_reference(name, frames):
    ref, ours = _pair(name)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.config == type(ours.config).from_dict(dict(ref.config))
    kwargs = _inputs(ours, frames)
    with torch.no_grad():
        expected = ref(**kwargs).sample
        out = ours(**kwargs).sample
    assert out.shape == expected.shape == (B, 4, frames, H, W)
    assert _maxdiff(out, expected) < TOL


def test_per_video_text_states_are_repeated_per_frame():
    _, ours = _pair("default")
    kwargs = _inputs(ours, 3)
    per_video = kwargs["encoder_hidden_states"][::3]
    with torch.no_grad():
        expected = ours(**{**kwargs, "encoder_hidden_states": per_video.repeat_interleave(3, dim=0)}).sample
        assert _maxdiff(ours(**{**kwargs, "encoder_hidden_states": per_video}).sample, expected) == 0


def test_controlnet_residuals_and_odd_sizes_match():
    ref, ours = _pair("default")
    f, h, w = 3, 7, 5
    kwargs = _inputs(ours, f)
    kwargs["sample"] = torch.randn(B, 4, f, h, w)
    g = torch.Generator().manual_seed(4)
    skips = [(32, h, w)] * 3 + [(32, 4, 3)] + [(64, 4, 3)] * 2
    down = tuple(torch.randn(B * f, *s, generator=g) for s in skips)
    mid = torch.randn(B * f, 64, 4, 3, generator=g)
    with torch.no_grad():
        expected = ref(**kwargs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        out = ours(**kwargs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        assert _maxdiff(out, expected) < TOL and _maxdiff(out, ours(**kwargs).sample) > 1e-2


def test_adapter_seeded_init_and_unet_without_adapter_match_reference():
    torch.manual_seed(0)
    ref_adapter = RefAdapter(**ADAPTER)
    torch.manual_seed(0)
    adapter = MotionAdapter(**ADAPTER)
    assert all(torch.equal(adapter.state_dict()[k], v) for k, v in ref_adapter.state_dict().items())

    ref_unet = RefUNet(**UNET)
    unet = UNet2DConditionModel.from_config(ref_unet.config)
    unet.load_state_dict(ref_unet.state_dict())
    torch.manual_seed(3)
    ref = RefMotion.from_unet2d(ref_unet)  # fresh motion modules
    torch.manual_seed(3)
    ours = UNetMotionModel.from_unet2d(unet)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in ref.state_dict().items())
    shell = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    assert shell.config.motion_max_seq_length == 8 and not torch.equal(shell.conv_in.weight, unet.conv_in.weight)


def test_save_load_and_freeze_motion_modules(tmp_path):
    ref, ours = _pair("default")
    ours.save_motion_modules(tmp_path / "adapter")
    reloaded = RefAdapter.from_pretrained(tmp_path / "adapter")  # readable by the reference
    state = ours.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items() if ".motion_modules." in k)

    fresh = UNetMotionModel.from_config(ours.config)
    fresh.load_motion_modules(MotionAdapter.from_pretrained(tmp_path / "adapter"))
    fresh_state = fresh.state_dict()
    assert all(torch.equal(fresh_state[k], v) for k, v in state.items() if ".motion_modules." in k)

    ref.freeze_unet2d_params()
    ours.freeze_unet2d_params()
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in ref.named_parameters() if p.requires_grad} and all("motion_modules" in n for n in trainable)
    for p in ours.parameters():
        p.requires_grad_(True)


def test_compile_fullgraph_has_no_graph_break():
    torch.manual_seed(0)
    ours = UNetMotionModel(
        block_out_channels=(32,), layers_per_block=1, cross_attention_dim=32, norm_num_groups=16, num_attention_heads=4,
        down_block_types=("CrossAttnDownBlockMotion",), up_block_types=("CrossAttnUpBlockMotion",),
        motion_num_attention_heads=4, motion_max_seq_length=8, time_cond_proj_dim=8,
    ).eval()  # fmt: skip
    kwargs = _inputs(ours, 2)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")  # fullgraph: any graph break raises
    with torch.no_grad():
        assert _maxdiff(compiled(**kwargs).sample, ours(**kwargs).sample) < TOL


def test_too_many_frames_is_refused_naming_the_limit():
    _, ours = _pair("default")
    with pytest.raises(ValueError, match="motion_max_seq_length=8"):
        ours(**_inputs(ours, 9))


@pytest.mark.parametrize(
    "adapter_overrides, message",
    [
        (dict(block_out_channels=(32, 128)), "block_out_channels"),
        (dict(block_out_channels=(32, 64, 64), motion_num_attention_heads=4), "number of blocks"),
        (dict(motion_layers_per_block=1), "layers per block"),
    ],
)
def test_incompatible_adapter_is_refused_clearly(adapter_overrides, message):
    unet = UNet2DConditionModel(**UNET)
    adapter = MotionAdapter(**{**ADAPTER, **adapter_overrides})
    with pytest.raises(ValueError, match=message):
        UNetMotionModel.from_unet2d(unet, adapter)
