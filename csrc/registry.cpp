// The mopt_fast op set: the schemas of mopt_fast/ops.h. Kernels register themselves per device
// (csrc/cpu/*.cpp for CPU, csrc/cuda for CUDA), autograd.cpp keeps the ops out of autograd, and
// fake kernels for torch.compile live in mopt_fast/_ops.py. Every op takes a non-empty list of
// tensors on one device; the Python layer groups by device and never calls an op with an empty
// list.
#include <torch/library.h>

#include "ops.h"  // mopt_fast/ops.h: the op set, also read by mopt_fast/_ops.py

TORCH_LIBRARY(mopt_fast, m) {
#define MOPT_FAST_DEFINE(name, schema) m.def(#name schema);
  MOPT_FAST_OPS(MOPT_FAST_DEFINE)
#undef MOPT_FAST_DEFINE
}
