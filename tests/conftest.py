"""Test-wide settings.

The tiny models of the test suite are too small to gain from intra-op threads; with two threads every small op
waits on a barrier, which makes a loaded machine (or a CI box running something else) many times slower.
One thread makes the suite's speed independent of other load. Both libraries run in the same process with the
same setting, so parity comparisons are unaffected.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """One saved folder of tiny reference components per pipeline family (tests/test_runtime.py's CASES name them;
    tests/test_stream.py uses them too, so they are built once per session; modules with a ``folders`` of their
    own use theirs)."""
    from test_pipeline_animatediff import write_adapter_folder, write_sd_folder
    from tiny import (ref_i2vgen_pipeline, ref_pix2pix_pipeline, ref_sd_controlnet_pipeline, ref_svd_pipeline, ref_t2v_pipeline,
                      ref_t2v_zero_pipeline, save_ref_pipeline)

    tmp = tmp_path_factory.mktemp("runtime")
    return {
        "t2v": save_ref_pipeline(ref_t2v_pipeline(tmp), tmp / "t2v"),
        "svd": save_ref_pipeline(ref_svd_pipeline(image_size=56), tmp / "svd"),
        "i2vgen": save_ref_pipeline(ref_i2vgen_pipeline(tmp), tmp / "i2vgen"),
        "sd": save_ref_pipeline(ref_t2v_zero_pipeline(tmp), tmp / "sd"),
        "cn": save_ref_pipeline(ref_sd_controlnet_pipeline(tmp), tmp / "cn"),
        "p2p": save_ref_pipeline(ref_pix2pix_pipeline(tmp), tmp / "p2p"),
        "animatediff": (write_sd_folder(tmp), write_adapter_folder(tmp)),
    }
