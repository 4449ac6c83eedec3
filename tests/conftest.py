import os

import pytest

# Keep CPU tests predictable on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def rng_seed(request):
    """A fresh seed per test (printed on failure) so the tests use new random inputs each run."""
    import random

    import torch

    seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    return seed
