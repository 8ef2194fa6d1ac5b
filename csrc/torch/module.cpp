// `import rnnkernels._C` loads this library, whose static initialisers register the ops
// (torch.ops.rnnkernels_cpp.*). No pybind11: dispatcher ops are what torch.compile can trace.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", NULL, -1, NULL};
  return PyModule_Create(&def);
}
