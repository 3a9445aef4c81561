// Read-only reductions: the total p-norm of a tensor list, and the fused AMP read pass
// (unscale + inf/NaN check + norm of the unscaled values), which writes no gradient.
//
// Accuracy: within a block of kBlockElems elements each vector lane accumulates in the compute type
// (fp32 for fp32/fp16/bf16), which keeps the hot loop as fast as a plain fp32 sum; every block is
// then folded into an fp64 partial. Each lane adds only kBlockElems / lanes values in fp32, so the
// result is far closer to the fp64 truth than torch's fp32 norm. A block whose fp32 sum overflows
// (values above ~1e19) is summed again in fp64, so large finite gradients give a finite norm.
#include "multi_tensor_apply.h"
#include "passes.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>

#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

namespace mopt_fast::cpu {
namespace {

constexpr int64_t kBlockElems = 4096;

struct Partial {
  double value = 0.0;  // sum of |x|^p, or max |x| for the inf norm
  bool nonfinite = false;
};

// max that propagates NaN, as torch's inf norm does.
inline double nan_max(double a, double b) {
  return (std::isnan(b) || b > a) ? b : a;
}

template <typename V>
inline double lane_sum(const V& v) {
  alignas(64) typename V::value_type buf[V::size()];
  v.store(buf);
  double s = 0.0;
  for (int64_t k = 0; k < V::size(); ++k) s += static_cast<double>(buf[k]);
  return s;
}

template <typename V>
inline double lane_max(const V& v) {
  alignas(64) typename V::value_type buf[V::size()];
  v.store(buf);
  double m = 0.0;
  for (int64_t k = 0; k < V::size(); ++k) m = nan_max(m, static_cast<double>(buf[k]));
  return m;
}

// Exact fp64 pass over a run: used for general p, for tails, and to redo a block whose fast sum
// was not finite. Also tells whether any input value is inf/NaN.
template <typename T, NormKind K>
Partial reduce_exact(const T* p, int64_t n, double scale, double order) {
  Partial r;
  for (int64_t i = 0; i < n; ++i) {
    const double x = static_cast<double>(p[i]);
    if (!std::isfinite(x)) r.nonfinite = true;
    const double v = std::abs(x * scale);
    if constexpr (K == NormKind::kL2)
      r.value += v * v;
    else if constexpr (K == NormKind::kL1)
      r.value += v;
    else if constexpr (K == NormKind::kLinf)
      r.value = nan_max(r.value, v);
    else
      r.value += std::pow(v, order);
  }
  return r;
}

// Vectorized block: fp32 (or fp64) lane accumulators, folded into fp64 at the end.
template <typename T, NormKind K, bool kScaled>
double reduce_block_fast(const T* p, int64_t n, at::opmath_type<T> scale) {
  using IO = VecIO<T>;
  using CVec = typename IO::CVec;
  CVec acc0(0), acc1(0);
  const CVec s(scale);
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    CVec a, b;
    IO::load(p + i, a, b);
    if constexpr (kScaled) {
      a = a * s;
      b = b * s;
    }
    if constexpr (K == NormKind::kL2) {
      acc0 = at::vec::fmadd(a, a, acc0);
      acc1 = at::vec::fmadd(b, b, acc1);
    } else if constexpr (K == NormKind::kL1) {
      acc0 = acc0 + a.abs();
      acc1 = acc1 + b.abs();
    } else {
      acc0 = at::vec::maximum(acc0, a.abs());
      acc1 = at::vec::maximum(acc1, b.abs());
    }
  }
  double value;
  if constexpr (K == NormKind::kLinf) {
    value = nan_max(lane_max(acc0), lane_max(acc1));
  } else {
    value = lane_sum(acc0) + lane_sum(acc1);
  }
  const Partial tail = reduce_exact<T, K>(p + i, n - i, kScaled ? double(scale) : 1.0, 0.0);
  return K == NormKind::kLinf ? nan_max(value, tail.value) : value + tail.value;
}

template <typename T, NormKind K, bool kScaled>
Partial reduce_item(const T* p, int64_t n, float scale, double order) {
  const double exact_scale = kScaled ? static_cast<double>(scale) : 1.0;
  if constexpr (K == NormKind::kLp) {
    return reduce_exact<T, K>(p, n, exact_scale, order);
  } else {
    Partial r;
    for (int64_t b = 0; b < n; b += kBlockElems) {
      const int64_t len = std::min(kBlockElems, n - b);
      double v =
          reduce_block_fast<T, K, kScaled>(p + b, len, static_cast<at::opmath_type<T>>(scale));
      if (!std::isfinite(v)) {
        // Either an inf/NaN input (the AMP check wants to know) or an fp32 overflow of a finite
        // sum: the exact pass tells them apart and gives the right value in both cases.
        const Partial exact = reduce_exact<T, K>(p + b, len, exact_scale, order);
        r.nonfinite |= exact.nonfinite;
        v = exact.value;
      }
      r.value = K == NormKind::kLinf ? nan_max(r.value, v) : r.value + v;
    }
    return r;
  }
}

}  // namespace

void check_order(double order) {
  TORCH_CHECK_VALUE(order > 0.0, "mopt_fast: norm_type must be > 0 or inf, got ", order);
}

std::tuple<at::Tensor, at::Tensor> reduce_list(at::TensorList tensors, double order,
                                               bool per_tensor, const float* inv_scale,
                                               const at::Tensor* found_inf, const char* op) {
  check_tensors(tensors, op, /*writes=*/false);
  check_order(order);
  return reduce_plan(make_plan(tensors), tensors, order, per_tensor, inv_scale, found_inf);
}

std::tuple<at::Tensor, at::Tensor> reduce_plan(const Plan& plan, at::TensorList tensors,
                                               double order, bool per_tensor,
                                               const float* inv_scale,
                                               const at::Tensor* found_inf) {
  const NormKind kind = norm_kind(order);
  const float scale = inv_scale ? *inv_scale : 1.0f;
  std::vector<Partial> partials(plan.items.size());

  for_each_item(plan, [&](int64_t i, const WorkItem& item) {
    MOPT_DISPATCH_FLOATING(item_dtype(plan, item), "mopt_fast_norm", [&] {
      const scalar_t* p = item_ptr<scalar_t>(plan, item);
      const int64_t n = item.end - item.begin;
      dispatch_norm_kind(kind, [&](auto kind_tag) {
        constexpr NormKind K = decltype(kind_tag)::value;
        partials[i] = inv_scale ? reduce_item<scalar_t, K, true>(p, n, scale, order)
                                : reduce_item<scalar_t, K, false>(p, n, scale, order);
      });
    });
  });

  // Fixed-order combine: the same bits for any thread count.
  const auto dtype = result_dtype(tensors);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto n = static_cast<int64_t>(tensors.size());
  at::Tensor per = at::empty({per_tensor ? n : 0}, opts);
  double* per_data = per.data_ptr<double>();
  double total = 0.0;
  bool nonfinite = false;
  for (int64_t t = 0; t < n; ++t) {
    double acc = 0.0;
    for (int64_t i = plan.first_item[t]; i < plan.first_item[t + 1]; ++i) {
      acc = kind == NormKind::kLinf ? nan_max(acc, partials[i].value) : acc + partials[i].value;
      nonfinite |= partials[i].nonfinite;
    }
    total = kind == NormKind::kLinf ? nan_max(total, acc) : total + acc;
    if (per_tensor) per_data[t] = finish_norm(kind, acc, order);
  }
  if (found_inf && nonfinite) found_inf->fill_(1.0);
  at::Tensor total_t = at::scalar_tensor(finish_norm(kind, total, order), opts);
  return {total_t.to(dtype), per.to(dtype)};
}

namespace {

std::tuple<at::Tensor, at::Tensor> norm_cpu(at::TensorList tensors, double norm_type,
                                            bool per_tensor) {
  return reduce_list(tensors, norm_type, per_tensor, nullptr, nullptr, "norm");
}

std::tuple<at::Tensor, at::Tensor> unscale_norm_cpu(at::TensorList tensors,
                                                    const at::Tensor& inv_scale,
                                                    const at::Tensor& found_inf, double norm_type,
                                                    bool per_tensor) {
  const at::Device cpu(at::kCPU);
  check_scalar(inv_scale, "inv_scale", "unscale_norm", cpu, false);
  check_scalar(found_inf, "found_inf", "unscale_norm", cpu, false);
  const float scale = inv_scale.item<float>();
  return reduce_list(tensors, norm_type, per_tensor, &scale, &found_inf, "unscale_norm");
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt_fast, CPU, m) {
  m.impl("norm", &norm_cpu);
  m.impl("unscale_norm", &unscale_norm_cpu);
}

}  // namespace mopt_fast::cpu
