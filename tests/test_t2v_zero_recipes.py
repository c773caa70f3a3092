"""The guide's Text2Video-Zero recipes (pose / edge ControlNet, InstructPix2Pix) give the reference's frames; the one-call
video pipelines give the recipes' frames; control images from video frames (canny, pose)."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

import vidiff
from tiny import ref_pix2pix_pipeline, ref_sd_controlnet_pipeline, save_ref_pipeline
from vidiff.media.control import canny, canny_edges, pose_frames

warnings.filterwarnings("ignore")
TOL = 1e-4
REF_MODULE = "diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero"  # moved in the reference
GUIDE_MODULE = "vidiff.pipelines.text_to_video_synthesis.pipeline_text_to_video_zero"  # the guide's path


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _moving_square(n: int, h: int = 16, w: int = 16) -> list[PIL.Image.Image]:
    frames = []
    for i in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[3 + i % 4 : 10 + i % 4, 2 + i : 9 + i] = (255, 200, 40)
        frames.append(PIL.Image.fromarray(a))
    return frames


def _photos(n: int, h: int = 16, w: int = 16, seed: int = 0) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cn_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2vz_cn")
    ref = ref_sd_controlnet_pipeline(tmp)
    ref.controlnet.save_pretrained(tmp / "controlnet")
    return save_ref_pipeline(ref, tmp / "pipe"), tmp / "controlnet"


def _recipe_controlnet(lib, folders, frames, seed, **call):
    """The guide's pose/edge recipe, as written but for the import."""
    CrossFrameAttnProcessor = importlib.import_module(GUIDE_MODULE if lib is vidiff else REF_MODULE).CrossFrameAttnProcessor
    controlnet = lib.ControlNetModel.from_pretrained(folders[1])
    pipe = lib.StableDiffusionControlNetPipeline.from_pretrained(folders[0], controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=2))
    pipe.controlnet.set_attn_processor(CrossFrameAttnProcessor(batch_size=2))
    latents = torch.randn((1, 4, 8, 8), generator=_gen(seed)).repeat(len(frames), 1, 1, 1)
    prompt = "Darth Vader dancing in a desert"
    return pipe(prompt=[prompt] * len(frames), image=frames, latents=latents, **call).images


@pytest.mark.parametrize("n,steps,seed", [(2, 2, 0), (3, 3, 1), (5, 2, 2)])
def test_controlnet_recipe_matches_reference(cn_folder, n, steps, seed):
    frames = canny_edges(_moving_square(n), 100, 200)  # the edge recipe; the pose recipe is the same call on pose frames
    kw = dict(num_inference_steps=steps, output_type="np")
    expected = _recipe_controlnet(__import__("diffusers"), cn_folder, frames, seed, **kw)
    got = _recipe_controlnet(vidiff, cn_folder, frames, seed, **kw)
    assert got.shape == expected.shape == (n, 16, 16, 3)
    assert np.abs(got - expected).max() < TOL


def test_controlnet_video_pipeline_gives_the_recipe_frames_and_chunks(cn_folder):
    frames = canny_edges(_moving_square(5), 100, 200)
    recipe = _recipe_controlnet(vidiff, cn_folder, frames, 4, num_inference_steps=2, output_type="np")
    controlnet = vidiff.ControlNetModel.from_pretrained(cn_folder[1])
    pipe = vidiff.TextToVideoZeroControlNetPipeline.from_pretrained(cn_folder[0], controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    before = pipe.unet.attn_processors
    kw = dict(prompt="Darth Vader dancing in a desert", control_frames=frames, num_inference_steps=2)
    video = pipe(**kw, generator=_gen(4)).frames
    assert video.shape == (1, 5, 16, 16, 3) and np.abs(video[0] - recipe).max() < TOL
    chunked = pipe(**kw, generator=_gen(4), chunk_size=3).frames  # [0,0,1] [0,2,3] [0,4]: frame 0 anchors every chunk
    assert np.abs(chunked - video).max() < TOL
    assert pipe.unet.attn_processors.keys() == before.keys()
    assert not any(isinstance(p, vidiff.CrossFrameAttnProcessor) for p in pipe.unet.attn_processors.values())
    pil = pipe(**kw, generator=_gen(4), output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 5 and pil[0][0].size == (16, 16)
    lat = pipe(**kw, generator=_gen(4), output_type="latent").frames
    assert lat.shape == (1, 4, 5, 8, 8)


@pytest.fixture(scope="module")
def p2p_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2vz_p2p")
    return save_ref_pipeline(ref_pix2pix_pipeline(tmp), tmp / "pipe")


def _recipe_pix2pix(lib, folder, video, seed, **call):
    """The guide's InstructPix2Pix recipe, as written but for the import (and a seeded generator)."""
    CrossFrameAttnProcessor = importlib.import_module(GUIDE_MODULE if lib is vidiff else REF_MODULE).CrossFrameAttnProcessor
    pipe = lib.StableDiffusionInstructPix2PixPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=3))
    prompt = "make it Van Gogh Starry Night style"
    return pipe(prompt=[prompt] * len(video), image=video, generator=_gen(seed), **call).images


@pytest.mark.parametrize("n,steps,seed", [(2, 2, 0), (3, 3, 5)])
def test_pix2pix_recipe_matches_reference(p2p_folder, n, steps, seed):
    video = _photos(n, seed=seed)
    kw = dict(num_inference_steps=steps, output_type="np")
    expected = _recipe_pix2pix(__import__("diffusers"), p2p_folder, video, seed, **kw)
    got = _recipe_pix2pix(vidiff, p2p_folder, video, seed, **kw)
    assert got.shape == expected.shape == (n, 16, 16, 3)
    assert np.abs(got - expected).max() < TOL


def test_pix2pix_video_pipeline_gives_the_recipe_frames(p2p_folder):
    video = _photos(4, seed=3)
    recipe = _recipe_pix2pix(vidiff, p2p_folder, video, 6, num_inference_steps=2, output_type="np")
    pipe = vidiff.TextToVideoZeroPix2PixPipeline.from_pretrained(p2p_folder)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="make it Van Gogh Starry Night style", video=video, num_inference_steps=2)
    got = pipe(**kw, generator=_gen(6)).frames
    assert got.shape == (1, 4, 16, 16, 3) and np.abs(got[0] - recipe).max() < TOL
    latents = torch.randn(4, 4, 8, 8, generator=_gen(1))
    pipe.scheduler = vidiff.EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # no noise added in the steps
    whole = pipe(**kw, latents=latents, guidance_scale=1.0, generator=_gen(2)).frames
    chunked = pipe(**kw, latents=latents, guidance_scale=1.0, generator=_gen(2), chunk_size=3).frames
    assert np.abs(whole - chunked).max() < TOL  # each frame depends only on itself and its anchor, frame 0


CN_BAD = [
    (dict(control_frames=None), "control_frames"),
    (dict(control_frames=_moving_square(2) + _moving_square(1, 24, 16)), "one size"),
    (dict(prompt=["a", "b"]), "one per frame"),
    (dict(chunk_size=1), "chunk_size"),
    (dict(latents=torch.zeros(2, 4, 8, 8)), "shared by every frame"),
    (dict(output_type="gif"), "output_type"),
    (dict(control_frames="edges.mp4"), "list of frames"),
]


@pytest.mark.parametrize("bad,match", CN_BAD, ids=[str(i) for i in range(len(CN_BAD))])
def test_controlnet_video_bad_input_before_heavy_work(cn_folder, monkeypatch, bad, match):
    pipe = vidiff.TextToVideoZeroControlNetPipeline.from_pretrained(cn_folder[0], controlnet=vidiff.ControlNetModel.from_pretrained(cn_folder[1]))

    def boom(*a, **k):
        raise AssertionError("heavy work ran before the input check")

    for m in (pipe.unet, pipe.controlnet, pipe.text_encoder, pipe.vae):
        monkeypatch.setattr(m, "forward", boom)
    kw = dict(prompt="x", control_frames=_moving_square(3), num_inference_steps=2)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(**kw)


def test_multi_controlnet_frame_counts_must_agree(cn_folder):
    net = vidiff.ControlNetModel.from_pretrained(cn_folder[1])
    pipe = vidiff.TextToVideoZeroControlNetPipeline.from_pretrained(cn_folder[0], controlnet=[net, net])
    with pytest.raises(ValueError, match=r"\[3, 2\] frames"):
        pipe(prompt="x", control_frames=[_moving_square(3), _moving_square(2)], num_inference_steps=2)


def test_pix2pix_video_bad_input(p2p_folder):
    pipe = vidiff.TextToVideoZeroPix2PixPipeline.from_pretrained(p2p_folder)
    with pytest.raises(ValueError, match="video"):
        pipe(prompt="x")
    with pytest.raises(ValueError, match=r"frames=3"):
        pipe(prompt="x", video=_photos(3), latents=torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="one size"):
        pipe(prompt="x", video=_photos(2) + _photos(1, 24))


# ---------------------------------------------------------------------------------------------- control images
def test_canny_finds_the_known_edges():
    img = np.zeros((20, 24), np.uint8)
    img[:, 10:] = 255  # one vertical step between columns 9 and 10
    edges = canny(img, 100, 200)
    cols = np.nonzero(edges.any(axis=0))[0]
    assert len(cols) == 1 and cols[0] in (9, 10) and edges[:, cols[0]].all() and set(np.unique(edges)) == {0, 255}
    square = np.zeros((32, 32, 3), np.uint8)
    square[8:20, 10:26] = 255
    e = canny(square, 100, 200) > 0
    ys, xs = np.nonzero(e)
    near = ((np.abs(ys - 8) <= 1) | (np.abs(ys - 19) <= 1)) & (xs >= 9) & (xs <= 26)
    near |= ((np.abs(xs - 10) <= 1) | (np.abs(xs - 25) <= 1)) & (ys >= 7) & (ys <= 20)
    assert near.all()  # every edge pixel is on the square's outline
    assert e[8:20, 9:11].any(axis=1).all() and e[8:20, 24:27].any(axis=1).all()  # left and right sides closed
    assert e[7:10, 10:26].any(axis=0).all() and e[18:21, 10:26].any(axis=0).all()  # top and bottom sides closed
    assert not canny(np.full((8, 8, 3), 77, np.uint8), 1, 2).any()  # flat: no edges
    assert not canny(img, 100, 100000).any()  # nothing above the high threshold


def test_canny_matches_opencv_when_installed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for trial in range(20):
        h, w = rng.integers(6, 40, size=2)
        img = (rng.random((h // 3 + 1, w // 3 + 1, 3)) * 255).astype(np.uint8).repeat(3, 0).repeat(3, 1)[:h, :w]
        lo, hi = sorted(rng.integers(0, 400, size=2))
        assert np.array_equal(canny(img, lo, hi), cv2.Canny(np.ascontiguousarray(img), int(lo), int(hi)))


def test_canny_edges_from_a_video_file(tmp_path):
    frames = _moving_square(4, 32, 32)
    path = vidiff.export_to_video(frames, str(tmp_path / "in.mp4"), fps=4)
    video = vidiff.load_video(path)
    edges = canny_edges(video, 100, 200)
    assert len(edges) == 4 and edges[0].size == (32, 32) and edges[0].mode == "RGB"
    arr = canny_edges(np.stack([np.asarray(f) for f in frames]), output_type="np")
    assert arr.shape == (4, 32, 32, 3) and arr.dtype == np.uint8 and (arr[..., 0] == arr[..., 2]).all()
    assert np.array_equal(arr[1, ..., 0], canny(np.asarray(frames[1]), 100, 200))
    with pytest.raises(ValueError, match="backend"):
        canny_edges(frames, backend="sobel")


def test_pose_frames_with_a_detector_or_a_clear_error():
    frames = _moving_square(2)
    seen = []

    def detector(image, **kw):
        seen.append((image.size, kw))
        return image.convert("L").convert("RGB")

    poses = pose_frames(frames, detector=detector, hand_and_face=True)
    assert len(poses) == 2 and poses[0].size == (16, 16) and seen[0] == ((16, 16), {"hand_and_face": True})
    try:
        import controlnet_aux  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install controlnet_aux"):
            pose_frames(frames)
