"""Shared fixtures. Test modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: numerics and timings that do not depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64_one_thread(one_thread):
    """Float64 by default (dense-algebra references, finite differences) on one thread."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)
