"""ControlNetModel (keys, outputs, from_unet, loading) and StableDiffusionControlNetPipeline (one or two ControlNets,
guess mode, control_guidance_start/end) against the reference, and clear errors before any model runs."""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch

import vidiff
from test_pipeline_stable_diffusion import explode, gen, max_diff, ref_unet2d, sd_components, swap
from tiny import randomize

warnings.filterwarnings("ignore", category=FutureWarning)
TOL = 1e-4
NET = dict(block_out_channels=(32, 64), layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
           cross_attention_dim=32, attention_head_dim=4, norm_num_groups=2, conditioning_embedding_out_channels=(16, 32))


def ref_controlnet(seed: int = 0, **overrides):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return randomize(ControlNetModel(**dict(NET, **overrides)), seed)  # random zero-convs: a zero ControlNet hides bugs


def _ours_from(ref_net):
    ours = vidiff.ControlNetModel.from_config(ref_net.config).eval()
    ours.load_state_dict(ref_net.state_dict())
    return ours


# ---------------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("overrides, call", [
    (dict(), dict(conditioning_scale=0.7)),
    (dict(mid_block_type="UNetMidBlock2D", controlnet_conditioning_channel_order="bgr", layers_per_block=1,
          num_attention_heads=(2, 4)), dict(guess_mode=True, conditioning_scale=1.3)),
    (dict(global_pool_conditions=True, transformer_layers_per_block=(2, 1), num_class_embeds=3),
     dict(class_labels=torch.tensor([0, 2]))),
], ids=["default", "mid2d-bgr-guess", "global-pool-class-labels"])
def test_controlnet_model_matches_reference(overrides, call):
    ref = ref_controlnet(0, **overrides)
    ours = _ours_from(ref)
    assert list(ref.state_dict()) == list(ours.state_dict())
    assert list(ref.attn_processors) == list(ours.attn_processors)
    g = gen(3)
    x, e = torch.randn(2, 4, 8, 12, generator=g), torch.randn(2, 5, 32, generator=g)
    c = torch.rand(2, 3, 16, 24, generator=g)
    with torch.no_grad():
        a = ref(x, torch.tensor(501), e, c, return_dict=False, **call)
        b = ours(x, torch.tensor(501), e, c, return_dict=False, **call)
    assert len(a[0]) == len(b[0]) == 1 + len(NET["block_out_channels"]) * ours.config.layers_per_block + 1
    assert max(max_diff(p, q) for p, q in zip(a[0], b[0])) < 1e-5 and max_diff(a[1], b[1]) < 1e-5


def test_from_unet_copies_the_reference_weights():
    from diffusers import ControlNetModel

    ref_unet = ref_unet2d(2)
    ours_unet = vidiff.UNet2DConditionModel.from_config(ref_unet.config)
    ours_unet.load_state_dict(ref_unet.state_dict())
    for load in (True, False):
        torch.manual_seed(0)
        r = ControlNetModel.from_unet(ref_unet, conditioning_embedding_out_channels=(16, 32), load_weights_from_unet=load)
        o = vidiff.ControlNetModel.from_unet(ours_unet, conditioning_embedding_out_channels=(16, 32), load_weights_from_unet=load)
        assert dict(r.config)["block_out_channels"] == o.config.block_out_channels
        rs, os_ = r.state_dict(), o.state_dict()
        assert list(rs) == list(os_)
        assert all(torch.count_nonzero(os_[k]) == 0 for k in os_ if k.startswith(("controlnet_down_blocks", "controlnet_mid_block")))
        if load:
            assert all(torch.equal(rs[k], os_[k]) for k in rs if k.startswith(("down_blocks", "mid_block", "time_embedding", "conv_in")))


def test_controlnet_loads_reference_folder_and_sets_processors(tmp_path):
    ref = ref_controlnet(1)
    ref.save_pretrained(tmp_path / "cn")
    ours = vidiff.ControlNetModel.from_pretrained(tmp_path / "cn")
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in ref.state_dict().items())
    ours.set_attn_processor(vidiff.AttnProcessor())
    assert all(type(p).__name__ == "AttnProcessor" for p in ours.attn_processors.values())
    with pytest.raises(ValueError, match="controlnet_cond"):
        ours(torch.randn(1, 4, 8, 8), 1, torch.randn(1, 5, 32), torch.rand(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from diffusers import StableDiffusionControlNetPipeline

    tmp = tmp_path_factory.mktemp("cn")
    one = StableDiffusionControlNetPipeline(controlnet=ref_controlnet(0), **sd_components(tmp))
    one.save_pretrained(tmp / "one")
    two = StableDiffusionControlNetPipeline(controlnet=[ref_controlnet(0), ref_controlnet(1)], **sd_components(tmp))
    two.save_pretrained(tmp / "two")
    return tmp / "one", tmp / "two"


def _pair(folder):
    import diffusers

    ref = diffusers.StableDiffusionControlNetPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None)
    ours = vidiff.StableDiffusionControlNetPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None)
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


@pytest.fixture(scope="module")
def one(folders):
    return _pair(folders[0])


@pytest.fixture(scope="module")
def two(folders):
    return _pair(folders[1])


def _control(h=32, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("case", [
    dict(scheduler="DDIMScheduler", kw=dict(prompt="a bird", image=_control(), guidance_scale=7.5, controlnet_conditioning_scale=0.5)),
    dict(scheduler="EulerDiscreteScheduler", kw=dict(prompt="a bird", image=_control(40, 56, 1), guidance_scale=6.0, guess_mode=True,
                                                     height=32, width=48)),
    dict(scheduler="DPMSolverMultistepScheduler", kw=dict(prompt=["a bird", "the dog"], image=torch.rand(2, 3, 48, 32, generator=gen(7)),
                                                          guidance_scale=1.0, control_guidance_start=0.3, control_guidance_end=0.9)),
], ids=["ddim-cfg-scale", "euler-guess-resized-nonsquare", "dpm-nocfg-2prompts-window"])
def test_controlnet_pipeline_matches_reference(one, case):
    ref, ours = one
    swap(ref, ours, case["scheduler"])
    kw = dict(num_inference_steps=3, output_type="np", **case["kw"])
    a = ref(generator=gen(), **kw).images
    b = ours(generator=gen(), **kw).images
    assert max_diff(a, b) < TOL


@pytest.mark.parametrize("case", [
    dict(image=[_control(seed=2), _control(seed=3)], controlnet_conditioning_scale=[0.8, 1.2], control_guidance_start=[0.0, 0.3],
         control_guidance_end=[0.6, 1.0], num_images_per_prompt=2, guidance_scale=5.0),
    dict(image=[[_control(32, 48, 4), _control(32, 48, 5)], [_control(32, 48, 6), _control(32, 48, 7)]], prompt=["a bird", "a cat"],
         guess_mode=True, guidance_scale=4.0, controlnet_conditioning_scale=0.7),
], ids=["two-nets-windows-2per", "two-nets-list-of-lists-guess"])
def test_two_controlnets_match_reference(two, case):
    ref, ours = two
    assert type(ours.controlnet).__name__ == "MultiControlNetModel"
    swap(ref, ours, "DDIMScheduler")
    kw = dict(prompt="a bird", num_inference_steps=3, output_type="np")
    kw.update(case)
    a = ref(generator=gen(), **kw).images
    b = ours(generator=gen(), **kw).images
    assert max_diff(a, b) < TOL


def test_controlnet_list_override_and_callback_image(folders):
    pipe = vidiff.StableDiffusionControlNetPipeline.from_pretrained(
        folders[0], controlnet=[vidiff.ControlNetModel.from_pretrained(folders[0] / "controlnet")] * 2, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe("a bird", image=[_control(), _control()], num_inference_steps=2, output_type="latent",
         callback_on_step_end=lambda p, i, t, kw: seen.append(len(kw["image"])) or {}, callback_on_step_end_tensor_inputs=["image"])
    assert seen == [2, 2]


@pytest.fixture(scope="module")
def exploded(folders):
    pipes = [vidiff.StableDiffusionControlNetPipeline.from_pretrained(f, safety_checker=None) for f in folders]
    for p in pipes:
        explode(p.unet, p.text_encoder, p.vae, *(p.controlnet.nets if hasattr(p.controlnet, "nets") else [p.controlnet]))
    return pipes


@pytest.mark.parametrize("which, bad, err", [
    (0, dict(image=None), ValueError),
    (0, dict(image="edges.png"), TypeError),
    (0, dict(prompt=["a", "b", "c"], image=[_control(), _control()]), ValueError),
    (0, dict(control_guidance_start=0.6, control_guidance_end=0.4), ValueError),
    (0, dict(controlnet_conditioning_scale=[0.5, 0.5]), TypeError),
    (0, dict(latents=torch.randn(1, 4, 8, 8)), ValueError),
    (1, dict(image=_control()), TypeError),
    (1, dict(image=[_control()] * 3), ValueError),
    (1, dict(image=[_control()] * 2, controlnet_conditioning_scale=[1.0, 1.0, 1.0]), ValueError),
    (1, dict(image=[_control()] * 2, control_guidance_start=[0.0, 0.1, 0.2], control_guidance_end=1.0), ValueError),
], ids=["no-image", "bad-type", "image-count", "start>=end", "scale-list-single", "latents", "multi-not-list",
        "multi-count", "multi-scales", "multi-windows"])
def test_controlnet_bad_input_before_models_run(exploded, which, bad, err):
    kw = dict(prompt="a bird", image=_control(), num_inference_steps=2)
    kw.update(bad)
    with pytest.raises(err):
        exploded[which](**kw)


def test_two_controlnets_save_in_the_reference_layout(two, tmp_path):
    import diffusers

    _, ours = two
    ours.save_pretrained(tmp_path / "re")
    assert (tmp_path / "re" / "controlnet_1").is_dir()
    ref = diffusers.StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "re")
    back = vidiff.DiffusionPipeline.from_pretrained(tmp_path / "re")
    assert type(ref.controlnet).__name__ == type(back.controlnet).__name__ == "MultiControlNetModel"
    for r, o in zip(ref.controlnet.nets, back.controlnet.nets):
        assert all(torch.equal(v, o.state_dict()[k]) for k, v in r.state_dict().items())
