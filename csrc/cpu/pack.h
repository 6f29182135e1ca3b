// Block ("pack") form of the unary recurrences of taylor_recurrences.h for the CPU.
//
// A block holds up to kBlock elements with its coefficients laid out [kMaxCoeffs][kBlock], so every
// inner loop runs over the elements of one coefficient row with stride 1 and the compiler vectorises
// it (SSE2 on baseline x86-64). The maths, including the order of every sum, is that of
// taylor::unary_series; only the transcendental of the constant coefficient x0 is not computed here:
// the caller passes it in (p0, p1, computed for the whole tensor with torch's vectorised ops):
//   sigmoid, silu:  p0 = exp(-|x0|)
//   softplus:       p0 = exp(-|x0|),  p1 = log1p(p0)
//   tanh:           p0 = tanh(x0)
//   gelu:           p0 = exp(-x0^2/2), p1 = erfc(-x0/sqrt(2))
//   elu:            p0 = exp(x0),      p1 = expm1(x0)
//   exp:            p0 = exp(x0)
//   log:            p0 = log(x0)
// CPU only.
#pragma once

#include "taylor_recurrences.h"

namespace lamda_ext {
namespace taylor {
namespace pack {

constexpr int kBlock = 64;  // elements per block

template <typename T>
using Row = T[kBlock];

// out[j] = (1/n) sum_{k=1}^{n} k a_k[j] b_{n-k}[j]   (the derivative recurrence y' = a' b)
template <typename T>
inline void deriv_conv(const Row<T>* a, const Row<T>* b, int n, T* __restrict out, int nb) {
  T acc[kBlock];
  for (int j = 0; j < nb; ++j) acc[j] = T(0);
  for (int k = 1; k <= n; ++k) {
    const T kk = T(k);
    const T* __restrict ak = a[k];
    const T* __restrict bk = b[n - k];
    for (int j = 0; j < nb; ++j) acc[j] += kk * ak[j] * bk[j];
  }
  const T tn = T(n);
  for (int j = 0; j < nb; ++j) out[j] = acc[j] / tn;
}

// acc[j] = sum_{i=lo}^{hi} a_i[j] b_{n-i}[j]   (part of a Cauchy product)
template <typename T>
inline void cauchy(const Row<T>* a, const Row<T>* b, int lo, int hi, int n, T* __restrict acc, int nb) {
  for (int j = 0; j < nb; ++j) acc[j] = T(0);
  for (int i = lo; i <= hi; ++i) {
    const T* __restrict ai = a[i];
    const T* __restrict bi = b[n - i];
    for (int j = 0; j < nb; ++j) acc[j] += ai[j] * bi[j];
  }
}

// y = exp(a) given y0 (taylor::exp_series_from).
template <typename T>
inline void exp_series_from(const T* y0, const Row<T>* a, Row<T>* y, int C, int nb) {
  for (int j = 0; j < nb; ++j) y[0][j] = y0[j];
  for (int n = 1; n < C; ++n) deriv_conv(a, y, n, y[n], nb);
}

// y = a * b (Cauchy product), y may not alias a or b.
template <typename T>
inline void product_series(const Row<T>* a, const Row<T>* b, Row<T>* y, int C, int nb) {
  for (int n = 0; n < C; ++n) cauchy(a, b, 0, n, n, y[n], nb);
}

// s = sigmoid(x), w = s (1 - s); e = exp(-|x0|) (taylor::sigmoid_series with lx_sigmoid_pair).
template <typename T>
inline void sigmoid_series(const Row<T>* x, const T* e, Row<T>* s, Row<T>* w, int C, int nb) {
  T d[kBlock], sq[kBlock];
  for (int j = 0; j < nb; ++j) {
    const T ej = e[j];
    const T r = T(1) / (T(1) + ej);
    const bool pos = x[0][j] >= T(0);
    const T er = ej * r;
    const T sp = pos ? r : er, sm = pos ? er : r;
    s[0][j] = sp;
    w[0][j] = sp * sm;
    d[j] = sm - sp;
  }
  for (int n = 1; n < C; ++n) {
    deriv_conv(x, w, n, s[n], nb);
    cauchy(s, s, 1, n - 1, n, sq, nb);
    const T* __restrict sn = s[n];
    T* __restrict wn = w[n];
    for (int j = 0; j < nb; ++j) wn[j] = sn[j] * d[j] - sq[j];
  }
}

// y = f(x(t)) and, when NeedG, g = f'(x(t)) for a block of nb elements (taylor::unary_series<K>).
// Without NeedG, g is still used as scratch where the recurrence of y needs it.
template <Kind K, bool NeedG, typename T>
inline void unary_series(const Row<T>* x, const T* p0, const T* p1, Row<T>* y, Row<T>* g, int C, T alpha,
                         int nb) {
  if constexpr (K == Kind::Sigmoid) {
    sigmoid_series(x, p0, y, g, C, nb);
  } else if constexpr (K == Kind::Tanh) {
    T sq[kBlock];
    for (int j = 0; j < nb; ++j) {
      const T t0 = p0[j];
      y[0][j] = t0;
      g[0][j] = (T(1) - t0) * (T(1) + t0);
    }
    for (int n = 1; n < C; ++n) {
      deriv_conv(x, g, n, y[n], nb);
      if (!NeedG && n == C - 1) break;
      cauchy(y, y, 0, n, n, sq, nb);
      for (int j = 0; j < nb; ++j) g[n][j] = -sq[j];
    }
  } else if constexpr (K == Kind::Softplus) {
    Row<T> w[kMaxCoeffs];
    sigmoid_series(x, p0, g, w, C, nb);  // g = sigmoid(x) = softplus'(x)
    for (int j = 0; j < nb; ++j) {
      const T x0 = x[0][j];
      y[0][j] = (x0 > T(0) ? x0 : T(0)) + p1[j];
    }
    for (int n = 1; n < C; ++n) deriv_conv(x, g, n, y[n], nb);
  } else if constexpr (K == Kind::Silu) {
    Row<T> s[kMaxCoeffs], w[kMaxCoeffs];
    sigmoid_series(x, p0, s, w, C, nb);
    product_series(x, s, y, C, nb);  // y = x s
    if constexpr (NeedG) {
      product_series(x, w, g, C, nb);  // g = s + x s (1 - s)
      for (int n = 0; n < C; ++n)
        for (int j = 0; j < nb; ++j) g[n][j] = s[n][j] + g[n][j];
    }
  } else if constexpr (K == Kind::Gelu) {
    Row<T> e[kMaxCoeffs], phi[kMaxCoeffs], Phi[kMaxCoeffs];
    const T inv_sqrt_2pi = T(0.39894228040143267793994605993438);
    for (int n = 0; n < C; ++n) {
      cauchy(x, x, 0, n, n, e[n], nb);
      for (int j = 0; j < nb; ++j) e[n][j] = T(-0.5) * e[n][j];
    }
    T phi0[kBlock];
    for (int j = 0; j < nb; ++j) phi0[j] = inv_sqrt_2pi * p0[j];
    exp_series_from(phi0, e, phi, C, nb);
    for (int j = 0; j < nb; ++j) Phi[0][j] = T(0.5) * p1[j];
    for (int n = 1; n < C; ++n) deriv_conv(x, phi, n, Phi[n], nb);
    product_series(x, Phi, y, C, nb);
    if constexpr (NeedG) {
      product_series(x, phi, g, C, nb);  // g = Phi + x phi
      for (int n = 0; n < C; ++n)
        for (int j = 0; j < nb; ++j) g[n][j] = Phi[n][j] + g[n][j];
    }
  } else if constexpr (K == Kind::Elu) {
    // Both branches for every element, then a per-element select: identity for x0 > 0, else
    // alpha (exp(x) - 1). The unused branch may hold inf/NaN (exp of a large x0); it is discarded.
    Row<T> E[kMaxCoeffs];
    exp_series_from(p0, x, E, C, nb);
    for (int j = 0; j < nb; ++j) {
      const bool pos = x[0][j] > T(0);
      y[0][j] = pos ? x[0][j] : alpha * p1[j];
      if constexpr (NeedG) g[0][j] = pos ? T(1) : alpha * E[0][j];
    }
    for (int n = 1; n < C; ++n)
      for (int j = 0; j < nb; ++j) {
        const bool pos = x[0][j] > T(0);
        const T a = alpha * E[n][j];
        y[n][j] = pos ? x[n][j] : a;
        if constexpr (NeedG) g[n][j] = pos ? T(0) : a;
      }
  } else if constexpr (K == Kind::Exp) {
    exp_series_from(p0, x, y, C, nb);
    if constexpr (NeedG)
      for (int n = 0; n < C; ++n)
        for (int j = 0; j < nb; ++j) g[n][j] = y[n][j];
  } else if constexpr (K == Kind::Log) {  // y = log(x) (taylor::log_series), g = 1/x (taylor::reciprocal_series)
    T inv[kBlock], acc[kBlock];
    for (int j = 0; j < nb; ++j) {
      y[0][j] = p0[j];
      inv[j] = T(1) / x[0][j];
    }
    for (int n = 1; n < C; ++n) {
      for (int j = 0; j < nb; ++j) acc[j] = T(0);
      for (int k = 1; k < n; ++k) {
        const T kk = T(k);
        for (int j = 0; j < nb; ++j) acc[j] += kk * y[k][j] * x[n - k][j];
      }
      const T tn = T(n);
      for (int j = 0; j < nb; ++j) y[n][j] = (x[n][j] - acc[j] / tn) * inv[j];
    }
    if constexpr (NeedG) {
      for (int j = 0; j < nb; ++j) g[0][j] = inv[j];
      for (int n = 1; n < C; ++n) {
        cauchy(x, g, 1, n, n, acc, nb);
        for (int j = 0; j < nb; ++j) g[n][j] = -acc[j] * inv[j];
      }
    }
  } else {
    static_assert(kind_unhandled<K>, "pack::unary_series: a kind of LX_UNARY_KINDS has no block recurrence");
  }
}

// Transposed Toeplitz product: gx_k = sum_{n=k}^{C-1} gy_n g_{n-k} (taylor::toeplitz_adjoint).
template <typename T>
inline void toeplitz_adjoint(const Row<T>* gy, const Row<T>* g, Row<T>* gx, int C, int nb) {
  for (int k = 0; k < C; ++k) {
    T* __restrict out = gx[k];
    for (int j = 0; j < nb; ++j) out[j] = T(0);
    for (int n = k; n < C; ++n) {
      const T* __restrict a = gy[n];
      const T* __restrict b = g[n - k];
      for (int j = 0; j < nb; ++j) out[j] += a[j] * b[j];
    }
  }
}

}  // namespace pack
}  // namespace taylor
}  // namespace lamda_ext
