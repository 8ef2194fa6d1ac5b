// A downstream C++ program: runs whole LSTM, GRU, IndRNN and RNN layers forward and backward
// through rnnkernels' C++ API and checks every output and gradient against numbers the Python
// package saved (its `reference` oracle, autograd for the gradients; tests/test_cmake.py writes
// them).
//
//   rnnkernels_downstream CASE_FILE...
//
// A case file is whitespace-separated text: `cell lstm|gru|indrnn|rnn`, `reverse 0|1`,
// `nonlinearity relu|tanh`, and `tensor NAME NDIM D0 .. Dn-1 V0 V1 ...` records (fp64 values,
// row-major; lengths too). Inputs: x w_ih w_hh|u b_ih b_hh w_hr h0 c0 lengths grad_y grad_hT
// grad_cT; expected: y hT cT d_x d_w_ih d_w_hh|d_u d_b_ih d_b_hh d_w_hr d_h0 d_c0. Absent optional
// inputs are simply not written. Each case runs in fp64 and in fp32. Exit 0 when all match,
// 1 on a mismatch, 2 on a bad file or an error from the library.
#include <rnnkernels/layer.h>
#include <rnnkernels/rnnkernels.h>

#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Case {
  std::string path, cell, nonlinearity = "relu";
  bool reverse = false;
  std::map<std::string, at::Tensor> tensors;  // fp64, as read

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
};

Case load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  Case c;
  c.path = path;
  std::string key;
  while (in >> key) {
    if (key == "cell") {
      in >> c.cell;
    } else if (key == "reverse") {
      int reverse = 0;
      in >> reverse;
      c.reverse = reverse != 0;
    } else if (key == "nonlinearity") {
      in >> c.nonlinearity;
    } else if (key == "tensor") {
      std::string name;
      int64_t ndim = 0;
      in >> name >> ndim;
      std::vector<int64_t> sizes(ndim);
      int64_t numel = 1;
      for (auto& size : sizes) {
        in >> size;
        numel *= size;
      }
      std::vector<double> values(numel);
      for (auto& value : values) in >> value;
      if (!in) throw std::runtime_error(path + ": truncated tensor " + name);
      c.tensors[name] = at::from_blob(values.data(), sizes, at::kDouble).clone();
    } else {
      throw std::runtime_error(path + ": unknown record '" + key + "'");
    }
  }
  if (c.cell.empty()) throw std::runtime_error(path + ": no cell");
  return c;
}

// The inputs of one run, converted to the dtype under test (lengths to int64).
struct Inputs {
  const Case& c;
  at::ScalarType dtype;

  at::Tensor operator[](const std::string& name) const {
    auto found = c.tensors.find(name);
    if (found == c.tensors.end()) throw std::runtime_error(c.path + ": no tensor " + name);
    return found->second.to(name == "lengths" ? at::kLong : dtype);
  }
  std::optional<at::Tensor> optional(const std::string& name) const {
    if (!c.has(name)) return std::nullopt;
    return (*this)[name];
  }
};

// Compares one result with the saved number; absent in the file means "must be undefined".
class Checker {
 public:
  Checker(const Case& c, at::ScalarType dtype, double tolerance)
      : c_(c), dtype_(dtype), tolerance_(tolerance) {}

  void operator()(const std::string& name, const at::Tensor& got) {
    const char* dtype_name = dtype_ == at::kDouble ? "float64" : "float32";
    auto found = c_.tensors.find(name);
    if (found == c_.tensors.end()) {
      if (got.defined()) fail(name, "defined, but the oracle has no such gradient");
      return;
    }
    const at::Tensor& want = found->second;
    if (!got.defined()) return fail(name, "undefined");
    if (got.scalar_type() != dtype_) return fail(name, "wrong dtype");
    if (got.sizes() != want.sizes()) return fail(name, "wrong shape");
    const at::Tensor got64 = got.to(at::kDouble);
    // Gradients of weights sum over T*B terms: scale the absolute tolerance with the values.
    const double scale = want.numel() ? std::max(1.0, want.abs().max().item<double>()) : 1.0;
    const double diff = want.numel() ? got64.sub(want).abs().max().item<double>() : 0.0;
    const bool ok = got64.allclose(want, tolerance_, tolerance_ * scale);
    std::printf("%-7s %s %-7s max|diff| %.3g %s\n", c_.cell.c_str(), dtype_name, name.c_str(),
                diff, ok ? "ok" : "MISMATCH");
    if (!ok) ++failures;
  }

  int failures = 0;

 private:
  void fail(const std::string& name, const char* why) {
    std::printf("%-7s %-7s %s: MISMATCH\n", c_.cell.c_str(), name.c_str(), why);
    ++failures;
  }

  const Case& c_;
  at::ScalarType dtype_;
  double tolerance_;
};

int run_lstm(const Inputs& in, Checker& check) {
  const bool reverse = in.c.reverse;
  auto out = rnnkernels::lstm_layer_fwd(in["x"], in["w_ih"], in["w_hh"], in.optional("b_ih"),
                                        in.optional("b_hh"), in.optional("w_hr"), in["h0"],
                                        in["c0"], in.optional("lengths"), reverse);
  check("y", out.y);
  check("hT", out.hT);
  check("cT", out.cT);
  auto grads = rnnkernels::lstm_layer_bwd(
      in["grad_y"], in.optional("grad_hT"), in.optional("grad_cT"), in["x"], in["w_ih"],
      in["w_hh"], in.optional("b_ih"), in.optional("b_hh"), in.optional("w_hr"), in["h0"],
      in["c0"], in.optional("lengths"), reverse, out);
  check("d_x", grads.d_x);
  check("d_w_ih", grads.d_w_ih);
  check("d_w_hh", grads.d_w_hh);
  check("d_b_ih", grads.d_b_ih);
  check("d_b_hh", grads.d_b_hh);
  check("d_w_hr", grads.d_w_hr);
  check("d_h0", grads.d_h0);
  check("d_c0", grads.d_c0);
  auto [y, hT, cT] = rnnkernels::lstm_layer(in["x"], in["w_ih"], in["w_hh"], in.optional("b_ih"),
                                            in.optional("b_hh"), in.optional("w_hr"), in["h0"],
                                            in["c0"], in.optional("lengths"), reverse);
  check("y", y);
  return 0;
}

int run_gru(const Inputs& in, Checker& check) {
  const bool reverse = in.c.reverse;
  auto out = rnnkernels::gru_layer_fwd(in["x"], in["w_ih"], in["w_hh"], in.optional("b_ih"),
                                       in.optional("b_hh"), in["h0"], in.optional("lengths"),
                                       reverse);
  check("y", out.y);
  check("hT", out.hT);
  auto grads = rnnkernels::gru_layer_bwd(in["grad_y"], in.optional("grad_hT"), in["x"],
                                         in["w_ih"], in["w_hh"], in.optional("b_ih"),
                                         in.optional("b_hh"), in["h0"], in.optional("lengths"),
                                         reverse, out);
  check("d_x", grads.d_x);
  check("d_w_ih", grads.d_w_ih);
  check("d_w_hh", grads.d_w_hh);
  check("d_b_ih", grads.d_b_ih);
  check("d_b_hh", grads.d_b_hh);
  check("d_h0", grads.d_h0);
  auto [y, hT] = rnnkernels::gru_layer(in["x"], in["w_ih"], in["w_hh"], in.optional("b_ih"),
                                       in.optional("b_hh"), in["h0"], in.optional("lengths"),
                                       reverse);
  check("y", y);
  return 0;
}

int run_indrnn(const Inputs& in, Checker& check) {
  const bool reverse = in.c.reverse;
  const std::string& act = in.c.nonlinearity;
  auto out = rnnkernels::indrnn_layer_fwd(in["x"], in["w_ih"], in["u"], in.optional("b_ih"),
                                          in.optional("b_hh"), in["h0"], in.optional("lengths"),
                                          reverse, act);
  check("y", out.y);
  check("hT", out.hT);
  auto grads = rnnkernels::indrnn_layer_bwd(in["grad_y"], in.optional("grad_hT"), in["x"],
                                            in["w_ih"], in["u"], in.optional("b_ih"),
                                            in.optional("b_hh"), in["h0"],
                                            in.optional("lengths"), reverse, act, out);
  check("d_x", grads.d_x);
  check("d_w_ih", grads.d_w_ih);
  check("d_u", grads.d_u);
  check("d_b_ih", grads.d_b_ih);
  check("d_b_hh", grads.d_b_hh);
  check("d_h0", grads.d_h0);
  auto [y, hT] = rnnkernels::indrnn_layer(in["x"], in["w_ih"], in["u"], in.optional("b_ih"),
                                          in.optional("b_hh"), in["h0"], in.optional("lengths"),
                                          reverse, act);
  check("y", y);
  return 0;
}

int run_rnn(const Inputs& in, Checker& check) {
  const bool reverse = in.c.reverse;
  const std::string& act = in.c.nonlinearity;
  auto out = rnnkernels::rnn_layer_fwd(in["x"], in["w_ih"], in["w_hh"], in.optional("b_ih"),
                                       in.optional("b_hh"), in["h0"], in.optional("lengths"),
                                       reverse, act);
  check("y", out.y);
  check("hT", out.hT);
  auto grads = rnnkernels::rnn_layer_bwd(in["grad_y"], in.optional("grad_hT"), in["x"],
                                         in["w_ih"], in["w_hh"], in.optional("b_ih"),
                                         in.optional("b_hh"), in["h0"], in.optional("lengths"),
                                         reverse, act, out);
  check("d_x", grads.d_x);
  check("d_w_ih", grads.d_w_ih);
  check("d_w_hh", grads.d_w_hh);
  check("d_b_ih", grads.d_b_ih);
  check("d_b_hh", grads.d_b_hh);
  check("d_h0", grads.d_h0);
  auto [y, hT] = rnnkernels::rnn_layer(in["x"], in["w_ih"], in["w_hh"], in.optional("b_ih"),
                                       in.optional("b_hh"), in["h0"], in.optional("lengths"),
                                       reverse, act);
  check("y", y);
  check("hT", hT);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASE_FILE...\n", argv[0]);
    return 2;
  }
  int failures = 0;
  try {
    for (int i = 1; i < argc; ++i) {
      const Case c = load(argv[i]);
      // (dtype, tolerance): fp64 differs from the oracle only by summation order; fp32 also by
      // rounding and the kernels' vectorised tanh (|error| < 4e-7).
      for (auto [dtype, tolerance] :
           {std::pair{at::kDouble, 1e-12}, std::pair{at::kFloat, 2e-5}}) {
        Inputs in{c, dtype};
        Checker check(c, dtype, tolerance);
        if (c.cell == "lstm") {
          run_lstm(in, check);
        } else if (c.cell == "gru") {
          run_gru(in, check);
        } else if (c.cell == "indrnn") {
          run_indrnn(in, check);
        } else if (c.cell == "rnn") {
          run_rnn(in, check);
        } else {
          throw std::runtime_error(c.path + ": unknown cell " + c.cell);
        }
        failures += check.failures;
      }
    }
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "rnnkernels error: %s\n", e.what_without_backtrace());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  std::printf(failures ? "%d MISMATCHES\n" : "all ok\n", failures);
  return failures ? 1 : 0;
}
