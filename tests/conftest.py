import os

import pytest

# Keep CPU tests predictable on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def one_intra_op_thread():
    """CI has 2 shared cores and some tests start subprocesses: one intra-op thread avoids OpenMP stalls."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def rng_seed(request):
    """A fresh seed per test (printed on failure) so the tests use new random inputs each run."""
    import random

    import torch

    seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    return seed
