"""Checkpoint loading: diffusers-format folders (single, sharded, variants, pickles), bad files, key reports,
hub-cache resolution offline, pipeline download patterns, and save_pretrained read back by diffusers."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import ModelMixin as RefModelMixin
from diffusers.configuration_utils import ConfigMixin as RefConfigMixin
from diffusers.configuration_utils import register_to_config
from safetensors.torch import load_file, save_file
from torch import nn

from vidiff.configuration import Config
from vidiff.loading.errors import CheckpointError, CheckpointNotFoundError
from vidiff.loading.hub import (
    list_repo_files_cached,
    pipeline_allow_patterns,
    pipeline_download_patterns,
    resolve_file,
    resolve_snapshot,
)
from vidiff.loading.weights import load_state_dict, save_state_dict, select_weight_files
from vidiff.models.modeling import ModelMixin

torch.set_num_threads(1)
SHARD = 600  # bytes: splits the tiny model into several shards


# ---------------------------------------------------------------- a tiny model, ours and the reference's
def _build(self, in_channels: int, hidden: int) -> None:
    # a root parameter comes first in the state dict (without accelerate, diffusers decides from the first key
    # whether to assign fp16 tensors or copy them into float32 ones)
    self.scale = nn.Parameter(torch.ones(1))
    self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
    self.norm = nn.GroupNorm(2, hidden)
    self.proj = nn.Linear(hidden, hidden)
    self.register_buffer("steps", torch.arange(4))


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.norm(self.conv(x))  # b c h w
    return self.proj(h.permute(0, 2, 3, 1)) * self.scale + self.steps.sum()


@dataclass
class TinyConfig(Config):
    in_channels: int = 3
    hidden: int = 8


class TinyNet(ModelMixin):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig | None = None, **kwargs):
        super().__init__()
        cfg = self.register_config(config, kwargs)
        _build(self, cfg.in_channels, cfg.hidden)

    forward = _forward


class RefTinyNet(RefModelMixin, RefConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, hidden: int = 8):
        super().__init__()
        _build(self, in_channels, hidden)

    forward = _forward


class KeepNormFp32(TinyNet):
    _keep_in_fp32_modules = ["norm"]


CONFIGS = [dict(in_channels=3, hidden=8), dict(in_channels=1, hidden=12)]


def _ref(cfg: dict, seed: int = 0) -> RefTinyNet:
    torch.manual_seed(seed)
    return RefTinyNet(**cfg).eval()


def _x(cfg: dict) -> torch.Tensor:
    return torch.randn(2, cfg["in_channels"], 5, 6, generator=torch.Generator().manual_seed(1))


def _assert_same_weights(ours: nn.Module, ref: nn.Module, dtype: torch.dtype | None = None) -> None:
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for k in b:
        assert a[k].dtype == (b[k].dtype if dtype is None else dtype) or not b[k].is_floating_point(), k
        assert torch.equal(a[k], b[k].to(a[k].dtype)), k


# ---------------------------------------------------------------- diffusers folders -> vidiff
SAVE_KINDS = {
    "single": dict(),
    "sharded": dict(max_shard_size=SHARD),
    "fp16_single": dict(variant="fp16"),
    "fp16_sharded": dict(variant="fp16", max_shard_size=SHARD),
}


@pytest.mark.parametrize("cfg", CONFIGS, ids=["c3h8", "c1h12"])
@pytest.mark.parametrize("kind", SAVE_KINDS)
def test_loads_diffusers_folder(tmp_path, cfg, kind):
    ref = _ref(cfg)
    save_kw = SAVE_KINDS[kind]
    if "variant" in save_kw:
        ref = ref.half()
    ref.save_pretrained(tmp_path, **save_kw)
    if "max_shard_size" in save_kw:
        assert len(list(tmp_path.glob("*-of-*.safetensors"))) > 1
    variant = save_kw.get("variant")
    ours = TinyNet.from_pretrained(tmp_path, variant=variant)
    ref_loaded = RefTinyNet.from_pretrained(tmp_path, variant=variant)
    assert not ours.training
    _assert_same_weights(ours, ref_loaded)  # fp16 files load as float32 in both libraries
    assert ours.config.to_dict() == {k: ref.config[k] for k in ("in_channels", "hidden")}
    with torch.no_grad():
        assert torch.equal(ours(_x(cfg)), ref_loaded(_x(cfg)))


@pytest.mark.parametrize("kind", SAVE_KINDS)
def test_file_names_match_diffusers(tmp_path, kind):
    ref = _ref(CONFIGS[0])
    ours = TinyNet.from_config(ref.config)
    ours.load_state_dict(ref.state_dict())
    ref.save_pretrained(tmp_path / "ref", **SAVE_KINDS[kind])
    ours.save_pretrained(tmp_path / "ours", **SAVE_KINDS[kind])
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ours").iterdir())
    for name in names:
        if name.endswith(".safetensors"):
            a, b = load_file(tmp_path / "ref" / name), load_file(tmp_path / "ours" / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        elif name.endswith(".index.json") or ".index." in name:
            assert json.loads((tmp_path / "ref" / name).read_text()) == json.loads((tmp_path / "ours" / name).read_text())


@pytest.mark.parametrize("kind", SAVE_KINDS)
def test_diffusers_loads_our_save(tmp_path, kind):
    ref = _ref(CONFIGS[1], seed=3)
    ours = TinyNet.from_config(ref.config)
    ours.load_state_dict(ref.state_dict())
    ours.save_pretrained(tmp_path, **SAVE_KINDS[kind])
    back = RefTinyNet.from_pretrained(tmp_path, variant=SAVE_KINDS[kind].get("variant"))
    _assert_same_weights(back, ref)
    assert back.config["hidden"] == 12
    again = TinyNet.from_pretrained(tmp_path, variant=SAVE_KINDS[kind].get("variant"))
    _assert_same_weights(again, ref)


def test_resave_replaces_stale_files(tmp_path):
    ours = TinyNet.from_config(_ref(CONFIGS[0]).config)
    ours.save_pretrained(tmp_path, max_shard_size=SHARD)
    ours.save_pretrained(tmp_path)  # now one file: the old index and shards must go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_dtype_matches_reference(tmp_path, dtype):
    _ref(CONFIGS[0]).save_pretrained(tmp_path)
    ours = TinyNet.from_pretrained(tmp_path, torch_dtype=dtype)
    ref = RefTinyNet.from_pretrained(tmp_path, torch_dtype=dtype)
    assert {k: v.dtype for k, v in ours.state_dict().items()} == {k: v.dtype for k, v in ref.state_dict().items()}
    assert ours.steps.dtype == torch.int64 and ours.conv.weight.dtype == dtype
    _assert_same_weights(ours, ref)


def test_keep_in_fp32_modules(tmp_path):
    # diffusers' rule (module name among the key's dotted parts -> float32); its own check needs accelerate
    ref = _ref(CONFIGS[0])
    ref.save_pretrained(tmp_path)
    ours = KeepNormFp32.from_pretrained(tmp_path, torch_dtype=torch.float16)
    for k, v in ours.state_dict().items():
        want = torch.int64 if k == "steps" else torch.float32 if k.startswith("norm.") else torch.float16
        assert v.dtype == want, k
        assert torch.equal(v, ref.state_dict()[k].to(want)), k


# ---------------------------------------------------------------- pickles
def test_pickle_refused_unless_allowed(tmp_path):
    ref = _ref(CONFIGS[0])
    ref.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        TinyNet.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        TinyNet.from_pretrained(tmp_path, use_safetensors=False)
    with pytest.raises(CheckpointNotFoundError, match="use_safetensors=None"):
        TinyNet.from_pretrained(tmp_path, use_safetensors=True)
    ours = TinyNet.from_pretrained(tmp_path, use_safetensors=False, allow_pickle=True)
    _assert_same_weights(ours, ref)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_loaded_with_weights_only(tmp_path):
    TinyNet().save_pretrained(tmp_path, safe_serialization=False)
    with open(tmp_path / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"conv.weight": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        TinyNet.from_pretrained(tmp_path, allow_pickle=True)


def test_safetensors_preferred_over_pickle(tmp_path):
    ref = _ref(CONFIGS[0])
    ref.save_pretrained(tmp_path)
    torch.save({"garbage": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.bin")
    _assert_same_weights(TinyNet.from_pretrained(tmp_path, allow_pickle=True), ref)


# ---------------------------------------------------------------- bad folders and files
def test_missing_folder_is_clear():
    with pytest.raises(CheckpointNotFoundError, match="no such folder, and not a valid hub id"):
        TinyNet.from_pretrained("/no/such/folder/anywhere")


def test_missing_weights_and_subfolder(tmp_path):
    TinyNet().save_config(tmp_path / "unet")
    with pytest.raises(CheckpointNotFoundError, match="no weights named diffusion_pytorch_model.safetensors"):
        TinyNet.from_pretrained(tmp_path, subfolder="unet")
    with pytest.raises(CheckpointNotFoundError, match="no subfolder 'vae'.*unet"):
        TinyNet.from_pretrained(tmp_path, subfolder="vae")


def test_missing_variant_lists_files(tmp_path):
    _ref(CONFIGS[0]).save_pretrained(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match=r"fp16.*diffusion_pytorch_model\.safetensors.*variant=None"):
        TinyNet.from_pretrained(tmp_path, variant="fp16")


def test_truncated_file(tmp_path):
    _ref(CONFIGS[0]).save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*truncated"):
        TinyNet.from_pretrained(tmp_path)


def test_html_saved_as_safetensors(tmp_path):
    TinyNet().save_config(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_text("<!DOCTYPE html>\n<html><body>Sign in</body></html>")
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*HTML page"):
        TinyNet.from_pretrained(tmp_path)


def test_missing_unexpected_and_misshaped_keys_in_one_error(tmp_path):
    _ref(CONFIGS[0]).save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    sd = load_file(path)
    del sd["proj.bias"]
    sd["extra.weight"] = torch.zeros(2)
    sd["conv.weight"] = torch.zeros(8, 3, 1, 1)
    save_file(sd, path)
    with pytest.raises(CheckpointError) as info:
        TinyNet.from_pretrained(tmp_path)
    msg = str(info.value)
    assert "proj.bias" in msg and "extra.weight" in msg and "conv.weight: (8, 3, 1, 1) vs (8, 3, 3, 3)" in msg
    assert "missing from the checkpoint (1)" in msg and "not in the model (1)" in msg


class IgnoresExtra(TinyNet):
    _keys_to_ignore_on_load_unexpected = [r"^extra\."]


def test_keys_to_ignore_on_load_unexpected(tmp_path):
    ref = _ref(CONFIGS[0])
    ref.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({**load_file(path), "extra.weight": torch.zeros(2)}, path)
    _assert_same_weights(IgnoresExtra.from_pretrained(tmp_path), ref)
    with pytest.raises(CheckpointError, match="extra.weight"):
        TinyNet.from_pretrained(tmp_path)


@pytest.mark.parametrize("content, hint", [
    (b"", "empty"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-lfs pointer"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", "cannot read safetensors file"),
])
def test_unreadable_weight_files(tmp_path, content, hint):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{path.name}.*{hint}|{hint}.*{path.name}"):
        load_state_dict(path)


def test_shard_index_pointing_outside_is_refused(tmp_path):
    _ref(CONFIGS[0]).save_pretrained(tmp_path, max_shard_size=SHARD)
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["conv.weight"] = "../elsewhere.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        TinyNet.from_pretrained(tmp_path)


def test_config_overrides_and_unknown_kwargs(tmp_path):
    _ref(CONFIGS[0]).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="shape differs"):
        TinyNet.from_pretrained(tmp_path, hidden=4)
    with pytest.raises(TypeError, match="hiddden"):
        TinyNet.from_pretrained(tmp_path, hiddden=4)
    with pytest.raises(ValueError, match="device_map"):
        TinyNet.from_pretrained(tmp_path, device_map="auto")
    assert TinyNet.from_pretrained(tmp_path, device_map="cpu", low_cpu_mem_usage=False).device.type == "cpu"


# ---------------------------------------------------------------- buffers that are not saved
class Rope(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.register_buffer("freqs", torch.arange(n, dtype=torch.float32) / n, persistent=False)

    def _init_non_persistent_buffers(self) -> None:
        self.freqs = torch.arange(self.n, dtype=torch.float32) / self.n


class WithRope(TinyNet):
    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.rope = Rope(self.config.hidden)


class WithBareBuffer(TinyNet):
    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.register_buffer("table", torch.ones(3), persistent=False)


def test_non_persistent_buffers(tmp_path):
    _ref(CONFIGS[0]).save_pretrained(tmp_path)
    model = WithRope.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert torch.equal(model.rope.freqs, (torch.arange(8) / 8).half())
    with pytest.raises(CheckpointError, match=r"\['table'\].*_init_non_persistent_buffers"):
        WithBareBuffer.from_pretrained(tmp_path)


# ---------------------------------------------------------------- weight-file choice and state-dict I/O
def test_select_weight_files_naming():
    names = [
        "config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.safetensors.index.fp16.json",
        "diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "diffusion_flax_model.msgpack", "diffusion_pytorch_model.fp16.bin",
    ]
    assert select_weight_files(names) == ["diffusion_pytorch_model.safetensors"]
    assert select_weight_files(names, variant="fp16") == names[3:6]
    assert select_weight_files(names, use_safetensors=False, allow_pickle=True) == ["diffusion_pytorch_model.bin"]
    legacy = ["diffusion_pytorch_model.safetensors.fp16.index.json", "diffusion_pytorch_model-00001-of-00001.fp16.safetensors"]
    assert select_weight_files(legacy, variant="fp16") == legacy
    with pytest.raises(CheckpointNotFoundError):
        select_weight_files(["diffusion_pytorch_model.safetensors"], variant="fp16")
    assert select_weight_files(["diffusion_pytorch_model.safetensors"], variant="fp16", variant_fallback=True) == [
        "diffusion_pytorch_model.safetensors"]


def test_legacy_variant_shards_load(tmp_path):
    ref = _ref(CONFIGS[0])
    ref.save_pretrained(tmp_path, variant="fp16", max_shard_size=SHARD)
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json"
    data = json.loads(index.read_text())
    legacy = {n: n.replace(".fp16-", "-").replace(".safetensors", ".fp16.safetensors") for n in set(data["weight_map"].values())}
    for old, new in legacy.items():
        (tmp_path / old).rename(tmp_path / new)
    data["weight_map"] = {k: legacy[v] for k, v in data["weight_map"].items()}
    (tmp_path / "diffusion_pytorch_model.safetensors.fp16.index.json").write_text(json.dumps(data))
    index.unlink()
    _assert_same_weights(TinyNet.from_pretrained(tmp_path, variant="fp16"), ref)


def test_state_dict_io_roundtrip(tmp_path):
    sd = {"a": torch.randn(40, 3), "b": torch.arange(5), "c": torch.randn(7).half()}
    written = save_state_dict(sd, tmp_path, prefix="model", max_shard_size=300)
    assert len(written) > 2 and written[-1].name == "model.safetensors.index.json"
    back = load_state_dict(written[-1], dtype=torch.bfloat16)
    assert back["b"].dtype == torch.int64 and back["a"].dtype == torch.bfloat16
    assert torch.equal(back["a"], sd["a"].bfloat16()) and torch.equal(back["b"], sd["b"])
    assert load_state_dict(written[-1], dtype={"c": torch.float32})["c"].dtype == torch.float32


# ---------------------------------------------------------------- the hub cache, offline
SHA = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(cache: Path, repo: str, folder: Path) -> Path:
    """The layout huggingface_hub writes: blobs/<hash>, snapshots/<sha>/<path> -> ../../blobs/<hash>, refs/main."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(SHA)
    for i, src in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        rel = src.relative_to(folder)
        blob = storage / "blobs" / f"{i:040x}"
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(src.read_bytes())
        link = storage / "snapshots" / SHA / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return storage / "snapshots" / SHA


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    ref = _ref(CONFIGS[0])
    ref.save_pretrained(tmp_path / "src" / "unet", max_shard_size=SHARD)
    ref.half().save_pretrained(tmp_path / "src" / "unet", variant="fp16")
    (tmp_path / "src" / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": ["diffusers", "TinyNet"]}))
    cache = tmp_path / "hub"
    _fake_cache(cache, "org/tiny", tmp_path / "src")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, RefTinyNet.from_pretrained(tmp_path / "src", subfolder="unet")


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_hub_id_from_cache_offline(hub_cache, variant):
    cache, ref = hub_cache
    ours = TinyNet.from_pretrained("org/tiny", subfolder="unet", cache_dir=cache, variant=variant)
    if variant is None:
        _assert_same_weights(ours, ref)
    else:
        _assert_same_weights(ours, ref.half().float())
    assert ours.config._name_or_path == "org/tiny"


def test_local_files_only_without_env(hub_cache, monkeypatch):
    cache, ref = hub_cache
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _assert_same_weights(TinyNet.from_pretrained("org/tiny", subfolder="unet", cache_dir=cache, local_files_only=True), ref)


def test_not_cached_errors_say_how_to_fix(hub_cache):
    cache, _ = hub_cache
    with pytest.raises(CheckpointNotFoundError, match=rf"not in the Hugging Face cache at {cache}.*HF_HUB_OFFLINE.*local folder"):
        TinyNet.from_pretrained("org/other", cache_dir=cache)
    with pytest.raises(CheckpointNotFoundError, match=r"vae/config.json.*not in the Hugging Face cache"):
        resolve_file("org/tiny", "config.json", "vae", cache_dir=cache)
    with pytest.raises(CheckpointNotFoundError, match="not in the Hugging Face cache"):
        resolve_snapshot("org/tiny", ["model_index.json", "vae/config.json"], cache_dir=cache)
    with pytest.raises(CheckpointError, match="force_download=True needs network access"):
        resolve_file("org/tiny", "model_index.json", cache_dir=cache, force_download=True)


def test_hub_listing_and_snapshot_offline(hub_cache):
    cache, _ = hub_cache
    files = list_repo_files_cached("org/tiny", cache_dir=cache)
    assert "model_index.json" in files and "unet/diffusion_pytorch_model.fp16.safetensors" in files
    assert list_repo_files_cached("org/tiny", cache_dir=cache, revision=SHA) == files
    patterns = pipeline_download_patterns("org/tiny", {"unet": ["diffusers", "TinyNet"]}, variant="fp16", cache_dir=cache)
    assert patterns == ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"]
    folder = resolve_snapshot("org/tiny", patterns, cache_dir=cache)
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()


# ---------------------------------------------------------------- pipeline download patterns
REPO_FILES = [
    "model_index.json", "README.md",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin", "unet/diffusion_flax_model.msgpack",
    "unet/model.onnx",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin", "text_encoder/flax_model.msgpack",
    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
    "scheduler/scheduler_config.json",
    "safety_checker/config.json", "safety_checker/model.safetensors",
    "transformer/config.json", "transformer/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
    "transformer/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.fp16.json",
    "transformer/diffusion_pytorch_model-00001-of-00001.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
]
MODEL_INDEX = {
    "_class_name": "SomePipeline", "_diffusers_version": "0.42.1",
    "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
    "transformer": ["diffusers", "SomeTransformer"],
}


def test_pipeline_patterns_variant():
    patterns = pipeline_allow_patterns(MODEL_INDEX, REPO_FILES, variant="fp16")
    assert patterns == [
        "model_index.json",
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",  # no fp16 there: falls back, like diffusers
        "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
        "tokenizer/*", "scheduler/*",
        "transformer/config.json", "transformer/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.fp16.json",
    ]


def test_pipeline_patterns_default_and_pickles():
    patterns = pipeline_allow_patterns(MODEL_INDEX, REPO_FILES, skip=["text_encoder"])
    assert "unet/diffusion_pytorch_model.safetensors" in patterns
    assert not [p for p in patterns if p.endswith((".bin", ".msgpack", ".onnx")) or "fp16" in p or p.startswith("text_encoder")]
    assert "transformer/diffusion_pytorch_model.safetensors.index.json" in patterns
    only_bin = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_flax_model.msgpack"]
    index = {"unet": ["diffusers", "UNet3DConditionModel"]}
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        pipeline_allow_patterns(index, only_bin)
    assert pipeline_allow_patterns(index, only_bin, allow_pickle=True) == [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin"]
    with pytest.raises(CheckpointNotFoundError, match="variant='fp8'"):
        pipeline_allow_patterns(MODEL_INDEX, REPO_FILES, variant="fp8")


# ---------------------------------------------------------------- memory: one copy of the weights
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak-RSS counter")
def test_peak_memory_is_one_copy(tmp_path):
    # an 88 MiB checkpoint written directly (no big model needed here); measured in a fresh process
    hidden, cin = 2048, 1024
    sd = {"scale": torch.ones(1), "conv.weight": torch.zeros(hidden, cin, 3, 3), "conv.bias": torch.zeros(hidden),
          "norm.weight": torch.ones(hidden), "norm.bias": torch.zeros(hidden), "proj.weight": torch.zeros(hidden, hidden),
          "proj.bias": torch.zeros(hidden), "steps": torch.arange(4)}
    save_state_dict(sd, tmp_path / "big")
    (tmp_path / "big" / "config.json").write_text(json.dumps({"_class_name": "TinyNet", "in_channels": cin, "hidden": hidden}))
    TinyNet().save_pretrained(tmp_path / "small")
    script = textwrap.dedent(f"""
        import torch
        from dataclasses import dataclass
        from torch import nn
        from vidiff.configuration import Config
        from vidiff.models.modeling import ModelMixin
        {_model_source()}
        def hwm():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        TinyNet.from_pretrained({str(tmp_path / "small")!r})  # first call imports modules lazily (torch: sympy)
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter
        base = hwm()
        m = TinyNet.from_pretrained({str(tmp_path / "big")!r})
        total = sum(float(p.detach().sum()) for p in m.parameters())  # touch every weight
        peak = hwm() - base
        print(peak * 1024 / sum(p.numel() * p.element_size() for p in m.parameters()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert ratio < 1.3, f"peak memory during from_pretrained was {ratio:.2f}x the weights"


def _model_source() -> str:
    import inspect

    parts = [_build, _forward, TinyConfig, TinyNet]
    return textwrap.indent("\n".join(textwrap.dedent(inspect.getsource(p)) for p in parts), " " * 8).lstrip()


# ---------------------------------------------------------------- the real AutoencoderKL, once it exists
VAE_CONFIGS = [
    dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4, layers_per_block=1),
    dict(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3, in_channels=1,
         up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4, latent_channels=2, layers_per_block=1,
         use_quant_conv=False, use_post_quant_conv=False),
]


@pytest.mark.parametrize("cfg", VAE_CONFIGS, ids=["two_level", "three_level"])
def test_autoencoder_kl_folder_roundtrip(tmp_path, cfg):
    vidiff_vae = pytest.importorskip("vidiff.models.autoencoder_kl")
    from diffusers import AutoencoderKL as RefVAE

    torch.manual_seed(0)
    ref = RefVAE(**cfg).eval()
    ref.save_pretrained(tmp_path / "ref", max_shard_size=20_000)
    ours = vidiff_vae.AutoencoderKL.from_pretrained(tmp_path / "ref")
    _assert_same_weights(ours, ref)
    x = torch.randn(1, cfg.get("in_channels", 3), 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(x).sample - ref(x).sample).abs().max().item() < 1e-5
    ours.save_pretrained(tmp_path / "ours")
    _assert_same_weights(RefVAE.from_pretrained(tmp_path / "ours"), ref)


def test_autoencoder_kl_old_attention_names(tmp_path):
    vidiff_vae = pytest.importorskip("vidiff.models.autoencoder_kl")
    from diffusers import AutoencoderKL as RefVAE

    torch.manual_seed(0)
    ref = RefVAE(**VAE_CONFIGS[0]).eval()
    ref.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = load_file(path)
    renamed = {}
    for k, v in sd.items():
        for new, legacy in old.items():
            if ".attentions.0." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{legacy}.")
        renamed[k] = v
    assert any(".query." in k for k in renamed)
    save_file(renamed, path)
    _assert_same_weights(vidiff_vae.AutoencoderKL.from_pretrained(tmp_path), ref)


# ---------------------------------------------------------------------------------------------- meta build and assignment
def test_meta_build_skips_initialisers_only_for_meta_tensors():
    """build_on_meta short-circuits torch.nn.init on meta tensors; a CPU module built meanwhile (another thread, say)
    is still initialised, and the initialisers are restored afterwards."""
    from vidiff.loading.checkpoint import _meta_init_skipped, build_on_meta

    before = nn.init.kaiming_uniform_
    with _meta_init_skipped():
        assert nn.init.kaiming_uniform_ is not before
        torch.manual_seed(0)
        cpu = nn.Linear(8, 8)
    torch.manual_seed(0)
    assert torch.equal(cpu.weight, nn.Linear(8, 8).weight)  # same draws as without the patch
    assert nn.init.kaiming_uniform_ is before
    meta = build_on_meta(nn.Sequential, nn.Linear(4, 4), nn.GroupNorm(2, 4))  # args built outside: CPU
    model = build_on_meta(nn.Linear, 4, 4)
    assert model.weight.is_meta and model.weight.shape == (4, 4) and not meta[0].weight.is_meta


def test_assign_state_dict_matches_load_state_dict_and_respects_load_hooks():
    from vidiff.loading.checkpoint import assign_state_dict, build_on_meta

    src = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    ours = build_on_meta(nn.Sequential, *[build_on_meta(nn.Linear, 3, 4), build_on_meta(nn.BatchNorm1d, 4)])
    ours[0].weight.requires_grad_(False)
    assign_state_dict(ours, state)
    assert isinstance(ours[0].weight, nn.Parameter) and not ours[0].weight.requires_grad and ours[0].bias.requires_grad
    assert ours[1].running_mean is state["1.running_mean"]  # buffers are set as they are, no copy
    assert ours[0].weight.data_ptr() == state["0.weight"].data_ptr()
    seen = []
    hooked = build_on_meta(nn.Linear, 3, 4)
    hooked._register_load_state_dict_pre_hook(lambda *a, **k: seen.append(1))
    assign_state_dict(hooked, {"weight": state["0.weight"], "bias": state["0.bias"]})  # through load_state_dict
    assert seen and torch.equal(hooked.weight, state["0.weight"])


# ---------------------------------------------------------------------------------------------- CLIP encoders
def _clip_folders(tmp_path):
    from tiny import clip_text_encoder, clip_vision_encoder

    folders = {}
    for name, model in (("text", clip_text_encoder()), ("vision", clip_vision_encoder())):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)  # not the init values: loading must carry them
        model.save_pretrained(tmp_path / name)
        folders[name] = (type(model), tmp_path / name)
    return folders


def test_clip_encoders_load_as_transformers_loads_them(tmp_path):
    """loading.clip.load_clip returns what transformers' from_pretrained returns: same class, config, tensors and
    buffers (position_ids), eval mode, trainable parameters, identical outputs."""
    from vidiff.loading.clip import load_clip

    for name, (cls, folder) in _clip_folders(tmp_path).items():
        fast, ref = load_clip(cls, folder), cls.from_pretrained(folder)
        assert type(fast) is type(ref) and not fast.training
        assert fast.config.to_dict() == ref.config.to_dict()
        a, b = fast.state_dict(), ref.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert dict(fast.named_buffers()).keys() == dict(ref.named_buffers()).keys()
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(fast.named_buffers(), ref.named_buffers()))
        assert all(p.requires_grad for p in fast.parameters())
        if name == "text":
            inputs = dict(input_ids=torch.randint(0, ref.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0)))
        else:
            inputs = dict(pixel_values=torch.randn(1, 3, ref.config.image_size, ref.config.image_size, generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            out_a, out_b = fast(**inputs), ref(**inputs)
        for key in out_b.keys():
            if torch.is_tensor(out_b[key]):
                assert torch.equal(out_a[key], out_b[key]), key


def test_clip_fast_path_leaves_other_cases_to_transformers(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModel

    from vidiff.loading.clip import load_clip

    cls, folder = _clip_folders(tmp_path)["text"]
    assert load_clip(cls, folder) is not None
    assert load_clip(cls, folder, torch_dtype=torch.bfloat16) is None  # dtype requests: transformers
    assert load_clip(cls, folder, variant="fp16") is None
    assert load_clip(type("CLIPTextModel", (torch.nn.Module,), {}), folder) is None  # not transformers' class
    state = load_file(folder / "model.safetensors")
    save_file({**state, "extra.weight": torch.zeros(1)}, folder / "model.safetensors")
    assert load_clip(cls, folder) is None  # keys differ from the model's
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, folder / "model.safetensors")
    assert load_clip(cls, folder) is None  # float16 file: transformers decides the dtype
    save_file(state, folder / "model.safetensors")
    (folder / "model.safetensors.index.json").write_text("{}")
    assert load_clip(CLIPTextModel, folder) is None  # shards


def test_pipelines_load_their_clip_encoders_without_transformers_loader(tmp_path, monkeypatch):
    """A diffusers folder's text encoder (T2V) and image encoder (SVD) come from the fast path: their
    from_pretrained is never called; the frames are checked against the reference in the pipeline tests."""
    import transformers

    import vidiff
    from tiny import ref_svd_pipeline, ref_t2v_pipeline, save_ref_pipeline

    t2v = save_ref_pipeline(ref_t2v_pipeline(tmp_path), tmp_path / "t2v")
    svd = save_ref_pipeline(ref_svd_pipeline(), tmp_path / "svd")

    def refuse(*a, **k):
        raise AssertionError("transformers' from_pretrained was called")

    for name in ("CLIPTextModel", "CLIPVisionModelWithProjection"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", classmethod(refuse))
    assert isinstance(vidiff.TextToVideoSDPipeline.from_pretrained(t2v).text_encoder, transformers.CLIPTextModel)
    assert isinstance(vidiff.StableVideoDiffusionPipeline.from_pretrained(svd).image_encoder, transformers.CLIPVisionModelWithProjection)


def test_load_into_model_takes_supplied_tensors_beside_the_files(tmp_path):
    """Tensors from elsewhere (AnimateDiff's motion modules) are checked with the files' keys and copied in with
    the files' dtype rule; a key in both, or in neither, is an error naming it."""
    from vidiff.loading.checkpoint import build_on_meta, load_into_model

    def build():
        return build_on_meta(nn.Sequential, nn.Linear(3, 4), nn.Linear(4, 2))

    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = source.state_dict()
    save_file({"0.weight": state["0.weight"], "0.bias": state["0.bias"], "extra.x": torch.zeros(1)}, tmp_path / "w.safetensors")
    files = [tmp_path / "w.safetensors"]
    supplied = {"1.weight": state["1.weight"], "1.bias": state["1.bias"]}
    for dtype in (None, torch.float16):
        model = build()
        load_into_model(model, files, torch_dtype=dtype, supplied=supplied, ignore_unexpected=[r"^extra\."])
        want = torch.float16 if dtype else torch.float32
        assert all(t.dtype == want and torch.equal(t, state[k].to(want)) for k, t in model.state_dict().items())
        assert model[1].weight.data_ptr() != supplied["1.weight"].data_ptr() and isinstance(model[1].weight, nn.Parameter)
    with pytest.raises(CheckpointError, match="extra.x"):
        load_into_model(build(), files, supplied=supplied)
    with pytest.raises(CheckpointError, match=r"1\.bias"):
        load_into_model(build(), files, supplied={"1.weight": state["1.weight"]}, ignore_unexpected=[r"^extra\."])
    with pytest.raises(CheckpointError, match=r"0\.bias.*both"):
        load_into_model(build(), files, supplied={**supplied, "0.bias": state["0.bias"]}, ignore_unexpected=[r"^extra\."])
