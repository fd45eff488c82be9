// One descriptor per fused optimizer: its name and the state it keeps. The
// host checks (which state tensors a call must pass, of which shape), the
// CUDA reduce kernel and the CPU implementation (which state rows they read)
// all ask it, so adding an optimizer is one entry here plus its update in
// optimizer_math.h. The Python layer mirrors the names and state counts
// (python_bindings/spembed/nn.py).
#pragma once

#include "kernels/common/types.h"
#include "spembed/spembed.h"

namespace spembed::detail {

// The shape of one state tensor of a table of `rows` x `dim`.
enum class StateShape : uint8_t {
  kNone,        // not kept
  kPerElement,  // [rows, dim] float32
  kPerRow,      // [rows] float32
};

struct OptimizerKind {
  const char* name;     // as in spembed_optimizer_t, for messages
  StateShape state1;    // Adagrad's sum of squares; Adam's first moment
  StateShape state2;    // Adam's second moment
  bool bias_corrected;  // uses the step count (Adam)
};

constexpr bool is_known_optimizer(int raw) {
  return raw >= SPEMBED_OPTIMIZER_SGD && raw <= SPEMBED_OPTIMIZER_ADAM;
}

// The descriptor of a known optimizer (is_known_optimizer).
SPEMBED_HOST_DEVICE constexpr OptimizerKind optimizer_kind(spembed_optimizer_t o) {
  switch (o) {
    case SPEMBED_OPTIMIZER_ADAGRAD:
      return {"ADAGRAD", StateShape::kPerElement, StateShape::kNone, false};
    case SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD:
      return {"ROWWISE_ADAGRAD", StateShape::kPerRow, StateShape::kNone, false};
    case SPEMBED_OPTIMIZER_ADAM:
      return {"ADAM", StateShape::kPerElement, StateShape::kPerElement, true};
    case SPEMBED_OPTIMIZER_SGD:
    default:
      return {"SGD", StateShape::kNone, StateShape::kNone, false};
  }
}

}  // namespace spembed::detail
