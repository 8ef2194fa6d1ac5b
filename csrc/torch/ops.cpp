// The one place that registers dispatcher ops: schemas of the rnnkernels_cpp namespace and their
// CPU implementations, the public functions of include/rnnkernels/, and Meta kernels for the
// output shapes, which torch.compile, torch.export and FakeTensor use. Built into its own library,
// rnnkernels_ops (CMakeLists.txt), which the Python extension rnnkernels._C links and C++ programs
// link as rnnkernels::ops (include/rnnkernels/ops.h): an exported model's graph calls these ops,
// and AOTInductor runs it where no Python is. Autograd lives in Python (rnnkernels/ops/cpp.py
// gives the forward ops the formulas of the rnnkernels ops of rnnkernels/ops/<cell>/op.py). (The
// Python side owns the `rnnkernels` namespace; two libraries defining one namespace abort the
// process, hence a distinct one, registered once per process: `registration` below.)
#include <rnnkernels/ops.h>
#include <rnnkernels/rnnkernels.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace {

using Tensors2 = std::tuple<at::Tensor, at::Tensor>;
using Tensors3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensors4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// An absent weight's gradient is an empty [0] tensor, as the kernels return it.
at::Tensor grad_or_empty(const std::optional<at::Tensor>& weight, const at::Tensor& like) {
  return weight ? weight->new_empty_symint(weight->sym_sizes()) : like.new_empty({0});
}

at::Tensor like(const at::Tensor& t) { return t.new_empty_symint(t.sym_sizes()); }

// The activations a forward saves (gates, cells, hn): float for a bfloat16 or float16 layer,
// which the kernels run in float (csrc/cpu/common.h), else the layer's dtype.
at::TensorOptions saved(const at::Tensor& gx) {
  const at::ScalarType t = gx.scalar_type();
  return gx.options().dtype(t == at::kBFloat16 || t == at::kHalf ? at::kFloat : t);
}

Tensors5 lstm_fwd_meta(const at::Tensor& gx, const at::Tensor&, const std::optional<at::Tensor>&,
                       const at::Tensor& h0, const at::Tensor& c0,
                       const std::optional<at::Tensor>&, bool, bool save) {
  const c10::SymInt T = gx.sym_size(0), B = gx.sym_size(1), R = h0.sym_size(1), H = c0.sym_size(1);
  const c10::SymInt kept = save ? T : c10::SymInt(0);
  return {gx.new_empty_symint({T, B, R}), gx.new_empty_symint({B, R}),
          gx.new_empty_symint({B, H}), gx.new_empty_symint({kept, B, H * 4}, saved(gx)),
          gx.new_empty_symint({kept, B, H}, saved(gx))};
}

Tensors5 lstm_bwd_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                       const at::Tensor& h0, const at::Tensor& c0,
                       const std::optional<at::Tensor>&, bool, const at::Tensor& y,
                       const at::Tensor& gates, const at::Tensor&) {
  return {y.new_empty_symint(gates.sym_sizes()), like(w_hh), grad_or_empty(w_hr, y), like(h0),
          like(c0)};
}

Tensors4 gru_fwd_meta(const at::Tensor& gx, const at::Tensor&, const std::optional<at::Tensor>&,
                      const at::Tensor& h0, const std::optional<at::Tensor>&, bool,
                      bool save) {
  const c10::SymInt T = gx.sym_size(0), B = gx.sym_size(1), H = h0.sym_size(1);
  const c10::SymInt kept = save ? T : c10::SymInt(0);
  return {gx.new_empty_symint({T, B, H}), gx.new_empty_symint({B, H}),
          gx.new_empty_symint({kept, B, H * 3}, saved(gx)),
          gx.new_empty_symint({kept, B, H}, saved(gx))};
}

Tensors4 gru_bwd_meta(const at::Tensor&, const at::Tensor&, const at::Tensor& w_hh,
                      const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                      const std::optional<at::Tensor>&, bool, const at::Tensor& y,
                      const at::Tensor& gates, const at::Tensor&) {
  return {y.new_empty_symint(gates.sym_sizes()), like(w_hh), grad_or_empty(b_hh, y), like(h0)};
}

Tensors2 indrnn_fwd_meta(const at::Tensor& gx, const at::Tensor&, const at::Tensor& h0,
                         const std::optional<at::Tensor>&, bool, c10::string_view) {
  return {like(gx), like(h0)};
}

Tensors3 indrnn_bwd_meta(const at::Tensor&, const at::Tensor&, const at::Tensor& u,
                         const at::Tensor& h0, const std::optional<at::Tensor>&, bool,
                         c10::string_view, const at::Tensor& y) {
  return {like(y), like(u), like(h0)};
}

Tensors2 rnn_fwd_meta(const at::Tensor& gx, const at::Tensor&, const at::Tensor& h0,
                      const std::optional<at::Tensor>&, bool, c10::string_view) {
  return {like(gx), like(h0)};
}

Tensors3 rnn_bwd_meta(const at::Tensor&, const at::Tensor&, const at::Tensor& w_hh,
                      const at::Tensor& h0, const std::optional<at::Tensor>&, bool,
                      c10::string_view, const at::Tensor& y) {
  return {like(y), like(w_hh), like(h0)};
}

// y [*, n] = x [*, k] W^T + bias, W [n, k] (include/rnnkernels/linear.h).
at::Tensor linear_meta(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>&) {
  std::vector<c10::SymInt> sizes(x.sym_sizes().begin(), x.sym_sizes().end());
  sizes.back() = weight.sym_size(0);
  return x.new_empty_symint(sizes);
}

void define_ops(torch::Library& m) {
  m.def(
      "lstm_fwd(Tensor gx, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths, "
      "bool reverse, bool save=True) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_bwd(Tensor grad_y, Tensor grad_hT, Tensor grad_cT, Tensor w_hh, Tensor? w_hr, "
      "Tensor h0, Tensor c0, Tensor? lengths, bool reverse, Tensor y, Tensor gates, "
      "Tensor cells) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_fwd(Tensor gx, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? lengths, bool reverse, "
      "bool save=True) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_bwd(Tensor grad_y, Tensor grad_hT, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths, bool reverse, Tensor y, Tensor gates, Tensor hn) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "indrnn_fwd(Tensor gx, Tensor u, Tensor h0, Tensor? lengths, bool reverse, "
      "str nonlinearity) -> (Tensor, Tensor)");
  m.def(
      "indrnn_bwd(Tensor grad_y, Tensor grad_hT, Tensor u, Tensor h0, Tensor? lengths, "
      "bool reverse, str nonlinearity, Tensor y) -> (Tensor, Tensor, Tensor)");
  m.def(
      "rnn_fwd(Tensor gx, Tensor w_hh, Tensor h0, Tensor? lengths, bool reverse, "
      "str nonlinearity) -> (Tensor, Tensor)");
  m.def(
      "rnn_bwd(Tensor grad_y, Tensor grad_hT, Tensor w_hh, Tensor h0, Tensor? lengths, "
      "bool reverse, str nonlinearity, Tensor y) -> (Tensor, Tensor, Tensor)");
  // For the benchmark (include/rnnkernels/peak.h); no tensor to dispatch on: one kernel for all.
  m.def("fma_rate(int rounds) -> float", &rnnkernels::fma_rate);
  // The cpp backend's input projection (rnnkernels/ops/linear.py gives it autograd).
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

void cpu_kernels(torch::Library& m) {
  m.impl("lstm_fwd", &rnnkernels::lstm_fwd);
  m.impl("lstm_bwd", &rnnkernels::lstm_bwd);
  m.impl("gru_fwd", &rnnkernels::gru_fwd);
  m.impl("gru_bwd", &rnnkernels::gru_bwd);
  m.impl("indrnn_fwd", &rnnkernels::indrnn_fwd);
  m.impl("indrnn_bwd", &rnnkernels::indrnn_bwd);
  m.impl("rnn_fwd", &rnnkernels::rnn_fwd);
  m.impl("rnn_bwd", &rnnkernels::rnn_bwd);
  m.impl("linear", &rnnkernels::linear);
}

void meta_kernels(torch::Library& m) {
  m.impl("lstm_fwd", &lstm_fwd_meta);
  m.impl("lstm_bwd", &lstm_bwd_meta);
  m.impl("gru_fwd", &gru_fwd_meta);
  m.impl("gru_bwd", &gru_bwd_meta);
  m.impl("indrnn_fwd", &indrnn_fwd_meta);
  m.impl("indrnn_bwd", &indrnn_bwd_meta);
  m.impl("rnn_fwd", &rnn_fwd_meta);
  m.impl("rnn_bwd", &rnn_bwd_meta);
  m.impl("linear", &linear_meta);
}

constexpr const char* kNamespace = "rnnkernels_cpp";

std::optional<c10::OperatorHandle> registered_op() {
  return c10::Dispatcher::singleton().findSchema({"rnnkernels_cpp::lstm_fwd", ""});
}

// Registers the ops when the library loads, as TORCH_LIBRARY / TORCH_LIBRARY_IMPL would, unless
// the process holds them already: a second copy of this library (the Python package's and a C++
// install's in one process) would abort the process with TORCH_LIBRARY. The first copy's
// registrations serve both, and end when it is unloaded.
struct Registration {
  std::optional<torch::Library> def, cpu, meta;

  Registration() {
    if (registered_op()) return;
    def.emplace(torch::Library::DEF, kNamespace, std::nullopt, __FILE__, __LINE__);
    define_ops(*def);
    cpu.emplace(torch::Library::IMPL, kNamespace, c10::DispatchKey::CPU, __FILE__, __LINE__);
    cpu_kernels(*cpu);
    meta.emplace(torch::Library::IMPL, kNamespace, c10::DispatchKey::Meta, __FILE__, __LINE__);
    meta_kernels(*meta);
  }
};

const Registration registration;

}  // namespace

namespace rnnkernels {
inline namespace v0 {

bool ops_registered() { return registered_op().has_value(); }

}  // namespace v0
}  // namespace rnnkernels
