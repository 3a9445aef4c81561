// The torch side of the CUDA backend: builds the chunk tables, checks arguments, and registers the
// launchers of launch.h as the CUDA kernels of the mopt_fast ops. The only file of csrc/cuda that
// includes torch; compiled when setup.py finds a CUDA build of torch and nvcc.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cuda/launch.h"

namespace mopt_fast::cuda {
namespace {

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "mopt_fast: unsupported dtype ", t);
  }
}

struct Group {
  DType dtype;
  at::Tensor table;  // int64 on the device, layout in multi_tensor_apply.cuh
  int64_t n_tensors;
  int64_t n_chunks;
  const int64_t* data() const { return table.data_ptr<int64_t>(); }
  const int64_t* index() const { return data() + 2 * n_tensors; }
  const int64_t* first_chunk() const { return data() + 3 * n_tensors; }
  const int64_t* end_chunk() const { return data() + 4 * n_tensors; }
};

struct Plan {
  std::vector<Group> groups;
  std::vector<std::pair<int64_t, at::Tensor>> copies;  // non-dense tensors: written back after
};

// Device tables keyed by stream and host contents (pointers, sizes, layout). Gradients keep their
// memory from step to step, so after the first step no table is copied to the device again.
// The stream is part of the key: a table is uploaded and read on one stream, so every use is
// ordered after its upload and its memory belongs to that stream's pool.
// CUDA graphs: a graph keeps the raw table address, so a table used while capturing is pinned for
// the life of the process, and a table missing during capture is an error (warm up with one eager
// call first, as torch's graph docs advise). Other tables are evicted least recently used.
class TableCache {
 public:
  at::Tensor get(const std::vector<int64_t>& host, const at::Device& device, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
    const bool capturing = status != cudaStreamCaptureStatusNone;
    Key key{device.index(), reinterpret_cast<uintptr_t>(stream), host};
    auto it = tables_.find(key);
    if (it != tables_.end()) {
      it->second.last_use = ++clock_;
      it->second.pinned |= capturing;
      return it->second.table;
    }
    TORCH_CHECK(!capturing,
                "mopt_fast: a CUDA graph is being captured over a gradient list this stream has "
                "not seen before; run the same step once eagerly on the capture stream first");
    evict_unpinned_lru();
    auto pinned = at::empty({static_cast<int64_t>(host.size())},
                            at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    std::memcpy(pinned.data_ptr<int64_t>(), host.data(), host.size() * sizeof(int64_t));
    // Asynchronous on the current stream; torch keeps the pinned block until the copy is done.
    at::Tensor table = pinned.to(device, /*non_blocking=*/true);
    tables_.emplace(std::move(key), Entry{table, ++clock_, false});
    return table;
  }

 private:
  struct Key {
    int8_t device;
    uintptr_t stream;
    std::vector<int64_t> host;
    bool operator<(const Key& o) const {
      return std::tie(device, stream, host) < std::tie(o.device, o.stream, o.host);
    }
  };
  struct Entry {
    at::Tensor table;
    uint64_t last_use;
    bool pinned;
  };

  void evict_unpinned_lru() {
    size_t unpinned = 0;
    auto oldest = tables_.end();
    for (auto it = tables_.begin(); it != tables_.end(); ++it) {
      if (it->second.pinned) continue;
      ++unpinned;
      if (oldest == tables_.end() || it->second.last_use < oldest->second.last_use) oldest = it;
    }
    if (unpinned >= kMaxUnpinned) tables_.erase(oldest);
  }

  static constexpr size_t kMaxUnpinned = 64;
  std::mutex mutex_;
  uint64_t clock_ = 0;
  std::map<Key, Entry> tables_;
};

TableCache& table_cache() {
  // Never destroyed: device tensors must not be freed after the CUDA runtime shut down.
  static auto* cache = new TableCache();
  return *cache;
}

Plan make_plan(at::TensorList tensors, cudaStream_t stream) {
  Plan plan;
  const at::Device device = tensors[0].device();
  std::vector<at::ScalarType> order;
  // Tensor handles by value: pointers into plan.copies would dangle when it grows.
  std::map<at::ScalarType, std::vector<std::pair<int64_t, at::Tensor>>> by_dtype;
  for (size_t i = 0; i < tensors.size(); ++i) {
    at::Tensor t = tensors[i];
    if (!t.is_non_overlapping_and_dense()) {
      t = t.contiguous();
      plan.copies.emplace_back(static_cast<int64_t>(i), t);
    }
    auto& members = by_dtype[t.scalar_type()];
    if (members.empty()) order.push_back(t.scalar_type());
    members.emplace_back(static_cast<int64_t>(i), t);
  }
  for (at::ScalarType dtype : order) {
    const auto& members = by_dtype[dtype];
    const auto n = static_cast<int64_t>(members.size());
    std::vector<int64_t> ptrs, numels, index, first, end, chunk_tensor, chunk_start;
    for (int64_t k = 0; k < n; ++k) {
      const at::Tensor& t = members[k].second;
      ptrs.push_back(reinterpret_cast<int64_t>(t.data_ptr()));
      numels.push_back(t.numel());
      index.push_back(members[k].first);
      first.push_back(static_cast<int64_t>(chunk_tensor.size()));
      for (int64_t s = 0; s < t.numel(); s += kChunkElems) {
        chunk_tensor.push_back(k);
        chunk_start.push_back(s);
      }
      end.push_back(static_cast<int64_t>(chunk_tensor.size()));
    }
    const auto n_chunks = static_cast<int64_t>(chunk_tensor.size());
    std::vector<int64_t> host;
    host.reserve(5 * n + 2 * n_chunks);
    for (auto* part : {&ptrs, &numels, &index, &first, &end, &chunk_tensor, &chunk_start}) {
      host.insert(host.end(), part->begin(), part->end());
    }
    plan.groups.push_back({dtype_of(dtype), table_cache().get(host, device, stream), n, n_chunks});
  }
  return plan;
}

void write_back(const Plan& plan, at::TensorList tensors) {
  for (const auto& [i, copy] : plan.copies) tensors[i].copy_(copy);
}

std::tuple<at::Tensor, at::Tensor> reduce(at::TensorList tensors, double p, bool per_tensor,
                                          const at::Tensor* inv_scale, const at::Tensor* found_inf,
                                          const char* op) {
  TORCH_CHECK_VALUE(!tensors.empty(), "mopt_fast.", op, ": empty tensor list");
  const at::Device device = tensors[0].device();
  check_tensors(tensors, op, device, /*writes=*/false);
  TORCH_CHECK_VALUE(p > 0.0, "mopt_fast: norm_type must be > 0 or inf, got ", p);
  if (inv_scale) check_scalar(*inv_scale, "inv_scale", op, device, false);
  if (found_inf) check_scalar(*found_inf, "found_inf", op, device, false);
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Plan plan = make_plan(tensors, stream);
  const NormKind kind = norm_kind(p);
  const bool is_max = kind == NormKind::kLinf;
  const auto n = static_cast<int64_t>(tensors.size());
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  at::Tensor per_sum = at::empty({n}, f64);
  for (const Group& g : plan.groups) {
    at::Tensor partials = at::empty({std::max<int64_t>(g.n_chunks, 1)}, f64);
    launch_norm_partials(g.dtype, g.data(), g.n_tensors, g.n_chunks, kind, p,
                         inv_scale ? inv_scale->data_ptr<float>() : nullptr,
                         partials.data_ptr<double>(),
                         found_inf ? found_inf->data_ptr<float>() : nullptr, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_segment_reduce(partials.data_ptr<double>(), g.n_chunks, g.first_chunk(), g.end_chunk(),
                          g.index(), g.n_tensors, is_max, per_sum.data_ptr<double>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor total_sum = at::empty({1}, f64);
  launch_segment_reduce(per_sum.data_ptr<double>(), n, nullptr, nullptr, nullptr, 1, is_max,
                        total_sum.data_ptr<double>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::ScalarType out_dtype = result_dtype(tensors);
  const auto out_opts = at::TensorOptions().dtype(out_dtype).device(device);
  at::Tensor total = at::empty({}, out_opts);
  launch_norm_finish(total_sum.data_ptr<double>(), 1, kind, p, total.data_ptr(),
                     dtype_of(out_dtype), stream);
  at::Tensor per = at::empty({per_tensor ? n : 0}, out_opts);
  if (per_tensor) {
    launch_norm_finish(per_sum.data_ptr<double>(), n, kind, p, per.data_ptr(), dtype_of(out_dtype),
                       stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {total, per};
}

std::tuple<at::Tensor, at::Tensor> norm_cuda(at::TensorList tensors, double p, bool per_tensor) {
  return reduce(tensors, p, per_tensor, nullptr, nullptr, "norm");
}

std::tuple<at::Tensor, at::Tensor> unscale_norm_cuda(at::TensorList tensors,
                                                     const at::Tensor& inv_scale,
                                                     const at::Tensor& found_inf, double p,
                                                     bool per_tensor) {
  return reduce(tensors, p, per_tensor, &inv_scale, &found_inf, "unscale_norm");
}

DeviceScalar device_scalar(const std::optional<at::Tensor>& t) {
  if (!t) return {nullptr, DType::kFloat32};
  return {t->data_ptr(), dtype_of(t->scalar_type())};
}

// Shared body of the in-place ops (after their checks): device guard, plan, one launch per dtype
// group, write-back of non-dense tensors; one such pass per round when tensors of the list share
// memory (see disjoint_rounds), so that no launch races on it.
template <typename Launch>
void for_each_group(at::TensorList tensors, Launch&& launch) {
  const at::Device device = tensors[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for_each_round(tensors, [&](at::TensorList round) {
    const Plan plan = make_plan(round, stream);
    for (const Group& g : plan.groups) {
      launch(g, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    write_back(plan, round);
  });
}

void scale_inplace_cuda(at::TensorList tensors, const std::optional<at::Tensor>& scale,
                        const std::optional<at::Tensor>& total_norm, double max_norm,
                        const std::optional<at::Tensor>& found_inf) {
  if (tensors.empty()) return;
  const at::Device device = tensors[0].device();
  check_scale_args(tensors, scale, total_norm, max_norm, found_inf, device);
  if (!scale && !total_norm) return;
  const float* found = found_inf ? found_inf->data_ptr<float>() : nullptr;
  for_each_group(tensors, [&](const Group& g, cudaStream_t stream) {
    launch_scale(g.dtype, g.data(), g.n_tensors, g.n_chunks, device_scalar(scale),
                 device_scalar(total_norm), max_norm, found, stream);
  });
}

void clamp_inplace_cuda(at::TensorList tensors, double clip_value) {
  if (tensors.empty()) return;
  check_tensors(tensors, "clamp", tensors[0].device(), /*writes=*/true);
  TORCH_CHECK_VALUE(clip_value >= 0.0, "mopt_fast.clamp: clip_value must be >= 0, got ",
                    clip_value);
  for_each_group(tensors, [&](const Group& g, cudaStream_t stream) {
    launch_clamp(g.dtype, g.data(), g.n_tensors, g.n_chunks, clip_value, stream);
  });
}

void zero_inplace_cuda(at::TensorList tensors) {
  if (tensors.empty()) return;
  check_tensors(tensors, "zero", tensors[0].device(), /*writes=*/true);
  for_each_group(tensors, [&](const Group& g, cudaStream_t stream) {
    launch_zero(g.dtype, g.data(), g.n_tensors, g.n_chunks, stream);
  });
}

void unscale_inplace_cuda(at::TensorList tensors, const at::Tensor& found_inf,
                          const at::Tensor& inv_scale) {
  if (tensors.empty()) return;
  const at::Device device = tensors[0].device();
  check_tensors(tensors, "unscale", device, /*writes=*/true);
  check_scalar(found_inf, "found_inf", "unscale", device, false);
  check_scalar(inv_scale, "inv_scale", "unscale", device, false);
  for_each_group(tensors, [&](const Group& g, cudaStream_t stream) {
    launch_unscale(g.dtype, g.data(), g.n_tensors, g.n_chunks, inv_scale.data_ptr<float>(),
                   found_inf.data_ptr<float>(), stream);
  });
}

// unscale_norm, then scale_inplace by inv_scale and the clip coefficient of the norm, masked off
// on the device when found_inf is set: one call, no host sync.
at::Tensor unscale_clip_inplace_cuda(at::TensorList tensors, const at::Tensor& inv_scale,
                                     const at::Tensor& found_inf, double max_norm,
                                     double norm_type) {
  TORCH_CHECK_VALUE(!tensors.empty(), "mopt_fast.unscale_clip: empty tensor list");
  check_tensors(tensors, "unscale_clip", tensors[0].device(), /*writes=*/true);
  TORCH_CHECK_VALUE(max_norm >= 0.0, "mopt_fast.unscale_clip: max_norm must be >= 0, got ",
                    max_norm);
  at::Tensor total =
      std::get<0>(reduce(tensors, norm_type, false, &inv_scale, &found_inf, "unscale_clip"));
  const float* found = found_inf.data_ptr<float>();
  for_each_group(tensors, [&](const Group& g, cudaStream_t stream) {
    launch_scale(g.dtype, g.data(), g.n_tensors, g.n_chunks, device_scalar(inv_scale),
                 device_scalar(total), max_norm, found, stream);
  });
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt_fast, CUDA, m) {
  m.impl("norm", &norm_cuda);
  m.impl("unscale_norm", &unscale_norm_cuda);
  m.impl("scale_inplace", &scale_inplace_cuda);
  m.impl("clamp_inplace", &clamp_inplace_cuda);
  m.impl("zero_inplace", &zero_inplace_cuda);
  m.impl("unscale_inplace", &unscale_inplace_cuda);
  m.impl("unscale_clip_inplace", &unscale_clip_inplace_cuda);
}

}  // namespace mopt_fast::cuda
