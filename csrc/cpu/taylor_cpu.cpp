// CPU kernels of the lamda_ext Taylor ops, parallelised with at::parallel_for.
// Layouts (all made contiguous first):
//   unary:   coeffs [C, E] (E = product of the batch shape); the transcendental of x0 [E] first with
//            torch's vectorised ops, then the recurrence over blocks of kBlock elements laid out
//            [C][kBlock] (cpu/pack.h), whose element loops vectorise; several blocks per task
//   CE:      logit_coeffs [C, M, classes] -> [C, M], one row per task
//   deg-1:   z0 [B, classes], v [K, B, classes] -> [K, B, order], one (k, b) row per task;
//            its backward runs one b per task and loops over k (grad_z0 sums over k).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "cpu/pack.h"
#include "ops.h"

namespace lamda_ext {
namespace {

using taylor::Kind;
using taylor::kMaxCoeffs;

constexpr int64_t kRowGrain = 16;   // rows (samples) per task
constexpr int64_t kBatchGrain = 4;  // samples per task of the deg-1 backward (each loops over K directions)

// Unary: blocks of taylor::pack::kBlock elements; each block is copied into [C][kBlock] local rows
// (the input rows are already stride 1 over elements), run through the block recurrences and
// written back. The transcendental of x0 comes precomputed (unary_primal).
namespace pk = taylor::pack;
constexpr int64_t kBlock = pk::kBlock;

// The transcendentals of the constant coefficient x0 [E] that the block recurrences of kind K need
// (see pack.h), computed with torch's vectorised elementwise ops. Undefined tensors where unused.
std::pair<at::Tensor, at::Tensor> unary_primal(Kind k, const at::Tensor& x0) {
  switch (k) {
    case Kind::Sigmoid:
    case Kind::Silu:
      return {at::abs(x0).neg_().exp_(), at::Tensor()};
    case Kind::Softplus: {
      at::Tensor e = at::abs(x0).neg_().exp_();
      return {e, at::log1p(e)};
    }
    case Kind::Tanh:
      return {at::tanh(x0), at::Tensor()};
    case Kind::Gelu:
      return {at::mul(x0, x0).mul_(-0.5).exp_(),
              at::mul(x0, -0.70710678118654752440084436210485).erfc_()};
    case Kind::Elu:
      return {at::exp(x0), at::expm1(x0)};
    case Kind::Exp:
      return {at::exp(x0), at::Tensor()};
    case Kind::Log:
      return {at::log(x0), at::Tensor()};
  }  // no default: a kind missing here is a -Werror=switch compile error
  TORCH_CHECK(false, "lamda_ext: invalid kind ", static_cast<int>(k));
}

template <typename T>
inline void load_rows(const T* src, pk::Row<T>* dst, int64_t E, int64_t i, int C, int nb) {
  for (int c = 0; c < C; ++c) {
    const T* __restrict s = src + c * E + i;
    T* __restrict d = dst[c];
    for (int j = 0; j < nb; ++j) d[j] = s[j];
  }
}

template <typename T>
inline void store_rows(const pk::Row<T>* src, T* dst, int64_t E, int64_t i, int C, int nb) {
  for (int c = 0; c < C; ++c) {
    const T* __restrict s = src[c];
    T* __restrict d = dst + c * E + i;
    for (int j = 0; j < nb; ++j) d[j] = s[j];
  }
}

constexpr int64_t kBlockGrain = 2048 / kBlock;  // blocks per task

template <Kind K, typename T>
void unary_forward_loop(const T* x, const T* p0, const T* p1, T* y, int64_t E, int C, T alpha) {
  const int64_t nblocks = (E + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, kBlockGrain, [&](int64_t begin, int64_t end) {
    pk::Row<T> xs[kMaxCoeffs], ys[kMaxCoeffs], gs[kMaxCoeffs];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t i = blk * kBlock;
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, E - i));
      load_rows(x, xs, E, i, C, nb);
      pk::unary_series<K, false>(xs, p0 + i, p1 ? p1 + i : nullptr, ys, gs, C, alpha, nb);
      store_rows(ys, y, E, i, C, nb);
    }
  });
}

template <Kind K, typename T>
void unary_backward_loop(const T* gy, const T* x, const T* p0, const T* p1, T* gx, int64_t E, int C, T alpha) {
  const int64_t nblocks = (E + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, kBlockGrain, [&](int64_t begin, int64_t end) {
    pk::Row<T> xs[kMaxCoeffs], ys[kMaxCoeffs], gs[kMaxCoeffs], gys[kMaxCoeffs], gxs[kMaxCoeffs];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t i = blk * kBlock;
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, E - i));
      load_rows(x, xs, E, i, C, nb);
      load_rows(gy, gys, E, i, C, nb);
      pk::unary_series<K, true>(xs, p0 + i, p1 ? p1 + i : nullptr, ys, gs, C, alpha, nb);
      pk::toeplitz_adjoint(gys, gs, gxs, C, nb);
      store_rows(gxs, gx, E, i, C, nb);
    }
  });
}

void check_target_values(const at::Tensor& target, int64_t classes, const char* op) {
  const int64_t* t = target.data_ptr<int64_t>();
  for (int64_t i = 0; i < target.numel(); ++i)
    TORCH_CHECK_VALUE(t[i] >= 0 && t[i] < classes, op, ": target[", i, "] = ", t[i], " is not a class index in [0, ",
                      classes, ")");
}

// Row maximum of the constant coefficients z[0, row, :] (stride 1 over classes).
template <typename T>
T row_max(const T* z, int64_t classes) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < classes; ++j) mx = std::max(mx, z[j]);
  return mx;
}

// E_j = exp(z_j(t) - max) for class j of a row; coefficient stride cs.
template <typename T>
void class_exp_series(const T* zr, int64_t j, int64_t cs, T mx, int C, T* a, T* E) {
  for (int c = 0; c < C; ++c) a[c] = zr[c * cs + j];
  taylor::exp_series_from(taylor::lx_exp(a[0] - mx), a, E, C);
}

template <typename T>
void ce_forward_loop(const T* z, const int64_t* target, T* out, int64_t M, int64_t classes, int C, T eps) {
  const int64_t cs = M * classes;
  const T q_off = eps / T(classes), q_on = T(1) - eps;
  at::parallel_for(0, M, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const T* zr = z + m * classes;
      const T mx = row_max(zr, classes);
      T S[kMaxCoeffs] = {}, sz[kMaxCoeffs] = {}, a[kMaxCoeffs] = {}, E[kMaxCoeffs] = {}, L[kMaxCoeffs] = {};
      for (int64_t j = 0; j < classes; ++j) {
        class_exp_series(zr, j, cs, mx, C, a, E);
        for (int c = 0; c < C; ++c) {
          S[c] += E[c];
          sz[c] += a[c];
        }
      }
      taylor::log_series(S, L, C);
      L[0] += mx;
      const int64_t y = target[m];
      for (int c = 0; c < C; ++c) out[c * M + m] = L[c] - q_on * zr[c * cs + y] - q_off * sz[c];
    }
  });
}

// d L_n / d z_{j,k} = [p_j(t)]_{n-k} - q_j [n == k], p(t) = softmax(z(t)).
template <typename T>
void ce_backward_loop(const T* g, const T* z, const int64_t* target, T* gz, int64_t M, int64_t classes, int C,
                      T eps) {
  const int64_t cs = M * classes;
  const T q_off = eps / T(classes), q_on = T(1) - eps;
  at::parallel_for(0, M, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const T* zr = z + m * classes;
      T* gr = gz + m * classes;
      const T mx = row_max(zr, classes);
      T S[kMaxCoeffs] = {}, a[kMaxCoeffs] = {}, E[kMaxCoeffs] = {}, R[kMaxCoeffs] = {}, p[kMaxCoeffs] = {}, gl[kMaxCoeffs] = {},
          gj[kMaxCoeffs] = {};
      for (int64_t j = 0; j < classes; ++j) {
        class_exp_series(zr, j, cs, mx, C, a, E);
        for (int c = 0; c < C; ++c) S[c] += E[c];
      }
      taylor::reciprocal_series(S, R, C);
      for (int c = 0; c < C; ++c) gl[c] = g[c * M + m];
      const int64_t y = target[m];
      for (int64_t j = 0; j < classes; ++j) {
        class_exp_series(zr, j, cs, mx, C, a, E);
        taylor::product_series(E, R, p, C);
        taylor::toeplitz_adjoint(gl, p, gj, C);
        const T q = (j == y ? q_on : T(0)) + q_off;
        for (int c = 0; c < C; ++c) gr[c * cs + j] = gj[c] - q * gl[c];
      }
    }
  });
}

// Per-row statistics of the degree-1 head: p = softmax(z0) (unnormalised e_j
// and its sum S), mean mu = E_p[v], and cumulants kappa_2..kappa_N.
template <typename T>
struct Deg1Row {
  T mx, S, mu, kappa[kMaxCoeffs];
};

template <typename T>
Deg1Row<T> deg1_row(const T* zr, const T* vr, int64_t classes, int N) {
  Deg1Row<T> st;
  st.mx = row_max(zr, classes);
  T S = T(0), A = T(0);
  for (int64_t j = 0; j < classes; ++j) {
    const T e = taylor::lx_exp(zr[j] - st.mx);
    S += e;
    A += e * vr[j];
  }
  st.S = S;
  st.mu = A / S;
  T mom[kMaxCoeffs] = {};
  for (int64_t j = 0; j < classes; ++j) {
    const T e = taylor::lx_exp(zr[j] - st.mx);
    const T w = vr[j] - st.mu;
    T pw = e * w;
    for (int n = 2; n <= N; ++n) {
      pw *= w;
      mom[n] += pw;
    }
  }
  for (int n = 2; n <= N; ++n) mom[n] /= S;
  taylor::cumulants_from_central(mom, st.kappa, N);
  return st;
}

template <typename T>
void deg1_forward_loop(const T* z0, const T* v, const int64_t* target, T* out, int64_t K, int64_t B, int64_t classes,
                       int N, T eps) {
  const T q_off = eps / T(classes), q_on = T(1) - eps;
  at::parallel_for(0, K * B, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r % B;
      const T* zr = z0 + b * classes;
      const T* vr = v + r * classes;
      const Deg1Row<T> st = deg1_row(zr, vr, classes, N);
      T sv = T(0);
      for (int64_t j = 0; j < classes; ++j) sv += vr[j];
      T* o = out + r * N;
      o[0] = st.mu - q_on * vr[target[b]] - q_off * sv;
      for (int n = 2; n <= N; ++n) o[n - 1] = st.kappa[n];
    }
  });
}

// With f(t) = CE(z0 + t v), d_n = f^(n)(0):
//   d d_n / d z0_j = n! [p_j(t)]_n,  d d_n / d v_j = n! ([p_j(t)]_{n-1} - q_j [n == 1]),
// where p_j(t) = p_j exp(t (v_j - mu) - sum_{n>=2} kappa_n t^n / n!).
template <typename T>
void deg1_backward_loop(const T* g, const T* z0, const T* v, const int64_t* target, T* gz0, T* gv, int64_t K,
                        int64_t B, int64_t classes, int N, T eps) {
  const T q_off = eps / T(classes), q_on = T(1) - eps;
  at::parallel_for(0, B, kBatchGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T* zr = z0 + b * classes;
      T* gzr = gz0 + b * classes;
      for (int64_t j = 0; j < classes; ++j) gzr[j] = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t r = k * B + b;
        const T* vr = v + r * classes;
        T* gvr = gv + r * classes;
        const Deg1Row<T> st = deg1_row(zr, vr, classes, N);
        T gf[kMaxCoeffs] = {}, a[kMaxCoeffs] = {}, E[kMaxCoeffs] = {};
        for (int n = 1; n <= N; ++n) gf[n] = g[r * N + n - 1] * taylor::factorial<T>(n);
        a[0] = T(0);
        for (int n = 2; n <= N; ++n) a[n] = -st.kappa[n] / taylor::factorial<T>(n);
        for (int64_t j = 0; j < classes; ++j) {
          const T pj = taylor::lx_exp(zr[j] - st.mx) / st.S;
          a[1] = vr[j] - st.mu;
          taylor::exp_series_from(pj, a, E, N + 1);  // E = p_j(t)
          T accz = T(0), accv = T(0);
          for (int n = 1; n <= N; ++n) {
            accz += gf[n] * E[n];
            accv += gf[n] * E[n - 1];
          }
          const T q = (j == target[b] ? q_on : T(0)) + q_off;
          gzr[j] += accz;
          gvr[j] = accv - q * gf[1];
        }
      }
    }
  });
}

}  // namespace

at::Tensor taylor_unary_cpu(const at::Tensor& coeffs, c10::string_view kind, double alpha) {
  check_unary(coeffs);
  const Kind k = parse_kind(kind);
  const at::Tensor x = coeffs.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int C = static_cast<int>(x.size(0));
  const int64_t E = C ? x.numel() / C : 0;
  if (E == 0) return y;
  const std::pair<at::Tensor, at::Tensor> primal = unary_primal(k, x.reshape({C, E}).select(0, 0));
  const at::Tensor &p0 = primal.first, &p1 = primal.second;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "taylor_unary_cpu", [&] {
    dispatch_kind(k, [&](auto kc) {
      unary_forward_loop<decltype(kc)::value, scalar_t>(
          x.data_ptr<scalar_t>(), p0.data_ptr<scalar_t>(), p1.defined() ? p1.data_ptr<scalar_t>() : nullptr,
          y.data_ptr<scalar_t>(), E, C, static_cast<scalar_t>(alpha));
    });
  });
  return y;
}

at::Tensor taylor_unary_backward_cpu(const at::Tensor& grad, const at::Tensor& coeffs, c10::string_view kind,
                                     double alpha) {
  check_unary(coeffs);
  check_grad(grad, coeffs, coeffs.sizes(), "lamda_ext::taylor_unary_backward");
  const Kind k = parse_kind(kind);
  const at::Tensor x = coeffs.contiguous(), gy = grad.contiguous();
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int C = static_cast<int>(x.size(0));
  const int64_t E = C ? x.numel() / C : 0;
  if (E == 0) return gx;
  const std::pair<at::Tensor, at::Tensor> primal = unary_primal(k, x.reshape({C, E}).select(0, 0));
  const at::Tensor &p0 = primal.first, &p1 = primal.second;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "taylor_unary_backward_cpu", [&] {
    dispatch_kind(k, [&](auto kc) {
      unary_backward_loop<decltype(kc)::value, scalar_t>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), p0.data_ptr<scalar_t>(),
          p1.defined() ? p1.data_ptr<scalar_t>() : nullptr, gx.data_ptr<scalar_t>(), E, C,
          static_cast<scalar_t>(alpha));
    });
  });
  return gx;
}

at::Tensor taylor_cross_entropy_cpu(const at::Tensor& logit_coeffs, const at::Tensor& target,
                                    double label_smoothing) {
  const char* op = "lamda_ext::taylor_cross_entropy";
  check_cross_entropy(logit_coeffs, target);
  check_smoothing(label_smoothing, op);
  const at::Tensor z = logit_coeffs.contiguous(), t = target.contiguous();
  const int64_t C = z.size(0), M = z.size(1), classes = z.size(2);
  check_target_values(t, classes, op);
  at::Tensor out = at::empty({C, M}, z.options());
  if (M == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "taylor_cross_entropy_cpu", [&] {
    ce_forward_loop<scalar_t>(z.data_ptr<scalar_t>(), t.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), M, classes,
                              static_cast<int>(C), static_cast<scalar_t>(label_smoothing));
  });
  return out;
}

at::Tensor taylor_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logit_coeffs,
                                             const at::Tensor& target, double label_smoothing) {
  const char* op = "lamda_ext::taylor_cross_entropy_backward";
  check_cross_entropy(logit_coeffs, target);
  check_smoothing(label_smoothing, op);
  const at::Tensor z = logit_coeffs.contiguous(), t = target.contiguous();
  const int64_t C = z.size(0), M = z.size(1), classes = z.size(2);
  check_grad(grad, z, {C, M}, op);
  check_target_values(t, classes, op);
  const at::Tensor g = grad.contiguous();
  at::Tensor gz = at::empty_like(z, at::MemoryFormat::Contiguous);
  if (M == 0) return gz;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "taylor_cross_entropy_backward_cpu", [&] {
    ce_backward_loop<scalar_t>(g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), t.data_ptr<int64_t>(),
                               gz.data_ptr<scalar_t>(), M, classes, static_cast<int>(C),
                               static_cast<scalar_t>(label_smoothing));
  });
  return gz;
}

at::Tensor taylor_cross_entropy_deg1_cpu(const at::Tensor& z0, const at::Tensor& v, const at::Tensor& target,
                                         int64_t order, double label_smoothing) {
  const char* op = "lamda_ext::taylor_cross_entropy_deg1";
  check_deg1(z0, v, target, order);
  check_smoothing(label_smoothing, op);
  const at::Tensor zc = z0.contiguous(), vc = v.contiguous(), t = target.contiguous();
  const int64_t K = vc.size(0), B = vc.size(1), classes = vc.size(2);
  check_target_values(t, classes, op);
  at::Tensor out = at::empty({K, B, order}, vc.options());
  if (K * B == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(vc.scalar_type(), "taylor_cross_entropy_deg1_cpu", [&] {
    deg1_forward_loop<scalar_t>(zc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(), t.data_ptr<int64_t>(),
                                out.data_ptr<scalar_t>(), K, B, classes, static_cast<int>(order),
                                static_cast<scalar_t>(label_smoothing));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> taylor_cross_entropy_deg1_backward_cpu(const at::Tensor& grad, const at::Tensor& z0,
                                                                          const at::Tensor& v,
                                                                          const at::Tensor& target, int64_t order,
                                                                          double label_smoothing) {
  const char* op = "lamda_ext::taylor_cross_entropy_deg1_backward";
  check_deg1(z0, v, target, order);
  check_smoothing(label_smoothing, op);
  const at::Tensor zc = z0.contiguous(), vc = v.contiguous(), t = target.contiguous();
  const int64_t K = vc.size(0), B = vc.size(1), classes = vc.size(2);
  check_grad(grad, vc, {K, B, order}, op);
  check_target_values(t, classes, op);
  const at::Tensor g = grad.contiguous();
  at::Tensor gz0 = at::zeros_like(zc, at::MemoryFormat::Contiguous);
  at::Tensor gv = at::empty_like(vc, at::MemoryFormat::Contiguous);
  if (K * B == 0) return {gz0, gv};
  AT_DISPATCH_FLOATING_TYPES(vc.scalar_type(), "taylor_cross_entropy_deg1_backward_cpu", [&] {
    deg1_backward_loop<scalar_t>(g.data_ptr<scalar_t>(), zc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(),
                                 t.data_ptr<int64_t>(), gz0.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), K, B,
                                 classes, static_cast<int>(order), static_cast<scalar_t>(label_smoothing));
  });
  return {gz0, gv};
}

}  // namespace lamda_ext
