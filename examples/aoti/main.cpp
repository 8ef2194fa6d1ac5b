// Runs a model compiled by torch.export + AOTInductor (export_model.py) in a C++ program without
// Python: it links libtorch and rnnkernels' op library (rnnkernels::ops) only. Loading that
// library registers the ops torch.ops.rnnkernels_cpp.* that the package's code calls.
//
//   rnnkernels_aoti MODEL.pt2 INPUTS.pt OUTPUTS.pt
//
// INPUTS.pt: the model's positional inputs, a tuple of tensors saved by torch.save. OUTPUTS.pt:
// its outputs, a tuple of tensors, for torch.load. Exit 0 on success, 1 on an error.
#include <rnnkernels/ops.h>  // links the op library, so the package's rnnkernels ops resolve

#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<char>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::vector<at::Tensor> load_tensors(const std::string& path) {
  const c10::IValue value = torch::jit::pickle_load(read_file(path));
  if (!value.isTuple()) throw std::runtime_error(path + ": expected a tuple of tensors");
  std::vector<at::Tensor> tensors;
  for (const c10::IValue& element : value.toTupleRef().elements()) {
    tensors.push_back(element.toTensor());
  }
  return tensors;
}

void save_tensors(const std::string& path, const std::vector<at::Tensor>& tensors) {
  const std::vector<c10::IValue> elements(tensors.begin(), tensors.end());
  write_file(path, torch::jit::pickle_save(c10::ivalue::Tuple::create(elements)));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL.pt2 INPUTS.pt OUTPUTS.pt\n", argv[0]);
    return 1;
  }
  try {
    TORCH_CHECK(rnnkernels::ops_registered(), "the rnnkernels_cpp ops are not registered");
    torch::inductor::AOTIModelPackageLoader package(argv[1]);
    const std::vector<at::Tensor> outputs = package.run(load_tensors(argv[2]));
    for (const at::Tensor& output : outputs) {
      std::printf("output %s %s\n", c10::toString(output.scalar_type()),
                  c10::str(output.sizes()).c_str());
    }
    save_tensors(argv[3], outputs);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
