import pytest
import torch


@pytest.fixture
def one_thread():
    """torch on one thread for the test: in-process swarms are deterministic and do not fight over the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
