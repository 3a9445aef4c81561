// The Python module mopt_fast._C. Importing it loads the shared library, whose static initializers
// register the ops above with torch; the module itself only reports how it was built.
//
// Its name comes from the build: setup.py's ahead-of-time build names it _C, the just-in-time build
// of mopt_fast/_extension.py (torch.utils.cpp_extension.load) names it by its `name=`; both define
// TORCH_EXTENSION_NAME, and the init function must be PyInit_<that name>.
#include <Python.h>

#include "common.h"

#ifndef MOPT_FAST_CPU_ISA
#define MOPT_FAST_CPU_ISA "default"
#endif

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define MOPT_FAST_STR_(x) #x
#define MOPT_FAST_STR(x) MOPT_FAST_STR_(x)
#define MOPT_FAST_CAT_(a, b) a##b
#define MOPT_FAST_CAT(a, b) MOPT_FAST_CAT_(a, b)

#ifdef MOPT_FAST_WITH_CUDA
static const int kWithCuda = 1;
#else
static const int kWithCuda = 0;
#endif

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, MOPT_FAST_STR(TORCH_EXTENSION_NAME),
    "mopt_fast compiled kernels (CPU C++; CUDA when built with it)", -1, nullptr};

PyMODINIT_FUNC MOPT_FAST_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
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
