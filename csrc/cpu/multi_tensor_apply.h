// Generic multi-tensor apply for the CPU backend.
//
// A list of tensors of any sizes is cut into (tensor, chunk) work items of at most kChunkElems
// elements. Work items are spread over ATen's thread pool, so one huge tensor and a thousand tiny
// ones both use every thread. The partition depends only on the tensor sizes, never on the thread
// count, and reductions keep one partial per work item combined in item order afterwards: results
// are bitwise identical for any number of threads.
//
// Every size and offset is int64, so tensors past 2^31 elements work.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>

#include "checks.h"
#include "common.h"

#include <cstdint>
#include <type_traits>
#include <vector>

namespace mopt_fast::cpu {

// Work items are kChunkElems (csrc/common.h) long.
struct WorkItem {
  int64_t tensor;  // index into Plan::spans
  int64_t begin;   // element offset inside that tensor
  int64_t end;
};

// One tensor's elements as a dense run of memory. Raw pointers, not Tensor handles: the caller's
// list keeps the tensors alive, and a thousand refcount round trips per call are measurable.
struct Span {
  void* data;
  at::ScalarType dtype;
};

// The tensors an op reads or writes, each as one dense run of memory, and the work items over them.
struct Plan {
  // The caller's own memory when a tensor is one dense run (contiguous or a permutation of it),
  // otherwise that of a contiguous copy held in `copies`.
  std::vector<Span> spans;
  // (index in the list, contiguous copy) of the non-dense tensors: written back after in-place ops.
  std::vector<std::pair<int64_t, at::Tensor>> copies;
  std::vector<WorkItem> items;
  // items of tensor i are items[first_item[i] .. first_item[i + 1]).
  std::vector<int64_t> first_item;
};

// Checks that every tensor can be handled by the CPU kernels (see mopt_fast::check_tensors). Runs
// before anything is written, so a rejected call leaves every tensor as it was.
void check_tensors(at::TensorList tensors, const char* op, bool writes);

// Builds the work items for `tensors` (already checked); a tensor that is not one dense run of
// memory is read through a contiguous copy.
Plan make_plan(at::TensorList tensors);

// After an in-place op: copies the results of non-dense tensors back into the caller's tensors.
void write_back(const Plan& plan, at::TensorList tensors);

// Runs fn(item_index, item) for every work item on ATen's thread pool.
template <typename Fn>
void for_each_item(const Plan& plan, const Fn& fn) {
  const auto n = static_cast<int64_t>(plan.items.size());
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i, plan.items[i]);
  });
}

// Dispatches on the dtype of one work item's tensor: float, double, half and bfloat16.
#define MOPT_DISPATCH_FLOATING(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

// ---------------------------------------------------------------------------------------------
// Vector loads and stores in the compute type: fp16/bf16 are widened to fp32 in registers, float
// and double are used as they are. One "step" covers VecIO<T>::kStep elements.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct VecIO {
  using Compute = at::opmath_type<T>;
  using CVec = at::vec::Vectorized<Compute>;
  static constexpr bool kReduced = !std::is_same_v<T, Compute>;
  // Elements per step: two compute vectors.
  static constexpr int64_t kStep = 2 * CVec::size();

  static inline void load(const T* p, CVec& a, CVec& b) {
    if constexpr (kReduced) {
      auto wide = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
      a = std::get<0>(wide);
      b = std::get<1>(wide);
    } else {
      a = CVec::loadu(p);
      b = CVec::loadu(p + CVec::size());
    }
  }

  static inline void store(T* p, const CVec& a, const CVec& b) {
    if constexpr (kReduced) {
      at::vec::convert_from_float<T>(a, b).store(p);
    } else {
      a.store(p);
      b.store(p + CVec::size());
    }
  }
};

template <typename T>
inline T* item_ptr(const Plan& plan, const WorkItem& item) {
  return static_cast<T*>(plan.spans[item.tensor].data) + item.begin;
}

inline at::ScalarType item_dtype(const Plan& plan, const WorkItem& item) {
  return plan.spans[item.tensor].dtype;
}

// x in the compute type of the elements `data` points to (fp32 for fp16/bf16): the parameters of
// an apply_inplace kernel, whose element type is that of its pointer.
template <typename T>
inline at::opmath_type<T> opmath(const T* /*data*/, double x) {
  return static_cast<at::opmath_type<T>>(x);
}

// The body of every in-place CPU op, after its argument checks: kernel(T* data, int64_t n) on
// every work item of the list, T the element type of the item's tensor (float, double, at::Half
// or at::BFloat16), on ATen's thread pool; then the results of non-dense tensors are written back
// (unless `write` is false: a pass that found nothing to write). A list whose tensors share
// memory runs in disjoint rounds (see for_each_round), so no two items of one round race on it.
// A kernel may return bool to flag its item (an inf/NaN seen); apply_inplace then returns whether
// any item was flagged, combined in item order, else false. `whole`, when given, is the plan the
// caller already made of `tensors` (for its read pass): a list that runs as one round reuses it
// instead of making the same plan again (a thousand tensors: a tenth of the call).
template <typename Kernel>
bool apply_inplace(at::TensorList tensors, const Kernel& kernel, bool write = true,
                   const Plan* whole = nullptr) {
  constexpr bool kFlags =
      std::is_same_v<std::invoke_result_t<const Kernel&, float*, int64_t>, bool>;
  bool any_flagged = false;
  for_each_round(tensors, [&](at::TensorList round) {
    const bool reuse = whole != nullptr && round.size() == tensors.size();
    Plan made;
    if (!reuse) made = make_plan(round);
    const Plan& plan = reuse ? *whole : made;
    std::vector<char> flagged(kFlags ? plan.items.size() : 0, 0);
    for_each_item(plan, [&](int64_t i, const WorkItem& item) {
      MOPT_DISPATCH_FLOATING(item_dtype(plan, item), "mopt_fast", [&] {
        scalar_t* data = item_ptr<scalar_t>(plan, item);
        const int64_t n = item.end - item.begin;
        if constexpr (kFlags) {
          flagged[i] = kernel(data, n);
        } else {
          kernel(data, n);
        }
      });
    });
    if (write) write_back(plan, round);
    for (char f : flagged) any_flagged |= f != 0;
  });
  return any_flagged;
}

}  // namespace mopt_fast::cpu
