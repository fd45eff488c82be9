// Error state of the C API: a status plus this thread's message, and the guard
// that keeps C++ exceptions from crossing the C boundary.
#pragma once

#include <cstdarg>
#include <new>
#include <string>

#include "spembed/spembed.h"

namespace spembed::detail {

// Sets this thread's last error message (printf-style) and returns `status`.
spembed_status_t fail(spembed_status_t status, const char* format, ...)
    __attribute__((format(printf, 2, 3)));

// Clears this thread's last error message.
void clear_last_error();

// This thread's last error message ("" if none).
const char* last_error_message();

#define SPEMBED_RETURN_IF_ERROR(expr)            \
  do {                                           \
    const spembed_status_t spembed_status_ = (expr); \
    if (spembed_status_ != SPEMBED_STATUS_SUCCESS) return spembed_status_; \
  } while (0)

// Runs `body` (returning spembed_status_t); turns any exception into a status.
template <typename Body>
spembed_status_t guarded(const char* function, Body&& body) noexcept {
  try {
    clear_last_error();
    return body();
  } catch (const std::bad_alloc&) {
    return fail(SPEMBED_STATUS_ALLOC_FAILED, "%s: host allocation failed", function);
  } catch (const std::exception& e) {
    return fail(SPEMBED_STATUS_INTERNAL_ERROR, "%s: internal error: %s", function, e.what());
  } catch (...) {
    return fail(SPEMBED_STATUS_INTERNAL_ERROR, "%s: internal error", function);
  }
}

}  // namespace spembed::detail
