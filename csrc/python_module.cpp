// Makes the shared library importable as `scratchdet._C`. Importing it runs the
// static TORCH_LIBRARY registrations; the ops are then torch.ops.scratchdet.*.
// Not part of the CMake library, which has no Python.
#include <Python.h>

static struct PyModuleDef scratchdet_module = {PyModuleDef_HEAD_INIT, "_C",
                                               "scratchdet operator library", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&scratchdet_module); }
