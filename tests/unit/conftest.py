import pytest
import torch


@pytest.fixture(autouse=True)
def float64_default():
    """Closed-form checks run in float64; the previous default is restored so no other test inherits it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
