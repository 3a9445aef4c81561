// Checks and list handling shared by the CPU and CUDA bindings (the torch side; csrc/common.h
// holds what the torch-free CUDA kernels share too). They run before any kernel writes, so a
// rejected call leaves every tensor as it was.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace mopt_fast {

// Every tensor defined, dense (strided), floating point (fp32/fp64/fp16/bf16) and on `device`.
// An op that `writes` also refuses a tensor whose elements share memory (an expanded one): its
// results could not be written back. Read-only ops read such a tensor through a contiguous copy.
inline void check_tensors(at::TensorList tensors, const char* op, const at::Device& device,
                          bool writes) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.defined(), "mopt_fast.", op, ": tensor ", i, " is undefined");
    TORCH_CHECK_VALUE(t.layout() == at::kStrided, "mopt_fast.", op, ": tensor ", i, " has layout ",
                      t.layout(),
                      "; only dense (strided) gradients are supported, not sparse ones");
    TORCH_CHECK_VALUE(t.device() == device, "mopt_fast.", op, ": tensor ", i, " is on ", t.device(),
                      " but tensor 0 is on ", device, "; one call takes tensors on one device");
    const auto dtype = t.scalar_type();
    TORCH_CHECK_TYPE(
        dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
        "mopt_fast.", op, ": tensor ", i, " has dtype ", dtype,
        "; supported dtypes are float32, float64, float16 and bfloat16");
    TORCH_CHECK_VALUE(!writes || t.is_non_overlapping_and_dense() ||
                          at::has_internal_overlap(t) != at::MemOverlap::Yes,
                      "mopt_fast.", op, ": tensor ", i,
                      " has elements that share memory (e.g. an "
                      "expanded tensor); give it its own memory first (.contiguous())");
  }
}

// A one-element float32 (or, with allow_double, float64) tensor on `device`: found_inf, inv_scale,
// a scale or a norm.
inline void check_scalar(const at::Tensor& t, const char* name, const char* op,
                         const at::Device& device, bool allow_double) {
  TORCH_CHECK_VALUE(t.device() == device, "mopt_fast.", op, ": ", name, " must be on ", device,
                    " like the gradients, got ", t.device());
  const bool dtype_ok =
      t.scalar_type() == at::kFloat || (allow_double && t.scalar_type() == at::kDouble);
  TORCH_CHECK_VALUE(t.numel() == 1 && dtype_ok, "mopt_fast.", op, ": ", name,
                    " must be a one-element ", allow_double ? "float32 or float64" : "float32",
                    " tensor, got ", t.scalar_type(), " of shape ", t.sizes());
}

// The arguments of scale_inplace (mopt_fast/ops.h), checked on `device` before anything is written.
inline void check_scale_args(at::TensorList tensors, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& total_norm, double max_norm,
                             const std::optional<at::Tensor>& found_inf, const at::Device& device) {
  check_tensors(tensors, "scale", device, /*writes=*/true);
  if (scale) check_scalar(*scale, "scale", "scale", device, true);
  if (found_inf) check_scalar(*found_inf, "found_inf", "scale", device, false);
  if (total_norm) {
    check_scalar(*total_norm, "total_norm", "scale", device, true);
    TORCH_CHECK_VALUE(max_norm >= 0.0, "mopt_fast.scale: max_norm must be >= 0, got ", max_norm);
  }
}

// The dtype of a norm: float32, or float64 when any tensor is float64 (fp16/bf16 values are
// accumulated in fp32, so their norms do not overflow at 65504).
inline at::ScalarType result_dtype(at::TensorList tensors) {
  for (const auto& t : tensors) {
    if (t.scalar_type() == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

// The bytes [first, end) a tensor's elements can touch; empty for a zero-size tensor.
inline std::pair<uintptr_t, uintptr_t> byte_range(const at::Tensor& t) {
  if (t.numel() == 0) return {0, 0};
  int64_t last = 0;  // offset of the last element, in elements (torch strides are never negative)
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {first, first + static_cast<uintptr_t>((last + 1) * t.element_size())};
}

// A list that names one tensor twice, or two views of shared memory, must be written one entry
// after the other, as torch's foreach ops do on the CPU (scale_grads_([p, p], 0.5) quarters p):
// the multi-tensor kernels would otherwise race on that memory. Returns the positions of the list
// split into rounds, in list order, so that no two tensors of one round share bytes and a tensor
// comes in a later round than every earlier tensor it shares bytes with. Empty when no two
// tensors share bytes (the usual case, found in O(n log n)): then the list runs as one round.
inline std::vector<std::vector<int64_t>> disjoint_rounds(at::TensorList tensors) {
  const auto n = static_cast<int64_t>(tensors.size());
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges(n);
  std::vector<int64_t> by_start;
  for (int64_t i = 0; i < n; ++i) {
    ranges[i] = byte_range(tensors[i]);
    if (ranges[i].first != ranges[i].second) by_start.push_back(i);
  }
  std::sort(by_start.begin(), by_start.end(),
            [&](int64_t a, int64_t b) { return ranges[a].first < ranges[b].first; });
  bool shared = false;
  uintptr_t reach = 0;
  for (int64_t i : by_start) {
    if (ranges[i].first < reach) {
      shared = true;
      break;
    }
    reach = std::max(reach, ranges[i].second);
  }
  if (!shared) return {};
  // Rare: quadratic, but only over lists that do share memory.
  std::vector<int64_t> round_of(n, 0);
  std::vector<std::vector<int64_t>> rounds;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) {
      const bool overlap = ranges[i].first < ranges[j].second && ranges[j].first < ranges[i].second;
      if (overlap) round_of[i] = std::max(round_of[i], round_of[j] + 1);
    }
    if (round_of[i] >= static_cast<int64_t>(rounds.size())) rounds.resize(round_of[i] + 1);
    rounds[round_of[i]].push_back(i);
  }
  return rounds;
}

// Runs fn(sub-list) once per round of disjoint_rounds, in order; once on the whole list when no
// two tensors share memory.
template <typename Fn>
void for_each_round(at::TensorList tensors, const Fn& fn) {
  const auto rounds = disjoint_rounds(tensors);
  if (rounds.empty()) {
    fn(tensors);
    return;
  }
  for (const auto& round : rounds) {
    std::vector<at::Tensor> members;
    members.reserve(round.size());
    for (int64_t i : round) members.push_back(tensors[i]);
    fn(at::TensorList(members));
  }
}

}  // namespace mopt_fast
