"""The C enums of the library as Python IntEnums.

This module mirrors include/spembed/spembed.h: one IntEnum per
``typedef enum spembed_<name> { ... } spembed_<name>_t;``, each member named
like its C constant without the prefix (SPEMBED_POOLING_SUM is Pooling.SUM)
and with the same value. python_bindings/tests/test_enums.py checks it
against the header, so a change to either fails that test until both agree.

It is the one place the Python layer states these codes. The ops' schemas
take plain ints: pass ``int(member)`` (an IntEnum is an int, but plain ints
keep the values torch.compile sees simple). This module imports nothing but
``enum``, so it loads without torch or the compiled library.
"""
from enum import IntEnum

__all__ = ["Status", "Pooling", "BoundsPolicy", "ReportField", "BackwardAlgorithm", "Optimizer",
           "AttentionMask"]


class Status(IntEnum):
    """spembed_status_t (SPEMBED_STATUS_*): what every C function returns."""
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    NOT_SUPPORTED = 2
    INDEX_OUT_OF_RANGE = 3
    WORKSPACE_TOO_SMALL = 4
    CUDA_ERROR = 5
    ALLOC_FAILED = 6
    INTERNAL_ERROR = 7


class Pooling(IntEnum):
    """spembed_pooling_t (SPEMBED_POOLING_*): the ops' ``pooling`` argument
    (``mode`` 'sum', 'mean', 'max', 'none' in spembed.ops / spembed.nn)."""
    SUM = 0
    MEAN = 1
    MAX = 2
    NONE = 3


class BoundsPolicy(IntEnum):
    """spembed_bounds_policy_t (SPEMBED_BOUNDS_*): the ops' ``bounds_policy``
    argument ('error', 'skip')."""
    ERROR = 0
    SKIP = 1


class ReportField(IntEnum):
    """spembed_report_field_t (SPEMBED_REPORT_*): positions in a report tensor;
    SIZE is its length."""
    STATUS = 0
    BAD_INDEX_COUNT = 1
    BAD_INDEX_POSITION = 2
    BAD_INDEX_VALUE = 3
    BAD_OFFSET_POSITION = 4
    SIZE = 5


class BackwardAlgorithm(IntEnum):
    """spembed_backward_algorithm_t (SPEMBED_BACKWARD_*). The ops take the
    bool ``deterministic`` (True: DETERMINISTIC, False: ATOMIC)."""
    DETERMINISTIC = 0
    ATOMIC = 1


class Optimizer(IntEnum):
    """spembed_optimizer_t (SPEMBED_OPTIMIZER_*): the fused-step ops'
    ``optimizer`` argument ('sgd', 'adagrad', 'rowwise_adagrad', 'adam')."""
    SGD = 0
    ADAGRAD = 1
    ROWWISE_ADAGRAD = 2
    ADAM = 3


class AttentionMask(IntEnum):
    """spembed_attention_mask_t (SPEMBED_ATTENTION_MASK_*). The attention ops
    take the bool ``causal`` (True: CAUSAL, False: NONE)."""
    NONE = 0
    CAUSAL = 1


# The state each fused optimizer keeps per table, as the C++ descriptor
# (kernels/embedding_bag/optimizer_kinds.h) states it: (state1, state2), each
# None, "element" ([rows, dim] float32) or "row" ([rows] float32).
# python_bindings/tests/test_enums.py checks the two agree.
OPTIMIZER_STATES = {
    Optimizer.SGD: (None, None),
    Optimizer.ADAGRAD: ("element", None),
    Optimizer.ROWWISE_ADAGRAD: ("row", None),
    Optimizer.ADAM: ("element", "element"),
}
