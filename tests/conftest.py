"""Test-wide settings.

The tiny models of the test suite are too small to gain from intra-op threads; with two threads every small op
waits on a barrier, which makes a loaded machine (or a CI box running something else) many times slower.
One thread makes the suite's speed independent of other load. Both libraries run in the same process with the
same setting, so parity comparisons are unaffected.
"""

import torch

torch.set_num_threads(1)
