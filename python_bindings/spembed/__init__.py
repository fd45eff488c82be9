"""spembed: fused kernels for the sparse side of recommender models, as
PyTorch custom ops (``torch.ops.spembed.*``) with autograd, fake (meta)
kernels for ``torch.compile``, and ``spembed.nn`` modules.

The C enums of spembed.h are mirrored as IntEnums (spembed/_enums.py):
spembed.Pooling, BoundsPolicy, Optimizer, ...; the raw ops take their values.

Importing the package loads ``libspembed_torch.so`` (installed beside this
file; ``SPEMBED_TORCH_LIBRARY`` may point at another build of it).
"""
import os as _os

import torch as _torch

__version__ = "0.1.0"


def _library_path():
    override = _os.environ.get("SPEMBED_TORCH_LIBRARY")
    if override:
        return override
    return _os.path.join(_os.path.dirname(__file__), "libspembed_torch.so")


_torch.ops.load_library(_library_path())

from ._enums import (AttentionMask, BackwardAlgorithm, BoundsPolicy, Optimizer,  # noqa: E402
                     Pooling, ReportField, Status)
from . import _meta  # noqa: E402,F401  (fake kernels)
from . import _autograd  # noqa: E402,F401  (autograd formulas)
from . import errors  # noqa: E402
from .errors import (ConstructorArgumentError, IndexOutOfRangeError,  # noqa: E402
                     InvalidArgumentError, NotSupportedError)
from . import ops  # noqa: E402
from . import nn  # noqa: E402

__all__ = ["ops", "nn", "errors", "InvalidArgumentError", "IndexOutOfRangeError",
           "ConstructorArgumentError", "NotSupportedError", "Status", "Pooling", "BoundsPolicy",
           "ReportField", "BackwardAlgorithm", "Optimizer", "AttentionMask", "__version__"]
