// What autograd sees of the mopt_fast ops: kernels for the Autograd and ADInplaceOrView dispatch
// keys, for every op at once and for every device (the CPU and CUDA kernels sit below them).
//
// Without these, torch's autograd fallback runs the ops, and two things go wrong:
//  - an in-place write does not bump the version counter of the tensor it writes, so a graph that
//    saved that tensor backpropagates through the new values, silently (torch raises "modified by
//    an inplace operation"), and an inference tensor is updated outside inference mode;
//  - outputs computed from tensors that require grad (gradients after backward(create_graph=True))
//    get a grad_fn that cannot differentiate.
// torch's gradient utilities (clip_grad_norm_ and friends) run under no_grad; these kernels give
// the ops the same meaning at the dispatcher, where torch.compile and every backend see it.
//
// Both kernels are boxed and schema-driven: the written arguments are those the schema in
// mopt_fast/ops.h marks with (a!), and every op of that list gets both, so a new op needs no line
// here.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include "ops.h"  // mopt_fast/ops.h: the op set, also read by mopt_fast/_ops.py

namespace mopt_fast {
namespace {

bool is_written(const c10::Argument& arg) {
  const c10::AliasInfo* info = arg.alias_info();
  return info != nullptr && info->isWrite();
}

// Calls fn(tensor) for every tensor the op writes: the arguments are the top of the stack.
template <typename Fn>
void for_each_written(const c10::OperatorHandle& op, const torch::jit::Stack& stack, const Fn& fn) {
  const auto& args = op.schema().arguments();
  const auto first = stack.end() - static_cast<std::ptrdiff_t>(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    if (!is_written(args[i])) continue;
    const c10::IValue& value = first[static_cast<std::ptrdiff_t>(i)];
    if (value.isTensor()) {
      fn(value.toTensor());
    } else if (value.isTensorList()) {
      for (const at::Tensor& t : value.toTensorList()) fn(t);
    }
  }
}

// Autograd: the op is not differentiable and records no history, as if run under no_grad.
void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                     torch::jit::Stack* stack) {
  at::AutoDispatchBelowAutograd below_autograd;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// ADInplaceOrView: bump the version of every written tensor, as torch's in-place ops do. Inference
// tensors are refused outside inference mode before the kernel runs, so a refused call writes
// nothing; the bumps follow the kernel, so a call the kernel rejects leaves versions as they were.
void inplace_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                    torch::jit::Stack* stack) {
  const bool inference_mode = c10::InferenceMode::is_enabled();
  std::vector<at::Tensor> written;
  for_each_written(op, *stack, [&](const at::Tensor& t) {
    if (!t.defined()) return;
    // torch's own message (c10::VariableVersion::bump).
    TORCH_CHECK(inference_mode || !t.is_inference(),
                "Inplace update to inference tensor outside InferenceMode is not allowed."
                "You can make a clone to get a normal tensor before doing inplace update."
                "See https://github.com/pytorch/rfcs/pull/17 for more details.");
    written.push_back(t);
  });
  {
    at::AutoDispatchBelowADInplaceOrView below_view;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const at::Tensor& t : written) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

// Fallbacks cannot be scoped to one namespace, so each op of mopt_fast/ops.h is named.
TORCH_LIBRARY_IMPL(mopt_fast, Autograd, m) {
#define MOPT_FAST_AUTOGRAD(name, schema) \
  m.impl(#name, torch::CppFunction::makeFromBoxedFunction<&autograd_kernel>());
  MOPT_FAST_OPS(MOPT_FAST_AUTOGRAD)
#undef MOPT_FAST_AUTOGRAD
}

TORCH_LIBRARY_IMPL(mopt_fast, ADInplaceOrView, m) {
#define MOPT_FAST_INPLACE(name, schema) \
  m.impl(#name, torch::CppFunction::makeFromBoxedFunction<&inplace_kernel>());
  MOPT_FAST_OPS(MOPT_FAST_INPLACE)
#undef MOPT_FAST_INPLACE
}

}  // namespace mopt_fast
