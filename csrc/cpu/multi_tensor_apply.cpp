#include "multi_tensor_apply.h"

namespace mopt_fast::cpu {

void check_tensors(at::TensorList tensors, const char* op, bool writes) {
  mopt_fast::check_tensors(tensors, op, at::Device(at::kCPU), writes);
}

Plan make_plan(at::TensorList tensors) {
  Plan plan;
  const auto n = static_cast<int64_t>(tensors.size());
  plan.spans.reserve(n);
  plan.first_item.reserve(n + 1);
  int64_t n_items = 0;
  for (const at::Tensor& t : tensors) n_items += (t.numel() + kChunkElems - 1) / kChunkElems;
  plan.items.reserve(n_items);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    // A dense non-contiguous tensor (a transpose, channels-last) still covers one run of memory of
    // exactly numel elements starting at data_ptr: elementwise ops and sums can use it directly.
    const at::Tensor* dense = &t;
    if (!t.is_non_overlapping_and_dense()) {
      plan.copies.emplace_back(i, t.contiguous());
      dense = &plan.copies.back().second;
    }
    plan.spans.push_back({dense->data_ptr(), t.scalar_type()});
    plan.first_item.push_back(static_cast<int64_t>(plan.items.size()));
    const int64_t numel = t.numel();
    for (int64_t begin = 0; begin < numel; begin += kChunkElems) {
      plan.items.push_back({i, begin, std::min(begin + kChunkElems, numel)});
    }
  }
  plan.first_item.push_back(static_cast<int64_t>(plan.items.size()));
  return plan;
}

void write_back(const Plan& plan, at::TensorList tensors) {
  for (const auto& [i, copy] : plan.copies) {
    // The caller's tensor is declared mutable (Tensor(a!)) in the op schema.
    tensors[i].copy_(copy);
  }
}

}  // namespace mopt_fast::cpu
