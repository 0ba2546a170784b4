"""Model tests run single-threaded.

Why: the model tests are many tiny forwards; on a small shared CPU, intra-op worker threads mostly spin
waiting for each other (measured: ~6x slower wall time than one thread under load). The previous thread
count is restored after each test, so other test folders are unaffected.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
