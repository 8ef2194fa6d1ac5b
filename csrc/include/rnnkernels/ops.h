// rnnkernels dispatcher ops: the per-layer kernels as torch operators, for programs without Python.
//
// The library rnnkernels_ops (CMake target rnnkernels::ops, librnnkernels_ops.so) registers, when
// it is loaded, the ops torch.ops.rnnkernels_cpp.<cell>_fwd / <cell>_bwd (cell lstm, gru, indrnn):
// schemas, CPU kernels (the functions of lstm.h, gru.h, indrnn.h) and Meta kernels (output shapes).
// A model exported with torch.export on the cpp backend calls the forward ops, so a program that
// runs it without Python (an AOTInductor package through torch::inductor::AOTIModelPackageLoader)
// links rnnkernels::ops and includes this header; examples/aoti/ is one. The Python extension
// rnnkernels._C loads the same library.
//
// One process, one registration: two libraries defining one op namespace abort the process, so a
// second copy of this library (the Python package's beside a C++ install's, say) finds the ops
// registered and registers nothing; the first copy loaded serves them. Keep both one version.
#pragma once

namespace rnnkernels {
inline namespace v0 {

// Whether this process's dispatcher holds the rnnkernels_cpp ops (true once the library is loaded).
bool ops_registered();

}  // namespace v0

namespace detail {
// Takes the address of a function of the library in every program that includes this header, so
// a linker that drops unreferenced shared libraries (--as-needed, the default on some
// distributions and in torch's extension builds) keeps it: the library has to be loaded for its
// registrations to run. `used`: the compiler emits the variable although nothing reads it.
[[gnu::used]] inline bool (*const keep_ops_library)() = &ops_registered;
}  // namespace detail
}  // namespace rnnkernels
