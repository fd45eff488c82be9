// The opaque object behind spembed_handle_t.
#pragma once

#include "spembed/spembed.h"

struct spembed_handle_st {
  int cuda_device = -1;  // -1: CPU only
};
