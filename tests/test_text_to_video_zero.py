"""TextToVideoZeroPipeline and CrossFrameAttnProcessor(2_0): same seed -> the reference's frames; clear errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import vidiff
from tiny import ref_t2v_zero_pipeline, save_ref_pipeline

warnings.filterwarnings("ignore")
TOL = 1e-4
REF_MODULE = "diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2vz")
    return save_ref_pipeline(ref_t2v_zero_pipeline(tmp), tmp / "pipe")


@pytest.fixture(scope="module")
def ref(folder):
    import diffusers

    pipe = diffusers.TextToVideoZeroPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(folder):
    pipe = vidiff.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _swap(ref, ours, name: str, **config):
    import diffusers

    ref.scheduler = getattr(diffusers, name).from_config(ref.scheduler.config, **config)
    ours.scheduler = getattr(vidiff, name).from_config(ours.scheduler.config, **config)


def test_guide_import_path_and_loading(ours):
    from vidiff.pipelines.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor, CrossFrameAttnProcessor2_0, TextToVideoZeroPipeline)

    assert type(ours) is TextToVideoZeroPipeline is vidiff.TextToVideoZeroPipeline
    assert CrossFrameAttnProcessor is vidiff.CrossFrameAttnProcessor
    assert CrossFrameAttnProcessor2_0 is vidiff.CrossFrameAttnProcessor2_0
    assert ours.safety_checker is None and ours.feature_extractor is None


def test_folder_naming_a_safety_checker_loads_as_the_guide_writes_it(folder, tmp_path):
    import json
    import shutil

    copy = shutil.copytree(folder, tmp_path / "sd")
    index = json.loads((copy / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (copy / "model_index.json").write_text(json.dumps(index))
    (copy / "feature_extractor").mkdir()
    (copy / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32, "size": 32}))
    pipe = vidiff.TextToVideoZeroPipeline.from_pretrained(copy)  # no safety_checker=None needed
    assert pipe.safety_checker is None and pipe.unet is not None


CONFIGS = [
    dict(video_length=2, height=16, width=16, steps=4, t0=1, t1=2, mx=12, my=12, guidance_scale=7.5),
    dict(video_length=3, height=16, width=24, steps=5, t0=0, t1=4, mx=3, my=-5, guidance_scale=5.0, negative_prompt="blurry"),
    dict(video_length=5, height=24, width=16, steps=3, t0=1, t1=2, mx=0, my=20, guidance_scale=2.0, eta=0.6,
         frame_ids=[0, 4, 5, 6, 7]),
    dict(video_length=3, height=16, width=16, steps=4, t0=0, t1=1, mx=40, my=8, guidance_scale=7.5, scheduler="DDPMScheduler"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"f{c['video_length']}-{c['height']}x{c['width']}-t{c['t0']}{c['t1']}-g{c['guidance_scale']}")
def test_matches_reference(ref, ours, cfg):
    _swap(ref, ours, cfg.get("scheduler", "DDIMScheduler"))
    kw = dict(prompt="a red circle", video_length=cfg["video_length"], height=cfg["height"], width=cfg["width"],
              num_inference_steps=cfg["steps"], t0=cfg["t0"], t1=cfg["t1"], motion_field_strength_x=cfg["mx"],
              motion_field_strength_y=cfg["my"], guidance_scale=cfg["guidance_scale"], eta=cfg.get("eta", 0.0),
              negative_prompt=cfg.get("negative_prompt"), frame_ids=cfg.get("frame_ids"))
    expected = ref(**kw, generator=_gen(3)).images
    got = ours(**kw, generator=_gen(3)).images
    assert isinstance(got, np.ndarray) and got.shape == expected.shape == (cfg["video_length"], cfg["height"], cfg["width"], 3)
    assert np.abs(got - expected).max() < TOL
    assert ours.unet.attn_processors.keys() == ref.unet.attn_processors.keys()
    assert not any(isinstance(p, vidiff.CrossFrameAttnProcessor2_0) for p in ours.unet.attn_processors.values())


def test_all_frames_stage_shares_one_text_context_per_copy(ours):
    """The UNet calls that denoise every frame get [uncond, cond] once (2 rows for 2 x frames samples), not a copy
    per frame: the text's keys and values are projected once per copy (frames match the reference: above)."""
    calls = []
    hook = ours.unet.register_forward_pre_hook(
        lambda m, a, kw: calls.append((a[0].shape[0], kw["encoder_hidden_states"].shape[0])), with_kwargs=True)
    try:
        ours(prompt="a cat", video_length=3, height=16, width=16, num_inference_steps=3, t0=0, t1=1, generator=_gen(0))
    finally:
        hook.remove()
    assert calls[0] == (2, 2) and calls[-1] == (6, 2)


def test_guidance_off_matches_reference_algorithm(ref, ours, monkeypatch):
    """The reference cannot run guidance_scale <= 1 (it concatenates None); its algorithm with the missing pieces
    filled in (no negative embeddings, cross-frame groups of one batch) is the oracle."""
    import importlib

    ref_mod = importlib.import_module(REF_MODULE)
    _swap(ref, ours, "DDIMScheduler")
    monkeypatch.setattr(ref_mod, "CrossFrameAttnProcessor2_0", lambda batch_size: ref_mod.CrossFrameAttnProcessor(batch_size=1))
    encode = ref.encode_prompt
    monkeypatch.setattr(ref, "encode_prompt", lambda *a, **k: (lambda p, n: (p, p[:0]))(*encode(*a, **k)))
    kw = dict(prompt="a cat", video_length=3, num_inference_steps=4, t0=1, t1=3, guidance_scale=1.0)
    expected = ref(**kw, generator=_gen(1)).images
    got = ours(**kw, generator=_gen(1)).images
    assert np.abs(got - expected).max() < TOL


def test_latents_output_types_and_tuple(ref, ours):
    _swap(ref, ours, "DDIMScheduler")
    latents = torch.randn(1, 4, 8, 8, generator=_gen(5))
    kw = dict(prompt="x", video_length=2, num_inference_steps=3, t0=0, t1=2, latents=latents)
    expected = ref(**kw, output_type="latent", generator=_gen(2)).images
    got = ours(**kw, output_type="latent", generator=_gen(2)).images
    assert got.shape == expected.shape == (2, 4, 8, 8) and (got - expected).abs().max() < TOL
    frames = ours(**kw, generator=_gen(2)).images
    pt = ours(**kw, output_type="pt", generator=_gen(2)).images
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, 16, 16)
    assert np.abs(pt.permute(0, 2, 3, 1).numpy() - frames).max() < 1e-6
    pil = ours(**kw, output_type="pil", generator=_gen(2)).images
    assert len(pil) == 2 and pil[0].size == (16, 16)
    images, nsfw = ours(**kw, return_dict=False, generator=_gen(2))
    assert images.shape == (2, 16, 16, 3) and nsfw is None and np.abs(images - frames).max() == 0
    one = ours(prompt="x", video_length=1, num_inference_steps=3, t0=0, t1=2, latents=latents, generator=_gen(2)).images
    assert one.shape == (1, 16, 16, 3) and np.abs(one[0] - frames[0]).max() < 1e-5


def test_callbacks_interrupt_and_offload(ref, ours):
    _swap(ref, ours, "DDIMScheduler")
    seen, legacy = [], []

    def on_end(pipe, i, t, kw):
        seen.append((i, int(t), tuple(kw["latents"].shape)))
        return {}

    ours(prompt="x", video_length=2, num_inference_steps=4, t0=1, t1=2, callback_on_step_end=on_end,
         callback=lambda i, t, lat: legacy.append(i))
    ts = [int(t) for t in ours.scheduler.timesteps]
    # first frame: position 0 (to t1), position 1 (t1 to t0); then all frames from t1: positions 1..3
    assert [s[0] for s in seen] == [0, 1, 1, 2, 3] and [s[1] for s in seen] == [ts[i] for i in (0, 1, 1, 2, 3)]
    assert [s[2][0] for s in seen] == [1, 1, 2, 2, 2] and legacy == [0, 0, 0, 1, 2]

    def stop(pipe, i, t, kw):
        pipe._interrupt = True
        return {}

    out = ours(prompt="x", video_length=3, num_inference_steps=4, t0=1, t1=2, callback_on_step_end=stop, output_type="latent")
    assert out.images.shape[0] == 1  # stopped while denoising the first frame
    base = ours(prompt="x", video_length=2, num_inference_steps=3, t0=0, t1=1, generator=_gen(0)).images
    ours.enable_model_cpu_offload()  # no accelerator here: a notice, and the same frames
    again = ours(prompt="x", video_length=2, num_inference_steps=3, t0=0, t1=1, generator=_gen(0)).images
    assert np.abs(base - again).max() == 0


BAD = [
    (dict(t0=2, t1=2), "t0 < t1"),
    (dict(t0=3, t1=1), "t0 < t1"),
    (dict(t0=1, t1=4), r"num_inference_steps - 1 = 3"),
    (dict(t0=-1, t1=2), "0 <= t0"),
    (dict(video_length=0), "video_length"),
    (dict(frame_ids=[0, 1, 2]), "frame_ids has 3"),
    (dict(prompt=["a", "b"]), "one video per call"),
    (dict(num_videos_per_prompt=2), "num_videos_per_prompt"),
    (dict(output_type="mp4"), "output_type"),
    (dict(height=15), "height"),
    (dict(latents=torch.zeros(2, 4, 8, 8)), r"\(1, 4, 8, 8\)"),
    (dict(motion_field_strength_x=float("nan")), "motion_field_strength_x"),
    (dict(generator=[_gen(0), _gen(1)]), "one generator"),
    (dict(callback_steps=0), "callback_steps"),
]


@pytest.mark.parametrize("bad,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_fails_before_heavy_work(ours, monkeypatch, bad, match):
    def boom(*a, **k):
        raise AssertionError("heavy work ran before the input check")

    monkeypatch.setattr(ours.unet, "forward", boom)
    monkeypatch.setattr(ours.text_encoder, "forward", boom)
    kw = dict(prompt="x", video_length=2, num_inference_steps=4, t0=1, t1=2)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        ours(**kw)


def test_scheduler_without_alphas_is_refused(ours, monkeypatch):
    monkeypatch.setattr(ours, "scheduler", vidiff.EulerDiscreteScheduler.from_config(ours.scheduler.config))
    monkeypatch.delattr(ours.scheduler, "alphas")
    with pytest.raises(ValueError, match="DDIMScheduler"):
        ours(prompt="x", video_length=2, num_inference_steps=4, t0=1, t1=2)


# ---------------------------------------------------------------------------------------------- processors
def _attn_pair(cross_dim=None, seed=0):
    from diffusers.models.attention_processor import Attention as RefAttention

    from vidiff.layers.attention import Attention

    torch.manual_seed(seed)
    ref = RefAttention(query_dim=16, cross_attention_dim=cross_dim, heads=2, dim_head=8).eval()
    ours = Attention(query_dim=16, cross_attention_dim=cross_dim, heads=2, dim_head=8).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("variant", ["CrossFrameAttnProcessor", "CrossFrameAttnProcessor2_0"])
@pytest.mark.parametrize("batch_size,frames", [(2, 3), (3, 2), (1, 5), (2, 1)])
def test_processor_matches_reference(variant, batch_size, frames):
    import importlib

    ref_cls = getattr(importlib.import_module(REF_MODULE), variant)
    ours_cls = getattr(vidiff, variant)
    x = torch.randn(batch_size * frames, 6, 16, generator=_gen(batch_size))
    ctx = torch.randn(batch_size * frames, 5, 12, generator=_gen(9))
    ref, ours = _attn_pair()
    ref.set_processor(ref_cls(batch_size=batch_size))
    ours.set_processor(ours_cls(batch_size=batch_size))
    key_rows = []
    ours.to_k.register_forward_pre_hook(lambda m, a: key_rows.append(a[0].shape[0]))
    with torch.no_grad():
        got, expected = ours(x), ref(x)
    assert (got - expected).abs().max() < 1e-6
    # the SDPA variant projects keys for the first frames only (the explicit one, like the reference, for all)
    assert key_rows == [batch_size if variant.endswith("2_0") else batch_size * frames]
    if frames > 1:  # each frame really reads its group's first frame
        plain = _attn_pair()[1](x)
        assert (got - plain).abs().max() > 1e-3
    ref, ours = _attn_pair(cross_dim=12)
    ref.set_processor(ref_cls(batch_size=batch_size))
    ours.set_processor(ours_cls(batch_size=batch_size))
    with torch.no_grad():
        assert (ours(x, ctx) - ref(x, ctx)).abs().max() < 1e-6  # cross-attention untouched
        # one context per copy of the video, shared by its frames (as the pipeline passes it): the reference's
        # output for that context repeated per frame; the SDPA variant projects its keys once per copy
        shared = ctx[::frames]
        key_rows.clear()
        ours.to_k.register_forward_pre_hook(lambda m, a: key_rows.append(a[0].shape[0]))
        expected = ref(x, shared.repeat_interleave(frames, dim=0))
        assert (ours(x, shared) - expected).abs().max() < 1e-6
    assert key_rows == [batch_size if variant.endswith("2_0") else batch_size * frames]


def test_processor_on_unet_matches_reference(ref, ours):
    import importlib

    ref_proc = importlib.import_module(REF_MODULE).CrossFrameAttnProcessor
    before = ours.unet.attn_processors
    ref_before = ref.unet.attn_processors
    try:
        ref.unet.set_attn_processor(ref_proc(batch_size=2))
        ours.unet.set_attn_processor(vidiff.CrossFrameAttnProcessor(batch_size=2))
        x = torch.randn(6, 4, 8, 8, generator=_gen(2))
        ctx = torch.randn(6, 7, 32, generator=_gen(3))
        with torch.no_grad():
            got = ours.unet(x, 10, encoder_hidden_states=ctx).sample
            expected = ref.unet(x, 10, encoder_hidden_states=ctx).sample
        assert (got - expected).abs().max() < 1e-5
    finally:
        ours.unet.set_attn_processor(before)
        ref.unet.set_attn_processor(ref_before)


def test_processor_refuses_a_batch_that_is_not_groups_of_frames():
    _, attn = _attn_pair()
    attn.set_processor(vidiff.CrossFrameAttnProcessor2_0(batch_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        attn(torch.randn(5, 6, 16))
    with pytest.raises(ValueError, match="positive integer"):
        vidiff.CrossFrameAttnProcessor(batch_size=0)
