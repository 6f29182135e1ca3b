// Taylor-coefficient recurrences shared by the CPU and CUDA kernels.
//
// A series is an array of C <= kMaxCoeffs normalised coefficients
// c_n = f^(n)(0) / n!.  Every function here is a plain inline function
// (host + device under nvcc) over small fixed-size arrays, so a kernel keeps
// the whole recurrence in registers.  Loops run to kMaxCoeffs with an early
// exit at C, so that after unrolling every array index is a compile-time
// constant (registers on the GPU) while C stays a runtime value.
//
// The adjoint of y = f(x) over series: perturbing x_k by d moves the series
// y(t) by f'(x(t)) t^k d, so dy_n/dx_k = g_{n-k} with g = f'(x(t)) — a lower
// triangular Toeplitz Jacobian.  The forward recurrences therefore also return
// g, and the backward is grad_x_k = sum_{n>=k} grad_y_n g_{n-k}.
#pragma once

#include <math.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LX_HD __host__ __device__ __forceinline__
#define LX_UNROLL _Pragma("unroll")
#else
#define LX_HD inline
#define LX_UNROLL _Pragma("GCC unroll 9")
#endif

namespace lamda_ext {
namespace taylor {

constexpr int kMaxCoeffs = 9;  // order N <= 8

// The one list of elementwise kinds: X(Enum, "name"). The enum, the names, the count and the runtime
// dispatch (ops.h) are generated from it; lamda_ext/taylor/recurrences.py:UNARY holds the same names in the same
// order (a test checks it). A kind in the list without a recurrence below (unary_series), in cpu/pack.h or in
// cpu/taylor_cpu.cpp:unary_primal fails to compile (static_assert / -Werror=switch).
#define LX_UNARY_KINDS(X) \
  X(Sigmoid, "sigmoid")   \
  X(Tanh, "tanh")         \
  X(Softplus, "softplus") \
  X(Gelu, "gelu")         \
  X(Silu, "silu")         \
  X(Elu, "elu")           \
  X(Exp, "exp")           \
  X(Log, "log")

#define LX_KIND_ENUM(e, name) e,
enum class Kind : int { LX_UNARY_KINDS(LX_KIND_ENUM) };
#undef LX_KIND_ENUM

#define LX_KIND_COUNT(e, name) +1
constexpr int kNumKinds = 0 LX_UNARY_KINDS(LX_KIND_COUNT);
#undef LX_KIND_COUNT

#define LX_KIND_NAME(e, name) name,
constexpr const char* kKindNames[kNumKinds] = {LX_UNARY_KINDS(LX_KIND_NAME)};
#undef LX_KIND_NAME

// false for every kind: lets a static_assert in the last branch of an `if constexpr` chain over kinds fire
// only when that branch is instantiated (a kind without a recurrence).
template <Kind K>
constexpr bool kind_unhandled = false;

// ---- scalar math overloads usable on host and device ----------------------
LX_HD float lx_exp(float x) { return expf(x); }
LX_HD double lx_exp(double x) { return exp(x); }
LX_HD float lx_expm1(float x) { return expm1f(x); }
LX_HD double lx_expm1(double x) { return expm1(x); }
LX_HD float lx_log(float x) { return logf(x); }
LX_HD double lx_log(double x) { return log(x); }
LX_HD float lx_log1p(float x) { return log1pf(x); }
LX_HD double lx_log1p(double x) { return log1p(x); }
LX_HD float lx_tanh(float x) { return tanhf(x); }
LX_HD double lx_tanh(double x) { return tanh(x); }
LX_HD float lx_erfc(float x) { return erfcf(x); }
LX_HD double lx_erfc(double x) { return erfc(x); }
LX_HD float lx_abs(float x) { return fabsf(x); }
LX_HD double lx_abs(double x) { return fabs(x); }

template <typename T>
LX_HD T lx_sigmoid(T x) {  // stable for both signs
  if (x >= T(0)) return T(1) / (T(1) + lx_exp(-x));
  T e = lx_exp(x);
  return e / (T(1) + e);
}

// sigmoid(x) and sigmoid(-x) from one exponential.
template <typename T>
LX_HD void lx_sigmoid_pair(T x, T& sp, T& sm) {
  const T e = lx_exp(-lx_abs(x));
  const T r = T(1) / (T(1) + e);
  const bool pos = x >= T(0);
  sp = pos ? r : e * r;
  sm = pos ? e * r : r;
}

template <typename T>
LX_HD T lx_softplus(T x) {  // log(1 + e^x), beta 1, no threshold
  return (x > T(0) ? x : T(0)) + lx_log1p(lx_exp(-lx_abs(x)));
}

// n! for n <= 8 as T.
template <typename T>
LX_HD T factorial(int n) {
  T f = T(1);
  for (int i = 2; i <= n; ++i) f *= T(i);
  return f;
}

// ---- generic series operations ---------------------------------------------

// Coefficient n >= 1 of y where y' = w x' (chain rule on series): (1/n) sum_{k=1}^n k x_k w_{n-k}.
template <typename T>
LX_HD T chain_coeff(const T* x, const T* w, int n) {
  T acc = T(0);
  LX_UNROLL
  for (int k = 1; k <= n; ++k) acc += T(k) * x[k] * w[n - k];
  return acc / T(n);
}

// y = exp(a) given y0 = exp(a0) (lets callers shift a0, e.g. by a max):
// n y_n = sum_{k=1}^n k a_k y_{n-k}.
template <typename T>
LX_HD void exp_series_from(T y0, const T* a, T* y, int C) {
  y[0] = y0;
  LX_UNROLL
  for (int n = 1; n < kMaxCoeffs; ++n) {
    if (n >= C) break;
    y[n] = chain_coeff(a, y, n);
  }
}

// L = log(S), L0 = log(S0): S0 L_n = S_n - (1/n) sum_{k=1}^{n-1} k L_k S_{n-k}.
template <typename T>
LX_HD void log_series(const T* S, T* L, int C) {
  L[0] = lx_log(S[0]);
  const T inv = T(1) / S[0];
  LX_UNROLL
  for (int n = 1; n < kMaxCoeffs; ++n) {
    if (n >= C) break;
    T acc = T(0);
    LX_UNROLL
    for (int k = 1; k < n; ++k) acc += T(k) * L[k] * S[n - k];
    L[n] = (S[n] - acc / T(n)) * inv;
  }
}

// R = 1/S: R_n = -(1/S0) sum_{k=1}^n S_k R_{n-k}.
template <typename T>
LX_HD void reciprocal_series(const T* S, T* R, int C) {
  const T inv = T(1) / S[0];
  R[0] = inv;
  LX_UNROLL
  for (int n = 1; n < kMaxCoeffs; ++n) {
    if (n >= C) break;
    T acc = T(0);
    LX_UNROLL
    for (int k = 1; k <= n; ++k) acc += S[k] * R[n - k];
    R[n] = -acc * inv;
  }
}

// y = a * b (Cauchy product), y may not alias a or b.
template <typename T>
LX_HD void product_series(const T* a, const T* b, T* y, int C) {
  LX_UNROLL
  for (int n = 0; n < kMaxCoeffs; ++n) {
    if (n >= C) break;
    T acc = T(0);
    LX_UNROLL
    for (int k = 0; k <= n; ++k) acc += a[k] * b[n - k];
    y[n] = acc;
  }
}

// Transposed Toeplitz product: gx_k = sum_{n=k}^{C-1} gy_n g_{n-k}.
template <typename T>
LX_HD void toeplitz_adjoint(const T* gy, const T* g, T* gx, int C) {
  LX_UNROLL
  for (int k = 0; k < kMaxCoeffs; ++k) {
    if (k >= C) break;
    T acc = T(0);
    LX_UNROLL
    for (int n = k; n < kMaxCoeffs; ++n) {
      if (n >= C) break;
      acc += gy[n] * g[n - k];
    }
    gx[k] = acc;
  }
}

// ---- elementwise nonlinearities ----------------------------------------------
// unary_series<K>(x, y, g, C, alpha): y = f(x(t)) and g = f'(x(t)), both C
// coefficients.

// s = sigmoid(x), w = s (1 - s) = sigmoid'(x).
template <typename T>
LX_HD void sigmoid_series(const T* x, T* s, T* w, int C) {
  T sp, sm;
  lx_sigmoid_pair(x[0], sp, sm);
  s[0] = sp;
  w[0] = sp * sm;
  const T one_m_2s0 = sm - sp;
  LX_UNROLL
  for (int n = 1; n < kMaxCoeffs; ++n) {
    if (n >= C) break;
    s[n] = chain_coeff(x, w, n);
    T sq = T(0);  // sum_{i=1}^{n-1} s_i s_{n-i}
    LX_UNROLL
    for (int i = 1; i < n; ++i) sq += s[i] * s[n - i];
    w[n] = s[n] * one_m_2s0 - sq;
  }
}

template <Kind K, typename T>
LX_HD void unary_series(const T* x, T* y, T* g, int C, T alpha) {
  if constexpr (K == Kind::Sigmoid) {
    sigmoid_series(x, y, g, C);
  } else if constexpr (K == Kind::Tanh) {
    // u = 1 - t^2 = tanh'(x)
    const T t0 = lx_tanh(x[0]);
    y[0] = t0;
    g[0] = (T(1) - t0) * (T(1) + t0);
    LX_UNROLL
    for (int n = 1; n < kMaxCoeffs; ++n) {
      if (n >= C) break;
      y[n] = chain_coeff(x, g, n);
      T sq = T(0);
      LX_UNROLL
      for (int i = 0; i <= n; ++i) sq += y[i] * y[n - i];
      g[n] = -sq;
    }
  } else if constexpr (K == Kind::Softplus) {
    T w[kMaxCoeffs] = {};
    sigmoid_series(x, g, w, C);  // g = sigmoid(x) = softplus'(x)
    y[0] = lx_softplus(x[0]);
    LX_UNROLL
    for (int n = 1; n < kMaxCoeffs; ++n) {
      if (n >= C) break;
      y[n] = chain_coeff(x, g, n);
    }
  } else if constexpr (K == Kind::Silu) {
    T s[kMaxCoeffs] = {}, w[kMaxCoeffs] = {}, xw[kMaxCoeffs] = {};
    sigmoid_series(x, s, w, C);
    product_series(x, s, y, C);   // y = x s
    product_series(x, w, xw, C);  // g = s + x s (1 - s)
    LX_UNROLL
    for (int n = 0; n < kMaxCoeffs; ++n) {
      if (n >= C) break;
      g[n] = s[n] + xw[n];
    }
  } else if constexpr (K == Kind::Gelu) {
    // phi = exp(-x^2/2)/sqrt(2 pi), Phi' = phi x', y = x Phi, g = Phi + x phi
    T e[kMaxCoeffs] = {}, phi[kMaxCoeffs] = {}, Phi[kMaxCoeffs] = {}, xphi[kMaxCoeffs] = {};
    product_series(x, x, e, C);  // e = -x^2/2
    LX_UNROLL
    for (int n = 0; n < kMaxCoeffs; ++n) {
      if (n >= C) break;
      e[n] *= T(-0.5);
    }
    const T inv_sqrt_2pi = T(0.39894228040143267793994605993438);
    const T inv_sqrt_2 = T(0.70710678118654752440084436210485);
    exp_series_from(inv_sqrt_2pi * lx_exp(e[0]), e, phi, C);
    Phi[0] = T(0.5) * lx_erfc(-x[0] * inv_sqrt_2);
    LX_UNROLL
    for (int n = 1; n < kMaxCoeffs; ++n) {
      if (n >= C) break;
      Phi[n] = chain_coeff(x, phi, n);
    }
    product_series(x, Phi, y, C);
    product_series(x, phi, xphi, C);
    LX_UNROLL
    for (int n = 0; n < kMaxCoeffs; ++n) {
      if (n >= C) break;
      g[n] = Phi[n] + xphi[n];
    }
  } else if constexpr (K == Kind::Elu) {
    if (x[0] > T(0)) {  // identity branch
      LX_UNROLL
      for (int n = 0; n < kMaxCoeffs; ++n) {
        if (n >= C) break;
        y[n] = x[n];
        g[n] = n == 0 ? T(1) : T(0);
      }
    } else {  // alpha (exp(x) - 1)
      T E[kMaxCoeffs] = {};
      exp_series_from(lx_exp(x[0]), x, E, C);
      y[0] = alpha * lx_expm1(x[0]);
      g[0] = alpha * E[0];
      LX_UNROLL
      for (int n = 1; n < kMaxCoeffs; ++n) {
        if (n >= C) break;
        y[n] = alpha * E[n];
        g[n] = alpha * E[n];
      }
    }
  } else if constexpr (K == Kind::Exp) {
    exp_series_from(lx_exp(x[0]), x, y, C);
    LX_UNROLL
    for (int n = 0; n < kMaxCoeffs; ++n) {
      if (n >= C) break;
      g[n] = y[n];
    }
  } else if constexpr (K == Kind::Log) {
    log_series(x, y, C);
    reciprocal_series(x, g, C);
  } else {
    static_assert(kind_unhandled<K>, "taylor::unary_series: a kind of LX_UNARY_KINDS has no recurrence");
  }
}

// ---- cumulants (degree-1 cross-entropy head) ---------------------------------

// Cumulants kappa_2..kappa_N from central moments m_2..m_N (m_0 = 1, m_1 = 0):
// kappa_n = m_n - sum_{k=2}^{n-2} binom(n-1, k-1) kappa_k m_{n-k}.
// Arrays are indexed by order; entries 0 and 1 are ignored/set to 0.
template <typename T>
LX_HD void cumulants_from_central(const T* m, T* kappa, int N) {
  kappa[0] = T(0);
  kappa[1] = T(0);
  LX_UNROLL
  for (int n = 2; n < kMaxCoeffs; ++n) {
    if (n > N) break;
    T acc = m[n];
    T binom = T(1);  // binom(n-1, k-2), starting at k = 2
    LX_UNROLL
    for (int k = 2; k <= n - 2; ++k) {
      binom = binom * T(n - k + 1) / T(k - 1);  // now binom(n-1, k-1)
      acc -= binom * kappa[k] * m[n - k];
    }
    kappa[n] = acc;
  }
}

}  // namespace taylor
}  // namespace lamda_ext
