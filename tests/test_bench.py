"""The benchmark scripts' own helpers (bench/): argument parsing and the per-phase peak memory."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import memory  # noqa: E402
import steps  # noqa: E402


def test_call_arguments_parse_as_python_literals():
    assert steps.parse_call("") == {}
    assert steps.parse_call("guidance_scale=1.0") == {"guidance_scale": 1.0}
    assert steps.parse_call(" min_guidance_scale=1.0, num_frames=5 ,output_type='np'") == {
        "min_guidance_scale": 1.0, "num_frames": 5, "output_type": "np"}
    with pytest.raises(SystemExit, match="expected name=value"):
        steps.parse_call("guidance_scale")
    with pytest.raises(SystemExit, match="not a Python literal"):
        steps.parse_call("output_type=np")


def test_phase_peaks_belong_to_their_phase():
    """A large allocation freed inside one phase sets that phase's peak, not the next one's."""
    phases = memory.Phases()
    if not phases.enabled:
        pytest.skip("no /proc/self/clear_refs here (Linux only)")
    phases.enter("decode")
    block = bytearray(256 << 20)
    block[:: 4096] = b"\1" * len(range(0, len(block), 4096))  # touch every page
    del block
    phases.enter("unet")
    small = bytearray(8 << 20)
    small[:: 4096] = b"\1" * len(range(0, len(small), 4096))
    del small
    phases.enter("other")
    assert phases.peaks["decode"] - phases.peaks["unet"] > 200, phases.peaks
    assert set(phases.peaks) == {"other", "decode", "unet"}


def test_cast_reaches_every_floating_tensor():
    """steps.py --dtype: the captured UNet inputs, nested, with their floating-point tensors cast and the rest kept."""
    import torch

    ids = torch.arange(3)
    args, kwargs = steps._cast(((torch.zeros(2), ids), {"added": {"time_ids": torch.ones(1)}, "n": 4}), torch.bfloat16)
    assert args[0].dtype == torch.bfloat16 and args[1] is ids
    assert kwargs["added"]["time_ids"].dtype == torch.bfloat16 and kwargs["n"] == 4
