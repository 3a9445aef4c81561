// The Python module mopt_fast._C. Importing it loads the shared library, whose static initializers
// register the ops above with torch; the module itself only reports how it was built.
#include <Python.h>

#include "common.h"

#ifndef MOPT_FAST_CPU_ISA
#define MOPT_FAST_CPU_ISA "default"
#endif

#ifdef MOPT_FAST_WITH_CUDA
static const int kWithCuda = 1;
#else
static const int kWithCuda = 0;
#endif

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C", "mopt_fast compiled kernels (CPU C++; CUDA when built with it)",
    -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  // The values every backend shares (csrc/common.h), for mopt_fast/_ops.py's test to compare.
  using mopt_fast::NormKind;
  if (PyModule_AddStringConstant(m, "cpu_isa", MOPT_FAST_CPU_ISA) < 0 ||
      PyModule_AddIntConstant(m, "with_cuda", kWithCuda) < 0 ||
      PyModule_AddIntConstant(m, "chunk_elems", mopt_fast::kChunkElems) < 0 ||
      PyModule_AddIntConstant(m, "norm_kind_l2", static_cast<int>(NormKind::kL2)) < 0 ||
      PyModule_AddIntConstant(m, "norm_kind_l1", static_cast<int>(NormKind::kL1)) < 0 ||
      PyModule_AddIntConstant(m, "norm_kind_linf", static_cast<int>(NormKind::kLinf)) < 0 ||
      PyModule_AddIntConstant(m, "norm_kind_lp", static_cast<int>(NormKind::kLp)) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
