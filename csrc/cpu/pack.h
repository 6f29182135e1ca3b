// Pack<S, W>: W lanes of scalar S with elementwise arithmetic, so that the
// recurrences of taylor_recurrences.h (templates on T) run on W elements at
// once; the compiler vectorises the fixed-length lane loops. Transcendentals
// and branches go lane by lane through the scalar functions. CPU only.
#pragma once

#include "taylor_recurrences.h"

namespace lamda_ext {
namespace taylor {

template <typename S, int W>
struct Pack {
  S v[W];
  Pack() : v{} {}
  template <typename U>
  explicit Pack(U s) {
    for (int l = 0; l < W; ++l) v[l] = static_cast<S>(s);
  }
  static Pack load(const S* p) {
    Pack r;
    for (int l = 0; l < W; ++l) r.v[l] = p[l];
    return r;
  }
  void store(S* p) const {
    for (int l = 0; l < W; ++l) p[l] = v[l];
  }
#define LX_PACK_OP(op)                                  \
  Pack& operator op##=(const Pack & o) {                \
    for (int l = 0; l < W; ++l) v[l] op## = o.v[l];     \
    return *this;                                       \
  }                                                     \
  friend Pack operator op(Pack a, const Pack& b) { return a op## = b; }
  LX_PACK_OP(+)
  LX_PACK_OP(-)
  LX_PACK_OP(*)
  LX_PACK_OP(/)
#undef LX_PACK_OP
  friend Pack operator-(Pack a) {
    for (int l = 0; l < W; ++l) a.v[l] = -a.v[l];
    return a;
  }
};

#define LX_PACK_FN(fn)                          \
  template <typename S, int W>                  \
  inline Pack<S, W> fn(const Pack<S, W>& x) {   \
    Pack<S, W> r;                               \
    for (int l = 0; l < W; ++l) r.v[l] = fn(x.v[l]); \
    return r;                                   \
  }
LX_PACK_FN(lx_exp)
LX_PACK_FN(lx_expm1)
LX_PACK_FN(lx_log)
LX_PACK_FN(lx_log1p)
LX_PACK_FN(lx_tanh)
LX_PACK_FN(lx_erfc)
LX_PACK_FN(lx_abs)
LX_PACK_FN(lx_sigmoid)
LX_PACK_FN(lx_softplus)
#undef LX_PACK_FN

template <typename S, int W>
inline void lx_sigmoid_pair(const Pack<S, W>& x, Pack<S, W>& sp, Pack<S, W>& sm) {
  for (int l = 0; l < W; ++l) lx_sigmoid_pair(x.v[l], sp.v[l], sm.v[l]);
}

}  // namespace taylor
}  // namespace lamda_ext
