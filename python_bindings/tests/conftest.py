import os

import pytest
import torch

import spembed  # noqa: F401  (loads the ops)

# Unit roundoff of each dtype (half an ulp at 1): the tolerances below are
# built from these, never tuned by hand.
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8,
                 torch.float64: 2.0**-53}

_REQUIRE_GPU = os.environ.get("SPEMBED_REQUIRE_GPU") == "1"


def _cuda_usable():
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def device_params():
    cuda = pytest.param("cuda", marks=pytest.mark.skipif(
        not _cuda_usable() and not _REQUIRE_GPU,
        reason="no usable CUDA device (torch.cuda.is_available() is False)"))
    return ["cpu", cuda]


DEVICES = device_params()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
