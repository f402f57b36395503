"""Model tests run torch on one thread: tiny RNNs gain nothing from more, and on a loaded 2-core machine
intra-op threads contend (a 16-unit GRU step took 20x longer with 2 threads than with 1)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
