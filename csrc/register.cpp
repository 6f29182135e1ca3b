// Op registration of lamda_ext: one schema per op (TORCH_LIBRARY), the CPU and
// CUDA implementations (TORCH_LIBRARY_IMPL), and the Python module init so that
// `import lamda_ext._C` loads this library.  Fake (meta) implementations and
// the autograd formulas are registered from Python (lamda_ext/ops.py).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(lamda_ext, m) {
  m.def("taylor_unary(Tensor coeffs, str kind, float alpha) -> Tensor");
  m.def("taylor_unary_backward(Tensor grad, Tensor coeffs, str kind, float alpha) -> Tensor");
  m.def("taylor_cross_entropy(Tensor logit_coeffs, Tensor target, float label_smoothing) -> Tensor");
  m.def("taylor_cross_entropy_backward(Tensor grad, Tensor logit_coeffs, Tensor target, float label_smoothing)"
        " -> Tensor");
  m.def("taylor_cross_entropy_deg1(Tensor z0, Tensor v, Tensor target, int order, float label_smoothing) -> Tensor");
  m.def("taylor_cross_entropy_deg1_backward(Tensor grad, Tensor z0, Tensor v, Tensor target, int order,"
        " float label_smoothing) -> (Tensor, Tensor)");
}

#define LX_IMPL_OPS(m, dev)                                                                  \
  m.impl("taylor_unary", &lamda_ext::taylor_unary_##dev);                                    \
  m.impl("taylor_unary_backward", &lamda_ext::taylor_unary_backward_##dev);                  \
  m.impl("taylor_cross_entropy", &lamda_ext::taylor_cross_entropy_##dev);                    \
  m.impl("taylor_cross_entropy_backward", &lamda_ext::taylor_cross_entropy_backward_##dev);  \
  m.impl("taylor_cross_entropy_deg1", &lamda_ext::taylor_cross_entropy_deg1_##dev);          \
  m.impl("taylor_cross_entropy_deg1_backward", &lamda_ext::taylor_cross_entropy_deg1_backward_##dev);

TORCH_LIBRARY_IMPL(lamda_ext, CPU, m) { LX_IMPL_OPS(m, cpu) }

#ifdef LAMDA_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(lamda_ext, CUDA, m) { LX_IMPL_OPS(m, cuda) }
#endif

#ifndef LAMDA_EXT_NO_PYTHON
#include <Python.h>

// `import lamda_ext._C` runs the static registrations above; the module itself
// only carries the build flag `cuda_compiled`.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "lamda_ext Taylor kernels (torch ops)", -1,
                                          nullptr};
  PyObject* mod = PyModule_Create(&module_def);
  if (mod == nullptr) return nullptr;
#ifdef LAMDA_EXT_WITH_CUDA
  const long cuda_compiled = 1;
#else
  const long cuda_compiled = 0;
#endif
  if (PyModule_AddIntConstant(mod, "cuda_compiled", cuda_compiled) != 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
#endif
