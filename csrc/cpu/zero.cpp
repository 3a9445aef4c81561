// In-place zero of a gradient list: all-bits-zero is +0.0 in every floating dtype, so each work
// item is one memset over its bytes.
#include "multi_tensor_apply.h"

#include <torch/library.h>

#include <cstring>

namespace mopt_fast::cpu {
namespace {

void zero_inplace_cpu(at::TensorList tensors) {
  check_tensors(tensors, "zero", /*writes=*/true);
  for_each_round(tensors, [&](at::TensorList round) {
    const Plan plan = make_plan(round);
    for_each_item(plan, [&](int64_t, const WorkItem& item) {
      const Span& span = plan.spans[item.tensor];
      const int64_t elem = span.element_size;
      auto* base = static_cast<char*>(span.data);
      std::memset(base + item.begin * elem, 0, static_cast<size_t>((item.end - item.begin) * elem));
    });
    write_back(plan, round);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt_fast, CPU, m) {
  m.impl("zero_inplace", &zero_inplace_cpu);
}

}  // namespace mopt_fast::cpu
