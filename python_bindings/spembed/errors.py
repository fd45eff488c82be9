"""Exception classes of the spembed Python API (spembed.ops, spembed.nn).

Each derives from the class torch raises for the same input, so that code
written against torch.nn.EmbeddingBag / F.embedding_bag catches them
unchanged, and from the class spembed raised before (ValueError /
IndexError), so that existing spembed callers do too.

InvalidArgumentError(ValueError, RuntimeError)
    bad offsets, shapes, dtypes, per_sample_weights, padding_idx, input
    forms. torch raises RuntimeError (its C++ checks) or ValueError (its
    Python checks). Also max_norm / norm_type that are not finite and > 0,
    which torch does not check.
IndexOutOfRangeError(IndexError, RuntimeError)
    an id outside [0, num_embeddings). torch raises RuntimeError.
ConstructorArgumentError(InvalidArgumentError, AssertionError)
    nn.EmbeddingBag(...) / from_pretrained(...) with padding_idx out of
    range, a _weight of the wrong shape, embeddings that are not 2-D. torch
    raises AssertionError.
NotSupportedError(NotImplementedError, ValueError)
    what torch computes and spembed does not (yet); float64 tables, the last
    such case, are supported now. (ValueError: what spembed raised for them
    before.)
    scale_grad_by_freq=True is supported, except where torch rejects it too:
    with mode 'max' (InvalidArgumentError; torch raises ValueError) and with
    sparse=True (InvalidArgumentError from the backward; torch raises
    RuntimeError).

NotImplementedError is itself a RuntimeError. per_sample_weights with mode
'mean' / 'max' raise a plain NotImplementedError, as torch does. The raw ops
(torch.ops.spembed.*) raise plain ValueError / IndexError /
NotImplementedError for the library's statuses (spembed.Status)
INVALID_ARGUMENT and WORKSPACE_TOO_SMALL / INDEX_OUT_OF_RANGE / NOT_SUPPORTED,
and RuntimeError for the others.
"""

__all__ = ["InvalidArgumentError", "IndexOutOfRangeError", "ConstructorArgumentError",
           "NotSupportedError"]


class InvalidArgumentError(ValueError, RuntimeError):
    """An argument spembed (and torch) rejects."""


class IndexOutOfRangeError(IndexError, RuntimeError):
    """An id outside [0, num_embeddings) with bounds_policy 'error'."""


class ConstructorArgumentError(InvalidArgumentError, AssertionError):
    """A module constructor argument that torch rejects with an assertion."""


class NotSupportedError(NotImplementedError, ValueError):
    """Valid for torch, not supported by spembed (yet)."""
