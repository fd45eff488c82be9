#include "host/common/errors.h"

#include <cstdio>

namespace spembed::detail {
namespace {
thread_local std::string t_last_error;
}

spembed_status_t fail(spembed_status_t status, const char* format, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  t_last_error = buffer;
  return status;
}

void clear_last_error() { t_last_error.clear(); }

const char* last_error_message() { return t_last_error.c_str(); }

}  // namespace spembed::detail
