// CUDA kernels of the lamda_ext Taylor ops (current stream, device guard, checked inputs).
//   unary:  one thread per element, the whole recurrence in registers; coefficient c
//           of element i at c * E + i, so a warp reads/writes coalesced rows.
//   CE:     one warp per row; lanes stride over the classes, warp-shuffle reductions.
//   deg-1:  forward one warp per (k, b) row; backward one warp per b looping over k
//           (grad_z0 sums over k without atomics: lane j owns class j).
// Target indices are checked on the device with CUDA_KERNEL_ASSERT (as torch's own
// nll_loss does), so no host synchronisation is needed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>

#include <algorithm>

#include "ops.h"

namespace lamda_ext {
namespace {

using taylor::Kind;
using taylor::kMaxCoeffs;

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

inline int64_t blocks_for(int64_t work, int64_t per_block) {
  return std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, kMaxBlocks));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum an array of C values over the warp (every lane gets the result).
template <typename T>
__device__ __forceinline__ void warp_sum_series(T* s, int C) {
#pragma unroll
  for (int c = 0; c < kMaxCoeffs; ++c)
    if (c < C) s[c] = warp_sum(s[c]);
}

template <typename T>
__device__ __forceinline__ T row_max(const T* zr, int64_t classes, int lane) {
  T mx = -INFINITY;
  for (int64_t j = lane; j < classes; j += 32) mx = max(mx, zr[j]);
  return warp_max(mx);
}

// ---- unary ---------------------------------------------------------------------

template <Kind K, typename T>
__global__ void __launch_bounds__(kThreads)
    unary_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t E, int C, T alpha) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < E; i += (int64_t)blockDim.x * gridDim.x) {
    T xs[kMaxCoeffs] = {}, ys[kMaxCoeffs] = {}, gs[kMaxCoeffs] = {};
#pragma unroll
    for (int c = 0; c < kMaxCoeffs; ++c)
      if (c < C) xs[c] = x[c * E + i];
    taylor::unary_series<K>(xs, ys, gs, C, alpha);
#pragma unroll
    for (int c = 0; c < kMaxCoeffs; ++c)
      if (c < C) y[c * E + i] = ys[c];
  }
}

template <Kind K, typename T>
__global__ void __launch_bounds__(kThreads) unary_backward_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                                                  T* __restrict__ gx, int64_t E, int C, T alpha) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < E; i += (int64_t)blockDim.x * gridDim.x) {
    T xs[kMaxCoeffs] = {}, ys[kMaxCoeffs] = {}, gs[kMaxCoeffs] = {}, gys[kMaxCoeffs] = {}, gxs[kMaxCoeffs] = {};
#pragma unroll
    for (int c = 0; c < kMaxCoeffs; ++c)
      if (c < C) {
        xs[c] = x[c * E + i];
        gys[c] = gy[c * E + i];
      }
    taylor::unary_series<K>(xs, ys, gs, C, alpha);
    taylor::toeplitz_adjoint(gys, gs, gxs, C);
#pragma unroll
    for (int c = 0; c < kMaxCoeffs; ++c)
      if (c < C) gx[c * E + i] = gxs[c];
  }
}

// ---- cross-entropy series ----------------------------------------------------------

template <typename T>
__device__ __forceinline__ void class_exp_series(const T* zr, int64_t j, int64_t cs, T mx, int C, T* a, T* E) {
#pragma unroll
  for (int c = 0; c < kMaxCoeffs; ++c)
    if (c < C) a[c] = zr[c * cs + j];
  taylor::exp_series_from(taylor::lx_exp(a[0] - mx), a, E, C);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ce_forward_kernel(const T* __restrict__ z, const int64_t* __restrict__ target,
                                                              T* __restrict__ out, int64_t M, int64_t classes, int C,
                                                              T eps) {
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const int64_t cs = M * classes;
  const T q_off = eps / T(classes), q_on = T(1) - eps;
  for (int64_t m = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; m < M; m += nwarps) {
    const T* zr = z + m * classes;
    const T mx = row_max(zr, classes, lane);
    T S[kMaxCoeffs] = {}, sz[kMaxCoeffs] = {}, a[kMaxCoeffs] = {}, E[kMaxCoeffs] = {}, L[kMaxCoeffs] = {};
    for (int64_t j = lane; j < classes; j += 32) {
      class_exp_series(zr, j, cs, mx, C, a, E);
#pragma unroll
      for (int c = 0; c < kMaxCoeffs; ++c)
        if (c < C) {
          S[c] += E[c];
          sz[c] += a[c];
        }
    }
    warp_sum_series(S, C);
    warp_sum_series(sz, C);
    if (lane == 0) {
      const int64_t y = target[m];
      CUDA_KERNEL_ASSERT(y >= 0 && y < classes && "lamda_ext::taylor_cross_entropy: target out of range");
      taylor::log_series(S, L, C);
      L[0] += mx;
#pragma unroll
      for (int c = 0; c < kMaxCoeffs; ++c)
        if (c < C) out[c * M + m] = L[c] - q_on * zr[c * cs + y] - q_off * sz[c];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    ce_backward_kernel(const T* __restrict__ g, const T* __restrict__ z, const int64_t* __restrict__ target,
                       T* __restrict__ gz, int64_t M, int64_t classes, int C, T eps) {
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const int64_t cs = M * classes;
  const T q_off = eps / T(classes), q_on = T(1) - eps;
  for (int64_t m = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; m < M; m += nwarps) {
    const T* zr = z + m * classes;
    T* gr = gz + m * classes;
    const T mx = row_max(zr, classes, lane);
    T S[kMaxCoeffs] = {}, a[kMaxCoeffs] = {}, E[kMaxCoeffs] = {}, R[kMaxCoeffs] = {}, p[kMaxCoeffs] = {},
      gl[kMaxCoeffs] = {}, gj[kMaxCoeffs] = {};
    for (int64_t j = lane; j < classes; j += 32) {
      class_exp_series(zr, j, cs, mx, C, a, E);
#pragma unroll
      for (int c = 0; c < kMaxCoeffs; ++c)
        if (c < C) S[c] += E[c];
    }
    warp_sum_series(S, C);
    taylor::reciprocal_series(S, R, C);
#pragma unroll
    for (int c = 0; c < kMaxCoeffs; ++c)
      if (c < C) gl[c] = g[c * M + m];
    const int64_t y = target[m];
    CUDA_KERNEL_ASSERT(y >= 0 && y < classes && "lamda_ext::taylor_cross_entropy_backward: target out of range");
    for (int64_t j = lane; j < classes; j += 32) {
      class_exp_series(zr, j, cs, mx, C, a, E);
      taylor::product_series(E, R, p, C);
      taylor::toeplitz_adjoint(gl, p, gj, C);
      const T q = (j == y ? q_on : T(0)) + q_off;
#pragma unroll
      for (int c = 0; c < kMaxCoeffs; ++c)
        if (c < C) gr[c * cs + j] = gj[c] - q * gl[c];
    }
  }
}

// ---- degree-1 cross-entropy head -------------------------------------------------------

template <typename T>
struct Deg1Row {
  T mx, S, mu, sv, kappa[kMaxCoeffs];
};

// Warp-cooperative statistics of row (zr, vr): max, sum of e_j = exp(z0_j - max),
// mean mu = E_p[v], sum of v, cumulants kappa_2..kappa_N (all lanes get them).
template <typename T>
__device__ __forceinline__ Deg1Row<T> deg1_row(const T* zr, const T* vr, int64_t classes, int N, int lane) {
  Deg1Row<T> st;
  st.mx = row_max(zr, classes, lane);
  T S = T(0), A = T(0), sv = T(0);
  for (int64_t j = lane; j < classes; j += 32) {
    const T e = taylor::lx_exp(zr[j] - st.mx);
    S += e;
    A += e * vr[j];
    sv += vr[j];
  }
  st.S = warp_sum(S);
  st.mu = warp_sum(A) / st.S;
  st.sv = warp_sum(sv);
  T mom[kMaxCoeffs] = {};
  for (int64_t j = lane; j < classes; j += 32) {
    const T e = taylor::lx_exp(zr[j] - st.mx);
    const T w = vr[j] - st.mu;
    T pw = e * w;
#pragma unroll
    for (int n = 2; n < kMaxCoeffs; ++n)
      if (n <= N) {
        pw *= w;
        mom[n] += pw;
      }
  }
#pragma unroll
  for (int n = 2; n < kMaxCoeffs; ++n)
    if (n <= N) mom[n] = warp_sum(mom[n]) / st.S;
  taylor::cumulants_from_central(mom, st.kappa, N);
  return st;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    deg1_forward_kernel(const T* __restrict__ z0, const T* __restrict__ v, const int64_t* __restrict__ target,
                        T* __restrict__ out, int64_t K, int64_t B, int64_t classes, int N, T eps) {
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const T q_off = eps / T(classes), q_on = T(1) - eps;
  for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; r < K * B; r += nwarps) {
    const int64_t b = r % B;
    const T* zr = z0 + b * classes;
    const T* vr = v + r * classes;
    const Deg1Row<T> st = deg1_row(zr, vr, classes, N, lane);
    if (lane == 0) {
      const int64_t y = target[b];
      CUDA_KERNEL_ASSERT(y >= 0 && y < classes && "lamda_ext::taylor_cross_entropy_deg1: target out of range");
      T* o = out + r * N;
      o[0] = st.mu - q_on * vr[y] - q_off * st.sv;
#pragma unroll
      for (int n = 2; n < kMaxCoeffs; ++n)
        if (n <= N) o[n - 1] = st.kappa[n];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    deg1_backward_kernel(const T* __restrict__ g, const T* __restrict__ z0, const T* __restrict__ v,
                         const int64_t* __restrict__ target, T* __restrict__ gz0, T* __restrict__ gv, int64_t K,
                         int64_t B, int64_t classes, int N, T eps) {
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const T q_off = eps / T(classes), q_on = T(1) - eps;
  for (int64_t b = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; b < B; b += nwarps) {
    const T* zr = z0 + b * classes;
    T* gzr = gz0 + b * classes;  // zero-initialised; lane owns classes j = lane + 32 i
    const int64_t y = target[b];
    CUDA_KERNEL_ASSERT(y >= 0 && y < classes && "lamda_ext::taylor_cross_entropy_deg1_backward: target out of range");
    for (int64_t k = 0; k < K; ++k) {
      const int64_t r = k * B + b;
      const T* vr = v + r * classes;
      T* gvr = gv + r * classes;
      const Deg1Row<T> st = deg1_row(zr, vr, classes, N, lane);
      T gf[kMaxCoeffs] = {}, a[kMaxCoeffs] = {}, E[kMaxCoeffs] = {};
      T fact = T(1);
#pragma unroll
      for (int n = 1; n < kMaxCoeffs; ++n)
        if (n <= N) {
          fact *= T(n);
          gf[n] = g[r * N + n - 1] * fact;
          if (n >= 2) a[n] = -st.kappa[n] / fact;
        }
      for (int64_t j = lane; j < classes; j += 32) {
        const T pj = taylor::lx_exp(zr[j] - st.mx) / st.S;
        a[1] = vr[j] - st.mu;
        taylor::exp_series_from(pj, a, E, N + 1);  // E = p_j(t)
        T accz = T(0), accv = T(0);
#pragma unroll
        for (int n = 1; n < kMaxCoeffs; ++n)
          if (n <= N) {
            accz += gf[n] * E[n];
            accv += gf[n] * E[n - 1];
          }
        const T q = (j == y ? q_on : T(0)) + q_off;
        gzr[j] += accz;
        gvr[j] = accv - q * gf[1];
      }
    }
  }
}

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

}  // namespace

at::Tensor taylor_unary_cuda(const at::Tensor& coeffs, c10::string_view kind, double alpha) {
  check_unary(coeffs);
  check_cuda(coeffs, "lamda_ext::taylor_unary", "coeffs");
  const Kind k = parse_kind(kind);
  const c10::cuda::CUDAGuard guard(coeffs.device());
  const at::Tensor x = coeffs.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int C = static_cast<int>(x.size(0));
  const int64_t E = x.numel() / C;
  if (E == 0) return y;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "taylor_unary_cuda", [&] {
    dispatch_kind(k, [&](auto kc) {
      unary_forward_kernel<decltype(kc)::value, scalar_t><<<blocks_for(E, kThreads), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), E, C, static_cast<scalar_t>(alpha));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

at::Tensor taylor_unary_backward_cuda(const at::Tensor& grad, const at::Tensor& coeffs, c10::string_view kind,
                                      double alpha) {
  check_unary(coeffs);
  check_grad(grad, coeffs, coeffs.sizes(), "lamda_ext::taylor_unary_backward");
  check_cuda(coeffs, "lamda_ext::taylor_unary_backward", "coeffs");
  const Kind k = parse_kind(kind);
  const c10::cuda::CUDAGuard guard(coeffs.device());
  const at::Tensor x = coeffs.contiguous(), gy = grad.contiguous();
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int C = static_cast<int>(x.size(0));
  const int64_t E = x.numel() / C;
  if (E == 0) return gx;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "taylor_unary_backward_cuda", [&] {
    dispatch_kind(k, [&](auto kc) {
      unary_backward_kernel<decltype(kc)::value, scalar_t><<<blocks_for(E, kThreads), kThreads, 0, stream>>>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), E, C,
          static_cast<scalar_t>(alpha));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gx;
}

at::Tensor taylor_cross_entropy_cuda(const at::Tensor& logit_coeffs, const at::Tensor& target,
                                     double label_smoothing) {
  const char* op = "lamda_ext::taylor_cross_entropy";
  check_cross_entropy(logit_coeffs, target);
  check_smoothing(label_smoothing, op);
  check_cuda(logit_coeffs, op, "logit_coeffs");
  const c10::cuda::CUDAGuard guard(logit_coeffs.device());
  const at::Tensor z = logit_coeffs.contiguous(), t = target.contiguous();
  const int64_t C = z.size(0), M = z.size(1), classes = z.size(2);
  at::Tensor out = at::empty({C, M}, z.options());
  if (M == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "taylor_cross_entropy_cuda", [&] {
    ce_forward_kernel<scalar_t><<<blocks_for(M, kWarpsPerBlock), kThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), t.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), M, classes, static_cast<int>(C),
        static_cast<scalar_t>(label_smoothing));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor taylor_cross_entropy_backward_cuda(const at::Tensor& grad, const at::Tensor& logit_coeffs,
                                              const at::Tensor& target, double label_smoothing) {
  const char* op = "lamda_ext::taylor_cross_entropy_backward";
  check_cross_entropy(logit_coeffs, target);
  check_smoothing(label_smoothing, op);
  check_cuda(logit_coeffs, op, "logit_coeffs");
  const c10::cuda::CUDAGuard guard(logit_coeffs.device());
  const at::Tensor z = logit_coeffs.contiguous(), t = target.contiguous();
  const int64_t C = z.size(0), M = z.size(1), classes = z.size(2);
  check_grad(grad, z, {C, M}, op);
  const at::Tensor g = grad.contiguous();
  at::Tensor gz = at::empty_like(z, at::MemoryFormat::Contiguous);
  if (M == 0) return gz;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "taylor_cross_entropy_backward_cuda", [&] {
    ce_backward_kernel<scalar_t><<<blocks_for(M, kWarpsPerBlock), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), t.data_ptr<int64_t>(), gz.data_ptr<scalar_t>(), M, classes,
        static_cast<int>(C), static_cast<scalar_t>(label_smoothing));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gz;
}

at::Tensor taylor_cross_entropy_deg1_cuda(const at::Tensor& z0, const at::Tensor& v, const at::Tensor& target,
                                          int64_t order, double label_smoothing) {
  const char* op = "lamda_ext::taylor_cross_entropy_deg1";
  check_deg1(z0, v, target, order);
  check_smoothing(label_smoothing, op);
  check_cuda(v, op, "v");
  const c10::cuda::CUDAGuard guard(v.device());
  const at::Tensor zc = z0.contiguous(), vc = v.contiguous(), t = target.contiguous();
  const int64_t K = vc.size(0), B = vc.size(1), classes = vc.size(2);
  at::Tensor out = at::empty({K, B, order}, vc.options());
  if (K * B == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(vc.scalar_type(), "taylor_cross_entropy_deg1_cuda", [&] {
    deg1_forward_kernel<scalar_t><<<blocks_for(K * B, kWarpsPerBlock), kThreads, 0, stream>>>(
        zc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(), t.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), K, B,
        classes, static_cast<int>(order), static_cast<scalar_t>(label_smoothing));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> taylor_cross_entropy_deg1_backward_cuda(const at::Tensor& grad,
                                                                           const at::Tensor& z0, const at::Tensor& v,
                                                                           const at::Tensor& target, int64_t order,
                                                                           double label_smoothing) {
  const char* op = "lamda_ext::taylor_cross_entropy_deg1_backward";
  check_deg1(z0, v, target, order);
  check_smoothing(label_smoothing, op);
  check_cuda(v, op, "v");
  const c10::cuda::CUDAGuard guard(v.device());
  const at::Tensor zc = z0.contiguous(), vc = v.contiguous(), t = target.contiguous();
  const int64_t K = vc.size(0), B = vc.size(1), classes = vc.size(2);
  check_grad(grad, vc, {K, B, order}, op);
  const at::Tensor g = grad.contiguous();
  at::Tensor gz0 = at::zeros_like(zc, at::MemoryFormat::Contiguous);
  at::Tensor gv = at::empty_like(vc, at::MemoryFormat::Contiguous);
  if (K * B == 0) return {gz0, gv};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(vc.scalar_type(), "taylor_cross_entropy_deg1_backward_cuda", [&] {
    deg1_backward_kernel<scalar_t><<<blocks_for(B, kWarpsPerBlock), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), zc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(), t.data_ptr<int64_t>(),
        gz0.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), K, B, classes, static_cast<int>(order),
        static_cast<scalar_t>(label_smoothing));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gz0, gv};
}

}  // namespace lamda_ext
