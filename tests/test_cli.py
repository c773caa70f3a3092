"""The `vidiff` command: generate and upscale write playable files; bad input is one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from tiny import ref_t2v_pipeline
from vidiff.cli import main
from vidiff.media import load_video

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    ref_t2v_pipeline(tmp).save_pretrained(tmp / "t2v")
    return tmp / "t2v"


SMALL = ["--frames", "3", "--steps", "2", "--height", "16", "--width", "24", "--quiet"]


def test_generate_writes_mp4_and_prints_path(folder, tmp_path, capsys):
    out = tmp_path / "a.mp4"
    assert main(["generate", "--model", str(folder), "--prompt", "a red circle", *SMALL, "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    frames = load_video(str(out))
    assert len(frames) == 3 and frames[0].size == (24, 16)


def test_generate_same_seed_same_video_and_gif(folder, tmp_path):
    paths = [tmp_path / "a.gif", tmp_path / "b.gif"]
    for p in paths:
        assert main(["generate", "--model", str(folder), "--prompt", "x", "--seed", "7", *SMALL, "-o", str(p)]) == 0
    a, b = (np.stack([np.asarray(f) for f in load_video(str(p))]) for p in paths)
    assert a.shape == (3, 16, 24, 3) and np.array_equal(a, b)


def test_upscale_runs_video_to_video(folder, tmp_path):
    src = tmp_path / "in.mp4"
    assert main(["generate", "--model", str(folder), "--prompt", "x", *SMALL, "-o", str(src)]) == 0
    out = tmp_path / "up.mp4"
    code = main(["upscale", "--model", str(folder), "--video", str(src), "--prompt", "y", "--steps", "2", "--strength", "0.5",
                 "--size", "32x16", "--quiet", "-o", str(out)])
    assert code == 0
    frames = load_video(str(out))
    assert len(frames) == 3 and frames[0].size == (32, 16)


def test_stream_weights_gives_the_same_video(folder, tmp_path, monkeypatch):
    from vidiff.pipelines.base import DiffusionPipeline

    enabled = []
    real = DiffusionPipeline.enable_weight_streaming
    monkeypatch.setattr(DiffusionPipeline, "enable_weight_streaming", lambda self: (enabled.append(self), real(self))[1])
    paths = [tmp_path / "a.gif", tmp_path / "b.gif"]
    for p, extra in zip(paths, ([], ["--stream-weights"])):
        assert main(["generate", "--model", str(folder), "--prompt", "x", *SMALL, "-o", str(p), *extra]) == 0
    assert len(enabled) == 1 and enabled[0]._streaming
    a, b = (np.stack([np.asarray(f) for f in load_video(str(p))]) for p in paths)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("args,needle", [
    (["--stream-weights", "--device", "cuda"], "for CPU runs"),
    (["--height", "17"], "multiple of"),
    (["--guidance", "nan"], "finite"),
    (["--output", "x.avi"], ".mp4 or .gif"),
])
def test_bad_input_is_one_line_and_exit_2(folder, tmp_path, capsys, args, needle):
    argv = ["generate", "--model", str(folder), "--prompt", "x", *SMALL, "-o", str(tmp_path / "o.mp4"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidiff: error:") and needle in err and "\n" not in err
    assert not (tmp_path / "o.mp4").exists()


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x", "-o", str(tmp_path / "o.mp4")]) != 0
    assert "nope" in capsys.readouterr().err


def test_upscale_missing_video(folder, tmp_path, capsys):
    assert main(["upscale", "--model", str(folder), "--video", str(tmp_path / "none.mp4"), "--prompt", "y"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "vidiff.cli", "generate", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--prompt" in out and "--frames" in out


def test_generate_picks_i2vgen_xl_from_the_checkpoint(tmp_path, capsys):
    from PIL import Image

    from tiny import ref_i2vgen_pipeline

    ref_i2vgen_pipeline(tmp_path).save_pretrained(tmp_path / "i2v")
    image = tmp_path / "first.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8")).save(image)
    out = tmp_path / "i2v.gif"
    argv = ["generate", "--model", str(tmp_path / "i2v"), "--image", str(image), "--prompt", "papers flying",
            "--frames", "2", "--steps", "2", "--height", "16", "--width", "32", "--quiet", "-o", str(out)]
    assert main(argv) == 0
    frames = load_video(str(out))
    assert len(frames) == 2 and frames[0].size == (32, 16)
    assert main(argv[:5] + argv[7:]) == 2  # no --prompt: a one-line error
    assert "--prompt" in capsys.readouterr().err
