"""The shipped default model (src/vidiff/default_model) and the code that trains and measures it (train/)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import vidiff

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the train/ scripts live beside src/, not in the package

from train import data, evaluate, tokenizer  # noqa: E402

MODEL = Path(vidiff.__file__).parent / "default_model"
warnings.filterwarnings("ignore", category=FutureWarning)


# ------------------------------------------------------------------------------------------------ data
def test_clips_reproducible_from_seed():
    a, b, c = data.sample_specs(20, seed=3), data.sample_specs(20, seed=3), data.sample_specs(20, seed=4)
    assert a == b and a != c
    np.testing.assert_array_equal(data.render(a, 32, 8), data.render(b, 32, 8))
    clips = data.render(a, 32, 8)
    assert clips.shape == (20, 8, 32, 32, 3) and clips.dtype == np.float32
    assert clips.min() >= 0.0 and clips.max() <= 1.0


def test_held_out_combinations_never_in_training():
    train, held = set(data.combos("train")), set(data.combos("held_out"))
    assert held and not train & held
    assert train | held == set(data.ALL_COMBOS)
    # every colour, shape and motion of the held-out split is still seen in training (in other combinations)
    for i, values in enumerate((data.COLOURS, data.SHAPES, data.MOTIONS)):
        assert {c[i] for c in train} == set(values)
    assert all(s.combo in train for s in data.sample_specs(500, seed=0, split="train"))
    assert all(s.combo in held for s in data.sample_specs(100, seed=0, split="held_out"))
    assert not set(data.eval_prompts("held_out")) & {s.caption for s in data.sample_specs(2000, seed=0)}


def test_captions_round_trip_and_bad_text_is_refused():
    for spec in data.sample_specs(50, seed=1):
        want = {"colour": spec.colour, "shape": spec.shape, "motion": spec.motion, "background": spec.background}
        assert data.parse_caption(spec.caption) == want
    assert data.caption("orange", "square", "growing") == "an orange square growing"
    assert data.parse_caption("a red circle moving right")["background"] == "black"
    with pytest.raises(ValueError, match="unknown colour"):
        data.parse_caption("a pink circle moving right")
    with pytest.raises(ValueError, match="not a caption"):
        data.parse_caption("hello world")


def test_motion_is_visible_in_rendered_frames():
    for motion, axis, sign in (("right", 1, 1), ("left", 1, -1), ("down", 0, 1), ("up", 0, -1)):
        spec = next(s for s in data.sample_specs(200, seed=5) if s.motion == motion)
        clip = data.render([spec], 32, 8)[0]
        bg = np.asarray(data.BACKGROUNDS[spec.background])
        centres = [np.argwhere(np.abs(f - bg).sum(-1) > 0.3).mean(0)[axis] for f in clip]
        assert sign * (centres[-1] - centres[0]) > 5  # pixels


def test_detector_reads_ground_truth_clips():
    report = evaluate.check_detector(n=60)
    for split in data.SPLITS:
        for attribute in (*evaluate.ATTRIBUTES, "direction"):
            assert report[split][attribute] == 1.0, (split, attribute, report[split])


# ------------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_is_clip_format_and_one_token_per_word(tmp_path):
    from transformers import CLIPTokenizer

    words = data.vocabulary()
    folder = tokenizer.write_tokenizer(tmp_path / "tok", words)
    assert {p.name for p in folder.iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert vocab[tokenizer.BOS] == len(vocab) - 2 and vocab[tokenizer.EOS] == len(vocab) - 1
    tok = CLIPTokenizer.from_pretrained(folder)
    text = "an orange triangle moving right on a white background"
    ids = tok(text, padding="max_length", max_length=tok.model_max_length).input_ids
    expected = [vocab[tokenizer.BOS]] + [vocab[w + "</w>"] for w in text.split()] + [vocab[tokenizer.EOS]]
    assert ids == expected + [vocab[tokenizer.EOS]] * (tok.model_max_length - len(expected))
    unknown = tok("a pink cat").input_ids  # unknown words fall back to characters, never to an unknown token
    assert unknown[1] == vocab["a</w>"] and len(unknown) > 5 and vocab[tokenizer.EOS] not in unknown[1:-1]


def test_tokenizer_merges_are_deterministic():
    words = data.vocabulary()
    assert tokenizer.learn_merges(words) == tokenizer.learn_merges(list(reversed(words)))


# ------------------------------------------------------------------------------------------------ the shipped model
needs_model = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(), reason="no shipped default model yet")


@needs_model
def test_shipped_folder_is_diffusers_layout_under_20_mb():
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (MODEL / name).is_dir(), name
    for name in ("vae", "unet", "text_encoder"):
        assert list((MODEL / name).glob("*.safetensors")) and not list((MODEL / name).glob("*.bin")), name
    assert (MODEL / "tokenizer" / "vocab.json").is_file() and (MODEL / "tokenizer" / "merges.txt").is_file()
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MiB"
    # provenance: the whole training config, which the CLI reads its default clip length from
    import dataclasses

    from train.train import TrainConfig

    trained = json.loads((MODEL / "train_config.json").read_text())
    assert set(trained) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.fixture(scope="module")
def ours():
    pipe = vidiff.DiffusionPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@needs_model
def test_shipped_model_makes_a_video_quickly(ours):
    import time

    assert type(ours).__name__ == "TextToVideoSDPipeline"
    start = time.perf_counter()
    frames = ours("a red circle moving right", num_frames=8, num_inference_steps=10,
                  generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert time.perf_counter() - start < 20
    size = ours.unet.config.sample_size * ours.vae_scale_factor
    assert frames.shape == (1, 8, size, size, 3)
    assert np.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1


@needs_model
def test_reference_loads_the_shipped_folder_and_agrees(ours):
    import diffusers

    ref = diffusers.TextToVideoSDPipeline.from_pretrained(MODEL)
    ref.set_progress_bar_config(disable=True)
    for name in ("unet", "vae"):
        r, o = getattr(ref, name).state_dict(), getattr(ours, name).state_dict()
        assert set(r) == set(o) and all(torch.equal(r[k], o[k]) for k in r), name
    kwargs = dict(num_frames=8, num_inference_steps=4, output_type="np")
    want = ref("a blue square moving up on a white background", generator=torch.Generator().manual_seed(1), **kwargs).frames
    got = ours("a blue square moving up on a white background", generator=torch.Generator().manual_seed(1), **kwargs).frames
    assert np.abs(np.asarray(want) - got).max() < 1e-4


@needs_model
def test_shipped_tokenizer_knows_every_caption_word(ours):
    vocab = json.loads((MODEL / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    for word in data.vocabulary():
        assert ours.tokenizer(word).input_ids[1:-1] == [vocab[word + "</w>"]], word


# ------------------------------------------------------------------------------------------------ the main job
@needs_model
def test_main_job_without_model_writes_a_prompt_following_mp4_offline(tmp_path, monkeypatch):
    """The README's main-job command: no --model, no network, an mp4 of a red circle moving right, quickly."""
    import time

    from vidiff.cli import default_model_frames, main
    from vidiff.media import load_video

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "circle.mp4"
    start = time.perf_counter()
    assert main(["generate", "--prompt", "a red circle moving right", "--output", str(out), "--quiet"]) == 0
    assert time.perf_counter() - start < 30
    frames = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in load_video(str(out))])
    assert frames.shape[0] == default_model_frames() == 8
    got = evaluate.detect(frames)
    assert (got["colour"], got["motion"]) == ("red", "right"), got


def test_main_job_without_a_built_in_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from vidiff import cli

    monkeypatch.setattr(cli, "DEFAULT_MODEL", tmp_path / "missing")
    assert cli.main(["generate", "--prompt", "a red circle moving right", "-o", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert "no built-in model" in err and "--model" in err


def test_built_in_model_defaults_to_guidance_3_and_its_clip_length():
    import argparse

    from vidiff import cli

    if not (MODEL / "model_index.json").is_file():
        pytest.skip("no shipped default model yet")
    args = argparse.Namespace(model=None, frames=None, guidance=None)
    cli._use_default_model(args)
    assert (args.model, args.frames, args.guidance) == (str(MODEL), 8, cli.DEFAULT_MODEL_GUIDANCE) and args.guidance == 3.0
    args = argparse.Namespace(model=None, frames=5, guidance=7.5)
    cli._use_default_model(args)
    assert (args.frames, args.guidance) == (5, 7.5)  # what the user asked for wins


def test_snr_shift_divides_the_cosine_schedules_snr():
    from train.train import build_scheduler

    plain, shifted = build_scheduler(14.0), build_scheduler(14.0, snr_shift=4.0)
    snr = lambda s: s.alphas_cumprod.double() / (1 - s.alphas_cumprod.double())  # noqa: E731
    t = torch.arange(0, 990)
    # (alphas_cumprod are float32: 1 - alpha_bar near t=0 carries ~1e-5 relative rounding)
    torch.testing.assert_close(snr(shifted)[t], snr(plain)[t] / 16, rtol=1e-4, atol=0)
    assert shifted.config.trained_betas is not None and plain.config.trained_betas is None


@needs_model
def test_shipped_scheduler_is_the_training_schedule():
    from train.train import build_scheduler

    trained = json.loads((MODEL / "train_config.json").read_text())
    ours = vidiff.DDIMScheduler.from_pretrained(MODEL, subfolder="scheduler")
    want = build_scheduler(ours.config.clip_sample_range, trained["snr_shift"])
    torch.testing.assert_close(ours.alphas_cumprod, want.alphas_cumprod)
