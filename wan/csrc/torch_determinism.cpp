// PyTorch's deterministic mode for the LibTorch backend (wan's `tch` feature). tch exposes no
// binding for it, so these few C functions call ATen's global context directly. No C++
// exception may cross into Rust: each function catches and reports failure by its result.
#include <ATen/Context.h>

extern "C" {

// Deterministic algorithms on (an op without a deterministic kernel raises instead of warning),
// cuDNN's benchmark autotuning off and its deterministic algorithms on. 0 on success.
int wan_torch_set_deterministic(int on) {
  try {
    at::globalContext().setDeterministicAlgorithms(on != 0, /*warn_only=*/false);
    at::globalContext().setBenchmarkCuDNN(false);
    at::globalContext().setDeterministicCuDNN(on != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// 1 when deterministic algorithms are on and cuDNN benchmarking is off, else 0; -1 on error.
int wan_torch_is_deterministic(void) {
  try {
    const auto& ctx = at::globalContext();
    return ctx.deterministicAlgorithms() && !ctx.deterministicAlgorithmsWarnOnly() &&
                   ctx.deterministicCuDNN() && !ctx.benchmarkCuDNN()
               ? 1
               : 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
