"""Motion / UNet LoRAs without peft: closed-form checks of the hooked layers, and parity with the reference (which
uses peft) on LoRA files the tests write: the converted guoyww motion-LoRA key names, peft names with adapter
metadata, two adapters combined, the runtime scale, fuse / unfuse / disable / delete / unload, conv layers."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vidiff.layers.lora import LoraHook, LoraState
from vidiff.loading.lora import load_lora_adapter

warnings.filterwarnings("ignore", category=FutureWarning)
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
torch.set_num_threads(1)
TOL = 1e-4


def motion_targets(unet: nn.Module) -> list[str]:
    """The motion modules' attention projections (what the guoyww motion LoRAs adapt)."""
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and ".motion_modules." in n and ".attn" in n]


def lora_tensors(unet: nn.Module, targets: list[str], seed: int, rank: int | dict = 2, scale: float = 0.3) -> dict[str, tuple]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in targets:
        layer = unet.get_submodule(name)
        r = rank[name] if isinstance(rank, dict) else rank
        if isinstance(layer, nn.Linear):
            down, up = torch.randn(r, layer.in_features, generator=g), torch.randn(layer.out_features, r, generator=g)
        else:
            down = torch.randn(r, layer.in_channels, *layer.kernel_size, generator=g)
            up = torch.randn(layer.out_channels, r, 1, 1, generator=g)
        out[name] = (down * scale, up * scale)
    return out


def motion_lora(unet: nn.Module, folder: Path, seed: int = 0, rank: int = 2) -> Path:
    """A motion LoRA as diffusers' conversion script writes it: diffusion_pytorch_model.safetensors, keys
    'unet.<module>.lora.down.weight' / '.lora.up.weight'."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {}
    for name, (down, up) in lora_tensors(unet, motion_targets(unet), seed, rank).items():
        sd[f"unet.{name}.lora.down.weight"], sd[f"unet.{name}.lora.up.weight"] = down, up
    save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    return folder


def peft_lora(unet: nn.Module, path: Path, targets: list[str], seed: int, rank: int | dict, metadata: dict | None = None) -> Path:
    """peft key names (lora_A / lora_B) in pytorch_lora_weights.safetensors, with diffusers' adapter metadata."""
    sd = {}
    for name, (down, up) in lora_tensors(unet, targets, seed, rank).items():
        sd[f"unet.{name}.lora_A.weight"], sd[f"unet.{name}.lora_B.weight"] = down, up
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"lora_adapter_metadata": json.dumps({f"unet.{k}": v for k, v in metadata.items()})} if metadata else None
    save_file(sd, path, metadata=meta)
    return path


# ---------------------------------------------------------------------------------------------- closed form


def test_linear_hook_is_w_plus_scaled_b_a():
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    base = layer(x)
    down, up = torch.randn(2, 6), torch.randn(5, 2)
    hook = LoraHook(layer)
    hook.add("a", down, up, base_scaling=0.5)
    hook.active = ["a"]
    expected = x @ (layer.weight + 0.5 * up @ down).T + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)
    hook.adapters["a"].weight = 2.0  # set_adapters weight multiplies alpha / r
    assert torch.allclose(layer(x), x @ (layer.weight + 1.0 * up @ down).T + layer.bias, atol=1e-5)
    w = layer.weight.detach().clone()
    hook.merge()
    assert torch.allclose(layer.weight, w + up @ down, atol=1e-6)
    assert torch.allclose(layer(x), x @ (w + up @ down).T + layer.bias, atol=1e-5)  # fused: the term is not added twice
    hook.unmerge()
    assert torch.allclose(layer.weight, w, atol=1e-6)
    assert set(layer.state_dict()) == {"weight", "bias"}  # LoRA buffers are not checkpoint keys
    layer.to(torch.float64)
    assert getattr(layer, hook.adapters["a"].a_buffer).dtype == torch.float64
    hook.detach()
    assert torch.allclose(layer(x.double()), base.double(), atol=1e-6) and not list(layer.buffers())


@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_hook_and_fused_weight_agree(kernel):
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 6, kernel, padding=kernel // 2)
    x = torch.randn(2, 4, 5, 5)
    hook = LoraHook(layer)
    hook.add("a", torch.randn(3, 4, kernel, kernel) * 0.3, torch.randn(6, 3, 1, 1) * 0.3, base_scaling=0.7)
    hook.active = ["a"]
    unfused = layer(x)
    assert (unfused - nn.functional.conv2d(x, layer.weight, layer.bias, padding=kernel // 2)).abs().max() > 1e-3
    hook.merge()
    assert torch.allclose(layer(x), unfused, atol=1e-5)


def test_wrong_shapes_name_the_layer():
    hook = LoraHook(nn.Linear(6, 5))
    with pytest.raises(ValueError, match="do not fit"):
        hook.add("a", torch.zeros(2, 7), torch.zeros(5, 2), 1.0)
    with pytest.raises(TypeError, match="Linear and nn.Conv2d"):
        LoraHook(nn.LayerNorm(4))


# ---------------------------------------------------------------------------------------------- parity with the reference


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from test_pipeline_animatediff import load_pair, write_adapter_folder, write_sd_folder

    tmp = tmp_path_factory.mktemp("lora")
    return load_pair((write_sd_folder(tmp), write_adapter_folder(tmp)))


@pytest.fixture
def pair(loaded):
    """The module's pipelines (reference, vidiff), with every LoRA unloaded after the test."""
    yield loaded
    for pipe in loaded:
        pipe.unload_lora_weights()


KW = dict(prompt="a cat", num_frames=4, height=8, width=16, num_inference_steps=2, output_type="np")


def run_both(pair, **kwargs) -> float:
    ref, ours = pair
    expected = ref(**KW, **kwargs, generator=torch.Generator().manual_seed(0)).frames
    got = ours(**KW, **kwargs, generator=torch.Generator().manual_seed(0)).frames
    return float(np.abs(got - expected).max())


def load_both(pair, *args, **kwargs) -> None:
    for pipe in pair:
        pipe.load_lora_weights(*args, **kwargs)


def test_motion_lora_scale_two_adapters_fuse_unfuse(pair, tmp_path):
    ref, ours = pair
    plain = ours(**KW, generator=torch.Generator().manual_seed(0)).frames
    load_both(pair, motion_lora(ours.unet, tmp_path / "zoom", seed=1), adapter_name="zoom-out")
    assert np.abs(ours(**KW, generator=torch.Generator().manual_seed(0)).frames - plain).max() > 1e-2
    assert run_both(pair) < TOL
    assert run_both(pair, cross_attention_kwargs={"scale": 0.5}) < TOL
    targets = motion_targets(ours.unet)
    ranks = {n: 4 if i % 3 else 2 for i, n in enumerate(targets)}
    meta = {"r": 4, "lora_alpha": 8, "rank_pattern": {n: 2 for n in targets[::3]}, "alpha_pattern": {targets[3]: 3.0},
            "target_modules": targets}
    load_both(pair, tmp_path / "pan", weight_name=peft_lora(ours.unet, tmp_path / "pan" / "pan.safetensors", targets, 2, ranks, meta).name)
    assert ref.get_active_adapters() == ours.get_active_adapters() == ["default_1"]
    assert ref.get_list_adapters() == ours.get_list_adapters() == {"unet": ["zoom-out", "default_1"]}
    assert run_both(pair) < TOL
    for pipe in pair:
        pipe.set_adapters(["zoom-out", "default_1"], adapter_weights=[0.8, 0.5])
    assert ref.get_active_adapters() == ours.get_active_adapters() == ["zoom-out", "default_1"]
    assert run_both(pair) < TOL
    for pipe in pair:
        pipe.fuse_lora(lora_scale=0.6)
    assert ours.num_fused_loras == 2 and run_both(pair) < TOL
    for pipe in pair:
        pipe.unfuse_lora()
    assert run_both(pair) < TOL  # unfused, with the fuse scale kept on the adapters (the reference's rule)
    for pipe in pair:
        pipe.disable_lora()
    assert run_both(pair) < TOL
    for pipe in pair:
        pipe.enable_lora()
        pipe.delete_adapters("zoom-out")
    assert ref.get_list_adapters() == ours.get_list_adapters() == {"unet": ["default_1"]}
    assert run_both(pair) < TOL


def test_fuse_then_unload_keeps_the_lora_in_the_weights(pair, tmp_path):
    ref, ours = pair
    keys = list(ours.unet.state_dict())
    weights = {k: v.clone() for k, v in ours.unet.state_dict().items()}
    lora = motion_lora(ours.unet, tmp_path / "roll", seed=3)
    load_both(pair, str(lora / "diffusion_pytorch_model.safetensors"), adapter_name="roll")
    assert list(ours.unet.state_dict()) == keys  # no new checkpoint keys while loaded
    for pipe in pair:
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    assert run_both(pair) < TOL
    assert ours.get_list_adapters() == {} and not hasattr(ours.unet, "_vidiff_lora")
    changed = [k for k in keys if not torch.equal(weights[k], ours.unet.state_dict()[k])]
    assert changed and all(".motion_modules." in k and ".attn" in k for k in changed)
    ours.unet.load_state_dict(weights)  # back to the folder's weights for the other tests
    ref.unet.load_state_dict(weights)


def test_conv_and_spatial_lora_matches_reference(pair, tmp_path):
    ref, ours = pair
    targets = [n for n, m in ours.unet.named_modules()
               if n.startswith("down_blocks.0.") and isinstance(m, (nn.Conv2d, nn.Linear)) and ("resnets" in n or ".attn2." in n)]
    assert any(isinstance(ours.unet.get_submodule(n), nn.Conv2d) for n in targets)
    path = peft_lora(ours.unet, tmp_path / "sd" / "pytorch_lora_weights.safetensors", targets, 5, 2,
                     {"r": 2, "lora_alpha": 4, "use_rslora": True, "target_modules": targets})
    load_both(pair, tmp_path / "sd")
    assert path.exists() and run_both(pair) < TOL


def test_in_memory_state_dict_and_old_processor_names(pair):
    ref, ours = pair
    sd = {}
    for name, (down, up) in lora_tensors(ours.unet, motion_targets(ours.unet)[:8], 6).items():
        head, proj = name.removesuffix(".0").rsplit(".", 1)  # the oldest names: <attn>.processor.to_q_lora.down.weight
        sd[f"unet.{head}.processor.{proj}_lora.down.weight"], sd[f"unet.{head}.processor.{proj}_lora.up.weight"] = down, up
    load_both(pair, sd, adapter_name="old")
    assert run_both(pair) < TOL


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("mutate,error,message", [
    (lambda sd: {k.replace("motion_modules", "motion_moduls"): v for k, v in sd.items()}, ValueError, "does not have"),
    (lambda sd: {**sd, "unet.conv_in.weight": torch.zeros(1)}, ValueError, "must contain 'lora'"),
    (lambda sd: {k.replace("unet.", "text_encoder."): v for k, v in sd.items()}, NotImplementedError, "text-encoder"),
    (lambda sd: {"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(1)}, NotImplementedError, "Kohya"),
    (lambda sd: {k[len("unet."):]: v for k, v in sd.items()}, ValueError, "start with 'unet.'"),
    (lambda sd: {k: v for k, v in sd.items() if "lora.up" not in k}, ValueError, "both the down"),
    (lambda sd: {k: v[:, :3] if "lora.down" in k else v for k, v in sd.items()}, ValueError, "do not fit"),
])
def test_bad_lora_files_are_refused_before_any_change(pair, tmp_path, mutate, error, message):
    _, ours = pair
    good = {}
    for name, (down, up) in lora_tensors(ours.unet, motion_targets(ours.unet)[:4], 0).items():
        good[f"unet.{name}.lora.down.weight"], good[f"unet.{name}.lora.up.weight"] = down, up
    with pytest.raises(error, match=message):
        ours.load_lora_weights(mutate(good))
    assert LoraState.of(ours.unet) is None or not LoraState.of(ours.unet).adapters


def test_misuse_gives_clear_errors(pair, tmp_path):
    _, ours = pair
    with pytest.raises(ValueError, match="no LoRA is loaded"):
        ours.set_adapters("zoom")
    ours.load_lora_weights(motion_lora(ours.unet, tmp_path / "z", seed=1), adapter_name="zoom")
    with pytest.raises(ValueError, match="already in use"):
        ours.load_lora_weights(tmp_path / "z", adapter_name="zoom")
    with pytest.raises(ValueError, match=r"not in the list of present adapters: \['zoom'\]"):
        ours.set_adapters(["zoom", "pan"])
    with pytest.raises(ValueError, match="Length of adapter names"):
        ours.set_adapters(["zoom"], adapter_weights=[1.0, 2.0])
    with pytest.raises(NotImplementedError, match="per-block"):
        ours.set_adapters("zoom", adapter_weights={"down": 1.0})
    with pytest.raises(ValueError, match="cannot hold LoRAs"):
        ours.fuse_lora(components=["vae"])
    with pytest.raises(NotImplementedError, match="hotswap"):
        ours.load_lora_weights(tmp_path / "z", adapter_name="zoom", hotswap=True)
    with pytest.raises(FileNotFoundError, match="no LoRA weights"):
        (tmp_path / "empty").mkdir()
        ours.load_lora_weights(tmp_path / "empty")
    with pytest.raises(ValueError, match="rank 3"):
        load_lora_adapter(ours.unet, {f"{n}.lora_{ab}.weight": t for n, (d, u) in lora_tensors(ours.unet, motion_targets(ours.unet)[:1], 0).items()
                                      for ab, t in (("A", d), ("B", u))}, "meta", {"r": 3})
    assert math.isclose(ours.lora_scale, 1.0)
