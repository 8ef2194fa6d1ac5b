// `import rnnkernels._C` loads this module and with it the library rnnkernels_ops (ops.cpp; linked
// into _C when setup.py builds without CMake), whose static initialisers register the ops
// (torch.ops.rnnkernels_cpp.*). No pybind11: dispatcher ops are what torch.compile can trace.
#include <rnnkernels/ops.h>  // references the library, so that the linker keeps it

#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", NULL, -1, NULL};
  return PyModule_Create(&def);
}
