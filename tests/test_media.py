"""vidiff.media: frame conversion, H.264 / GIF export and reading back, load_image modes, URLs, errors.

All offline: videos are written to tmp_path, URLs are served by a local http.server thread on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch

from vidiff.media import (
    MediaError,
    MediaFileNotFoundError,
    VideoFrames,
    export_to_gif,
    export_to_video,
    frames_to_tensor,
    frames_to_uint8,
    load_image,
    load_video,
    tensor_to_frames,
    to_pil_frames,
)
from vidiff.media import export as export_module

RED, BLUE, GREEN, YELLOW = (230, 30, 30), (30, 60, 220), (40, 200, 60), (240, 220, 40)
H264_TOL = 8  # max abs error on flat colour interiors at the default quality (crf 25), yuv420p


def quadrant_frames(frames: int = 6, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (F, H, W, 3): four flat coloured quadrants, plus a bright bar whose row moves with the frame index."""
    video = np.empty((frames, height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    video[:, :h2, :w2], video[:, :h2, w2:], video[:, h2:, :w2], video[:, h2:, w2:] = RED, BLUE, GREEN, YELLOW
    return video


def centre(frame, y: int, x: int) -> np.ndarray:
    return np.asarray(frame)[y, x].astype(int)


def assert_quadrants(frame, height: int, width: int, tol: int) -> None:
    for (y, x), colour in zip([(1, 1), (1, 3), (3, 1), (3, 3)], [RED, BLUE, GREEN, YELLOW]):
        got = centre(frame, y * height // 4, x * width // 4)
        assert np.abs(got - colour).max() <= tol, (got, colour)


def as_float(video: np.ndarray) -> np.ndarray:
    return video.astype(np.float32) / 255


# Every frames form an exporter accepts, built from the same uint8 quadrant video.
INPUT_FORMS = {
    "pil_list": lambda v: [PIL.Image.fromarray(f) for f in v],
    "list_of_float_hwc": lambda v: list(as_float(v)),
    "np_float_fhwc": as_float,
    "np_uint8_fhwc": lambda v: v,
    "torch_fchw": lambda v: torch.from_numpy(as_float(v)).permute(0, 3, 1, 2),
    "torch_fhwc": lambda v: torch.from_numpy(as_float(v)),
    "torch_half_fchw": lambda v: torch.from_numpy(as_float(v)).permute(0, 3, 1, 2).half(),
    "np_batched_output_type_np": lambda v: as_float(v)[None],
    "torch_batched_output_type_pt": lambda v: torch.from_numpy(as_float(v)).permute(0, 3, 1, 2)[None],
    "pil_batched_output_type_pil": lambda v: [[PIL.Image.fromarray(f) for f in v]],
}


# --- frames: one conversion rule -------------------------------------------------------------------------------


def test_clip_then_round_rule():
    pixels = np.array([[[[1.02, -0.02, 0.5], [1.0, 0.0, 0.25]]]], dtype=np.float32)  # (1, 1, 2, 3)
    assert frames_to_uint8(pixels)[0, 0].tolist() == [[255, 0, 128], [255, 0, 64]]
    # diffusers' export_to_video does (x * 255).astype(np.uint8), which wraps around: 1.02 -> 4, -0.02 -> 251 or 0.
    assert np.asarray(to_pil_frames(torch.from_numpy(pixels).permute(0, 3, 1, 2))[0])[0].tolist() == [
        [255, 0, 128],
        [255, 0, 64],
    ]


def test_quantization_matches_diffusers_numpy_to_pil_in_range():
    from diffusers.image_processor import VaeImageProcessor

    video = np.random.default_rng(0).random((3, 8, 10, 3), dtype=np.float32)
    ours = [np.asarray(im) for im in to_pil_frames(video)]
    reference = [np.asarray(im) for im in VaeImageProcessor.numpy_to_pil(video)]
    assert all(np.array_equal(a, b) for a, b in zip(ours, reference))


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_frames_to_tensor_matches_diffusers_preprocessing(value_range):
    from diffusers.image_processor import VaeImageProcessor

    video = quadrant_frames(frames=3, height=16, width=24)
    video[:, 3:9, 5:11] = np.arange(36, dtype=np.uint8).reshape(6, 6, 1) * 7
    pils = [PIL.Image.fromarray(f) for f in video]
    reference = VaeImageProcessor.numpy_to_pt(VaeImageProcessor.pil_to_numpy(pils))
    if value_range == (-1.0, 1.0):
        reference = VaeImageProcessor.normalize(reference)
    for form in (pils, video, torch.from_numpy(video).permute(0, 3, 1, 2)):
        ours = frames_to_tensor(form, value_range=value_range)
        assert ours.shape == (3, 3, 16, 24) and ours.dtype == torch.float32
        assert torch.equal(ours, reference)
    floats = np.random.default_rng(1).random((2, 4, 6, 3), dtype=np.float32)  # float input: not quantized
    assert torch.equal(frames_to_tensor(floats, value_range=(0, 1)), torch.from_numpy(floats).permute(0, 3, 1, 2))


def test_tensor_to_frames_matches_diffusers_postprocess():
    from diffusers.image_processor import VaeImageProcessor

    decoded = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.3  # overshoots [-1, 1]
    reference = VaeImageProcessor(do_normalize=True).postprocess(decoded, output_type="np")
    ours = tensor_to_frames(decoded)
    assert ours.shape == (2, 8, 8, 3) and np.array_equal(ours, reference)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_frames_are_refused_before_writing(tmp_path, bad):
    video = as_float(quadrant_frames(frames=2, height=8, width=8))
    video[1, 2, 3, 0] = bad
    for export, name in ((export_to_video, "a.mp4"), (export_to_gif, "a.gif")):
        with pytest.raises(ValueError, match="NaN or infinite"):
            export(video, str(tmp_path / name))
    assert list(tmp_path.iterdir()) == []


def test_float_pixels_far_outside_unit_range_are_refused():
    with pytest.raises(ValueError, match=r"expected in \[0, 1\].*divide by 255"):
        frames_to_uint8(np.full((1, 4, 4, 3), 200.0, np.float32))
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        frames_to_uint8(np.full((1, 4, 4, 3), -1.0, np.float32))


def test_grey_and_rgba_frames_become_rgb():
    grey = np.full((2, 4, 4, 1), 0.5, np.float32)
    assert frames_to_uint8(grey).shape == (2, 4, 4, 3) and (frames_to_uint8(grey) == 128).all()
    rgba = np.zeros((1, 2, 2, 4), np.uint8)
    rgba[0, 0, 0] = [255, 0, 0, 255]  # opaque red; the rest fully transparent -> white
    out = frames_to_uint8(rgba)[0]
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    assert frames_to_uint8([np.zeros((4, 4), np.uint8)]).shape == (1, 4, 4, 3)  # list of H x W grey frames


@pytest.mark.parametrize(
    "frames, message",
    [
        ([], "empty list"),
        (np.zeros((2, 3, 8, 8, 3), np.float32), "batch of 2 videos"),
        ([np.zeros((3, 8, 8, 3)), np.zeros((3, 8, 8, 3))], "batch of 2 videos"),
        (np.zeros((8, 8, 3), np.float32), r"4-D video.*x\[None\]"),
        ([np.zeros((8, 8, 3)), np.zeros((8, 6, 3))], "frame 0 is .*frame 1 is"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], "mix dtypes"),
        (np.zeros((2, 8, 8, 7), np.float32), "no channel axis"),
        (np.full((1, 2, 2, 3), 300, np.int64), "0..255"),
    ],
)
def test_bad_frames_inputs_explain_themselves(frames, message):
    with pytest.raises(ValueError, match=message):
        frames_to_uint8(frames)


def test_unsupported_frames_type():
    with pytest.raises(TypeError, match="expected PIL images, numpy arrays or a torch tensor"):
        frames_to_uint8("not frames")


# --- export_to_video / load_video round trips -------------------------------------------------------------------


@pytest.mark.parametrize("form", list(INPUT_FORMS))
def test_export_to_video_round_trip_every_input_form(tmp_path, form):
    video = quadrant_frames(frames=5)
    path = export_to_video(INPUT_FORMS[form](video), str(tmp_path / "out.mp4"), fps=12)
    assert path == str(tmp_path / "out.mp4")
    frames = load_video(path)
    assert isinstance(frames, VideoFrames) and len(frames) == 5 and frames.fps == 12
    assert all(f.mode == "RGB" and f.size == (64, 48) for f in frames)
    for frame in frames:
        assert_quadrants(frame, 48, 64, H264_TOL)
    with av.open(path) as container:  # H.264, yuv420p, tagged BT.709 so players use the matrix we encoded with
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert next(container.decode(stream)).colorspace == av.video.reformatter.Colorspace.ITU709


def test_gradient_survives_h264(tmp_path):
    # Smooth colour gradients: red grows left to right, green top to bottom, blue constant.
    video = np.empty((4, 32, 64, 3), np.float32)
    video[..., 0] = np.linspace(0, 1, 64, dtype=np.float32)
    video[..., 1] = np.linspace(0, 1, 32, dtype=np.float32)[:, None]
    video[..., 2] = 0.5
    expected = frames_to_uint8(video).astype(int)
    for quality, mean_tol, max_tol in [(10, 0.6, 6), (5, 2.5, 12)]:  # crf 0: only yuv420p rounding is left
        frames = load_video(export_to_video(video, tmp_path / "ramp.mp4", quality=quality))
        error = np.abs(np.stack([np.asarray(f) for f in frames]).astype(int) - expected)
        assert error.mean() < mean_tol and error.max() <= max_tol, (quality, error.mean(), error.max())


def test_odd_size_is_padded_to_even_by_edge_replication(tmp_path):
    # 33 x 47 frames: the video is 34 x 48; the extra row and column repeat the last row and column.
    video = np.empty((3, 33, 47, 3), np.uint8)
    video[:] = RED
    video[:, :, 31:] = BLUE  # the right 16 columns (incl. the last one) are blue
    video[:, 17:, :] = GREEN  # the bottom 16 rows (incl. the last one) are green
    frames = load_video(export_to_video(video, tmp_path / "odd.mp4"))
    assert len(frames) == 3 and frames[0].size == (48, 34)
    pixels = np.asarray(frames[1]).astype(int)
    assert np.abs(pixels[8, 47] - BLUE).max() <= H264_TOL  # padded column, upper half: blue like column 46
    assert np.abs(pixels[33, 20] - GREEN).max() <= H264_TOL  # padded row: green like row 32
    assert np.abs(pixels[8, 8] - RED).max() <= H264_TOL


def test_fractional_fps_and_frame_count(tmp_path):
    frames = load_video(export_to_video(quadrant_frames(frames=9), tmp_path / "ntsc.mp4", fps=29.97))
    assert len(frames) == 9 and frames.fps == pytest.approx(29.97, abs=1e-6)


def test_frames_are_in_order(tmp_path):
    video = np.zeros((6, 16, 16, 3), np.float32)
    for i in range(6):
        video[i] = i / 5  # grey level encodes the frame index
    frames = load_video(export_to_video(video, tmp_path / "order.mp4", quality=8))
    levels = [int(np.asarray(f).mean()) for f in frames]
    assert all(abs(level - round(i / 5 * 255)) <= 4 for i, level in enumerate(levels)), levels


def test_export_to_video_without_path_writes_a_temp_mp4():
    path = Path(export_to_video(quadrant_frames(frames=2, height=16, width=16)))
    try:
        assert path.suffix == ".mp4" and len(load_video(path)) == 2
    finally:
        path.unlink()


def test_quality_and_bitrate(tmp_path):
    video = quadrant_frames(frames=3)
    video[:, ::2, ::2] = 0  # detail that costs bits
    best = Path(export_to_video(video, tmp_path / "q10.mp4", quality=10)).stat().st_size
    worst = Path(export_to_video(video, tmp_path / "q0.mp4", quality=0)).stat().st_size
    assert best > worst
    assert len(load_video(export_to_video(video, tmp_path / "b.mp4", bitrate=200_000))) == 3
    with pytest.raises(ValueError, match="quality must be a number from 0"):
        export_to_video(video, tmp_path / "x.mp4", quality=11)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        export_to_video(video, tmp_path / "x.mp4", fps=0)
    with pytest.raises(ValueError, match="Use export_to_gif"):
        export_to_video(video, tmp_path / "x.gif")
    with pytest.raises(MediaFileNotFoundError, match="does not exist"):
        export_to_video(video, tmp_path / "missing_dir" / "x.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.mp4", "q0.mp4", "q10.mp4"]


class _FailingAV:
    """Stands in for the av module inside the exporter: the third frame conversion fails, mid-file."""

    FFmpegError = av.FFmpegError
    open = staticmethod(av.open)

    def __init__(self, folder: Path):
        outer = self
        self.calls, self.saw_partial_file = 0, False

        class VideoFrame:
            @staticmethod
            def from_ndarray(*args, **kwargs):
                outer.calls += 1
                outer.saw_partial_file |= any(p.name.endswith(".part.mp4") for p in folder.iterdir())
                if outer.calls == 3:
                    raise RuntimeError("disk full (simulated)")
                return av.VideoFrame.from_ndarray(*args, **kwargs)

        self.VideoFrame = VideoFrame


def test_written_files_get_the_usual_permissions(tmp_path):
    """The temporary file behind the atomic write is owner-only; the result gets 0666 minus the umask, as open() gives."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        export_to_video(quadrant_frames(frames=2), tmp_path / "clip.mp4")
        export_to_gif(quadrant_frames(frames=2), str(tmp_path / "clip.gif"))
    finally:
        os.umask(old)
    for name in ("clip.mp4", "clip.gif"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_failed_video_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    export_to_video(quadrant_frames(frames=2), target)
    before = target.read_bytes()
    failing = _FailingAV(tmp_path)
    monkeypatch.setattr(export_module, "av", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        export_to_video(quadrant_frames(frames=6), target)
    assert failing.saw_partial_file  # the encoder was writing a temporary file next to the target ...
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # ... which is gone,
    assert target.read_bytes() == before  # and the previous video is untouched.
    monkeypatch.setattr(export_module, "av", _FailingAV(tmp_path))
    with pytest.raises(RuntimeError, match="disk full"):
        export_to_video(quadrant_frames(frames=6), tmp_path / "new.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_failed_gif_write_leaves_no_file(tmp_path, monkeypatch):
    def half_write(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"GIF89a half written")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(PIL.Image.Image, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        export_to_gif(quadrant_frames(frames=2), tmp_path / "anim.gif")
    assert list(tmp_path.iterdir()) == []


# --- GIF --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pil_list", "np_float_fhwc", "torch_fchw", "pil_batched_output_type_pil"])
def test_gif_round_trip(tmp_path, form):
    video = quadrant_frames(frames=4, height=33, width=47)  # GIF needs no padding: odd sizes stay as they are
    video[:, 0, :] = np.arange(4)[:, None, None] * 60  # make consecutive frames differ (Pillow merges repeats)
    path = export_to_gif(INPUT_FORMS[form](video), str(tmp_path / "anim.gif"), fps=10)
    frames = load_video(path)
    assert len(frames) == 4 and frames.fps == 10 and frames[0].size == (47, 33)
    for frame in frames:
        assert frame.mode == "RGB"
        assert_quadrants(frame, 33, 47, tol=4)  # palette quantization only


def test_gif_delays_keep_the_total_running_time(tmp_path):
    video = np.stack([np.full((8, 8, 3), i * 30, np.uint8) for i in range(8)])
    frames = load_video(export_to_gif(video, tmp_path / "eight.gif", fps=8))  # 125 ms does not fit in 1/100 s
    assert len(frames) == 8 and frames.fps == pytest.approx(8.0)
    with PIL.Image.open(tmp_path / "eight.gif") as gif:
        delays = []
        for i in range(gif.n_frames):
            gif.seek(i)
            delays.append(gif.info["duration"])
    assert sorted(set(delays)) == [120, 130] and sum(delays) == 1000


def test_transparent_gif_frames_are_composited_on_white(tmp_path):
    frame = PIL.Image.new("P", (4, 4), 0)
    frame.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    frame.putpixel((0, 0), 1)
    frame.save(tmp_path / "t.gif", transparency=0)
    (image,) = load_video(tmp_path / "t.gif")
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 0] and np.asarray(image)[2, 2].tolist() == [255, 255, 255]


# --- load_video details and errors ------------------------------------------------------------------------------


def test_load_video_return_fps_and_convert_method(tmp_path):
    path = export_to_video(quadrant_frames(frames=3), tmp_path / "v.mp4", fps=8)
    frames, fps = load_video(path, return_fps=True)
    assert fps == 8 and len(frames) == 3
    grey = load_video(path, convert_method=lambda fs: [f.convert("L") for f in fs[:2]])
    assert isinstance(grey, VideoFrames) and grey.fps == 8 and [f.mode for f in grey] == ["L", "L"]
    still = PIL.Image.new("P", (4, 4))
    still.save(tmp_path / "still.gif")  # no frame delay recorded
    with pytest.raises(MediaError, match="records no frame rate"):
        load_video(tmp_path / "still.gif", return_fps=True)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_display_matrix_rotation_is_applied(tmp_path, degrees):
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:  # a 64 x 32 video with a white top-left corner, tagged rotated
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees)
        pixels = np.zeros((32, 64, 3), np.uint8)
        pixels[:16, :16] = 255
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (image,) = load_video(path)
    expected = PIL.Image.fromarray(pixels).rotate(degrees, expand=True)  # counter-clockwise, like the matrix
    assert image.size == expected.size
    assert np.abs(np.asarray(image).astype(int) - np.asarray(expected)).mean() < 6


def test_load_video_errors(tmp_path):
    with pytest.raises(MediaFileNotFoundError, match="no such file 'nope.mp4'") as info:
        load_video("nope.mp4")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4' is an empty file"):
        load_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video at all" * 20)
    with pytest.raises(MediaError, match="could not read .*junk.mp4' as a video"):
        load_video(str(tmp_path / "junk.mp4"))
    with pytest.raises(MediaError, match="is a directory"):
        load_video(tmp_path)
    with pytest.raises(TypeError, match="expected a local path or an http"):
        load_video(np.zeros((2, 4, 4, 3)))


def _write_audio(path: Path, with_video_stream: bool) -> None:
    with av.open(str(path), "w", format="matroska") as container:
        if with_video_stream:
            video = container.add_stream("libx264", rate=10)
            video.width, video.height, video.pix_fmt = 16, 16, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        container.mux(audio.encode(samples))
        container.mux(audio.encode())


def test_video_without_frames_or_video_stream(tmp_path):
    _write_audio(tmp_path / "silent.mkv", with_video_stream=True)  # a video stream that never got a frame
    with pytest.raises(MediaError, match="silent.mkv' contains no video frames"):
        load_video(tmp_path / "silent.mkv")
    _write_audio(tmp_path / "audio.mkv", with_video_stream=False)
    with pytest.raises(MediaError, match="audio.mkv' has no video stream"):
        load_video(tmp_path / "audio.mkv")


# --- load_image modes -------------------------------------------------------------------------------------------


def _rgb(path) -> np.ndarray:
    image = load_image(str(path))
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_rgba_la_and_palette_transparency_composite_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black everywhere ...
    rgba[0, 0] = [255, 0, 0, 128]  # ... half-transparent red
    rgba[1, 1] = [10, 20, 30, 255]  # ... opaque colour
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = _rgb(tmp_path / "rgba.png")
    assert out[2, 2].tolist() == [255, 255, 255] and out[1, 1].tolist() == [10, 20, 30]
    assert np.abs(out[0, 0] - [255, 127, 127]).max() <= 1

    la = np.stack([np.full((2, 2), 50, np.uint8), np.array([[0, 255], [255, 255]], np.uint8)], -1)
    PIL.Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert _rgb(tmp_path / "la.png")[0].tolist() == [[255, 255, 255], [50, 50, 50]]

    palette = PIL.Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    assert PIL.Image.open(tmp_path / "p.png").mode == "P"
    assert _rgb(tmp_path / "p.png")[0].tolist() == [[255, 255, 255], [200, 10, 10]]

    pil_input = load_image(PIL.Image.fromarray(rgba, "RGBA"))  # a PIL image in memory: same rule
    assert np.asarray(pil_input)[2, 2].tolist() == [255, 255, 255]


def test_grey_sixteen_bit_and_cmyk(tmp_path):
    PIL.Image.fromarray(np.array([[0, 90, 255]], np.uint8), "L").save(tmp_path / "l.png")
    assert _rgb(tmp_path / "l.png")[0].tolist() == [[0, 0, 0], [90, 90, 90], [255, 255, 255]]

    PIL.Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16)).save(tmp_path / "i16.png")
    assert PIL.Image.open(tmp_path / "i16.png").mode.startswith("I")
    assert _rgb(tmp_path / "i16.png")[0, :, 0].tolist() == [0, 1, 128, 255]  # scaled, not clipped to white
    as_int32 = PIL.Image.fromarray(np.array([[0, 32896, 65535]], np.int32), "I")
    assert np.asarray(load_image(as_int32))[0, :, 0].tolist() == [0, 128, 255]

    cmyk = PIL.Image.new("CMYK", (3, 1))
    for x, value in enumerate([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)]):
        cmyk.putpixel((x, 0), value)
    cmyk.save(tmp_path / "cmyk.tif")
    assert _rgb(tmp_path / "cmyk.tif")[0].tolist() == [[0, 255, 255], [0, 0, 0], [255, 255, 255]]


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high, white block in the stored top-left corner
    stored[:10, :10] = 255
    image = PIL.Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = _rgb(tmp_path / "rotated.jpg")
    assert out.shape == (40, 20, 3)  # displayed upright: 20 wide, 40 high
    assert out[5, 15].mean() > 200 and out[5, 5].mean() < 50  # the corner moved to the top right


def test_convert_method_sees_the_original_mode(tmp_path):
    PIL.Image.new("RGBA", (2, 2), (1, 2, 3, 4)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", convert_method=lambda im: im).mode == "RGBA"
    assert load_image(str(tmp_path / "a.png"), convert_method=lambda im: im.convert("L")).mode == "L"


def test_load_image_errors(tmp_path):
    with pytest.raises(MediaFileNotFoundError, match="no such file 'missing.png'") as info:
        load_image("missing.png")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    (tmp_path / "notes.png").write_text("plain text, not a picture")
    with pytest.raises(MediaError, match="notes.png' is not an image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(TypeError, match="expected a local path, an http\\(s\\) URL or a PIL.Image.Image, got ndarray"):
        load_image(np.zeros((4, 4, 3)))


# --- URLs from a local server -----------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    pixels = np.zeros((6, 8, 4), np.uint8)
    pixels[..., 1], pixels[..., 3] = 200, 255
    pixels[0, 0, 3] = 0
    PIL.Image.fromarray(pixels, "RGBA").save(root / "img.png")
    (root / "page.html").write_text("<html><body>an image viewer page</body></html>")
    (root / "data.bin").write_bytes(b"\x00\x01 definitely not an image " * 10)
    export_to_video(quadrant_frames(frames=3), root / "clip.mp4", fps=6)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def url(served, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return served


def test_load_image_from_url(url):
    image = load_image(f"{url}/img.png", timeout=5)
    assert image.mode == "RGB" and image.size == (8, 6)
    assert np.asarray(image)[0, 0].tolist() == [255, 255, 255] and np.asarray(image)[1, 1].tolist() == [0, 200, 0]


def test_url_errors_are_clear(url):
    with pytest.raises(MediaError, match="HTTP 404"):
        load_image(f"{url}/nothing-here.png", timeout=5)
    with pytest.raises(MediaError, match="text/html page, not a media file"):
        load_image(f"{url}/page.html", timeout=5)
    with pytest.raises(MediaError, match="data.bin' is not an image"):
        load_image(f"{url}/data.bin", timeout=5)
    with pytest.raises(MediaError, match="HTTP 404"):
        load_video(f"{url}/nothing-here.mp4", timeout=5)


def test_load_video_from_url(url):
    frames = load_video(f"{url}/clip.mp4", timeout=5)
    assert len(frames) == 3 and frames.fps == 6 and frames[0].size == (64, 48)
    assert_quadrants(frames[0], 48, 64, H264_TOL)


def test_unreachable_url(url):
    with socket.socket() as sock:  # a local port that nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MediaError, match=f"could not reach 'http://127.0.0.1:{port}/x.png'"):
        load_image(f"http://127.0.0.1:{port}/x.png", timeout=2)


def test_frame_rate_accepts_any_real_number():
    assert export_module.frame_rate(29.97, "t") == Fraction(2997, 100)
    assert export_module.frame_rate(np.int64(8), "t") == 8 and export_module.frame_rate(np.float32(7.5), "t") == 7.5
    assert export_module.gif_durations(4, Fraction(10)) == [100, 100, 100, 100]


# --- drop-in: same results as diffusers.utils where the reference is right -------------------------------------


def test_drop_in_with_diffusers_utils(tmp_path):
    from diffusers.utils import export_to_gif as reference_export_to_gif
    from diffusers.utils import load_image as reference_load_image
    from diffusers.utils import load_video as reference_load_video

    stored = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 8
    image.save(tmp_path / "photo.jpg", exif=exif)
    image.save(tmp_path / "plain.png")
    for name in ("photo.jpg", "plain.png"):  # RGB inputs: pixel-identical, EXIF rotation included
        path = str(tmp_path / name)
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(reference_load_image(path)))

    video = quadrant_frames(frames=4, height=16, width=24)
    video[:, 0, :] = np.arange(4)[:, None, None] * 60
    pils = [PIL.Image.fromarray(f) for f in video]
    ours_read_theirs = load_video(reference_export_to_gif(pils, str(tmp_path / "ref.gif"), fps=10))
    theirs_read_ours, fps = reference_load_video(export_to_gif(pils, tmp_path / "ours.gif", fps=10), return_fps=True)
    assert fps == ours_read_theirs.fps == 10 and len(theirs_read_ours) == len(ours_read_theirs) == 4
    for a, b in zip(ours_read_theirs, theirs_read_ours):
        assert np.array_equal(np.asarray(a), np.asarray(b.convert("RGB")))
