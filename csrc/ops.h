// Declarations of the lamda_ext kernels (CPU always, CUDA under LAMDA_EXT_WITH_CUDA)
// and the input checks shared by both. Schemas live in register.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "taylor_recurrences.h"

namespace lamda_ext {

#define LX_DECLARE_OPS(dev)                                                                                   \
  at::Tensor taylor_unary_##dev(const at::Tensor& coeffs, c10::string_view kind, double alpha);               \
  at::Tensor taylor_unary_backward_##dev(const at::Tensor& grad, const at::Tensor& coeffs,                    \
                                         c10::string_view kind, double alpha);                                \
  at::Tensor taylor_cross_entropy_##dev(const at::Tensor& logit_coeffs, const at::Tensor& target,             \
                                        double label_smoothing);                                              \
  at::Tensor taylor_cross_entropy_backward_##dev(const at::Tensor& grad, const at::Tensor& logit_coeffs,      \
                                                 const at::Tensor& target, double label_smoothing);           \
  at::Tensor taylor_cross_entropy_deg1_##dev(const at::Tensor& z0, const at::Tensor& v,                       \
                                             const at::Tensor& target, int64_t order,                         \
                                             double label_smoothing);                                         \
  std::tuple<at::Tensor, at::Tensor> taylor_cross_entropy_deg1_backward_##dev(                                \
      const at::Tensor& grad, const at::Tensor& z0, const at::Tensor& v, const at::Tensor& target,           \
      int64_t order, double label_smoothing);

LX_DECLARE_OPS(cpu)
#ifdef LAMDA_EXT_WITH_CUDA
LX_DECLARE_OPS(cuda)
#endif
#undef LX_DECLARE_OPS

// ---- checks shared by the CPU and CUDA implementations ----------------------

inline taylor::Kind parse_kind(c10::string_view kind) {
  for (int i = 0; i < taylor::kNumKinds; ++i)
    if (kind == c10::string_view(taylor::kKindNames[i])) return static_cast<taylor::Kind>(i);
  std::string known;
  for (int i = 0; i < taylor::kNumKinds; ++i) known += (i ? ", " : "") + std::string(taylor::kKindNames[i]);
  TORCH_CHECK_VALUE(false, "lamda_ext::taylor_unary: unknown kind '", std::string(kind), "'; expected one of ",
                    known);
}

// Calls f(std::integral_constant<Kind, K>{}) for the runtime kind (cases generated from LX_UNARY_KINDS).
template <typename F>
void dispatch_kind(taylor::Kind kind, F&& f) {
  using taylor::Kind;
  switch (kind) {
#define LX_KIND_CASE(e, name)                     \
  case Kind::e:                                   \
    f(std::integral_constant<Kind, Kind::e>{}); \
    return;
    LX_UNARY_KINDS(LX_KIND_CASE)
#undef LX_KIND_CASE
  }
  TORCH_CHECK(false, "lamda_ext: invalid kind ", static_cast<int>(kind));
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", t.scalar_type());
}

inline void check_coeff_count(int64_t C, const char* op) {
  TORCH_CHECK_VALUE(C >= 1 && C <= taylor::kMaxCoeffs, op, ": the coefficient axis (dim 0) must hold 1..",
                    taylor::kMaxCoeffs, " Taylor coefficients (order <= ", taylor::kMaxCoeffs - 1, "), got ", C);
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* op, const char* na, const char* nb) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", na, " and ", nb, " must have the same dtype, got ",
                   a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", na, " and ", nb, " must be on the same device, got ",
                    a.device(), " and ", b.device());
}

inline void check_target(const at::Tensor& target, const at::Tensor& ref, int64_t rows, const char* op) {
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, op, ": target must be int64 class indices, got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == rows, op, ": target must have shape [", rows,
                    "], got ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == ref.device(), op, ": target must be on the device of the logits (",
                    ref.device(), "), got ", target.device());
}

inline void check_smoothing(double eps, const char* op) {
  TORCH_CHECK_VALUE(eps >= 0.0 && eps <= 1.0, op, ": label_smoothing must be in [0, 1], got ", eps);
}

inline void check_unary(const at::Tensor& coeffs) {
  const char* op = "lamda_ext::taylor_unary";
  check_floating(coeffs, op, "coeffs");
  TORCH_CHECK_VALUE(coeffs.dim() >= 1, op, ": coeffs must have a leading coefficient axis [C, ...], got a 0-d tensor");
  check_coeff_count(coeffs.size(0), op);
}

inline void check_cross_entropy(const at::Tensor& z, const at::Tensor& target) {
  const char* op = "lamda_ext::taylor_cross_entropy";
  check_floating(z, op, "logit_coeffs");
  TORCH_CHECK_VALUE(z.dim() == 3, op, ": logit_coeffs must have shape [C, M, classes], got ", z.sizes());
  check_coeff_count(z.size(0), op);
  TORCH_CHECK_VALUE(z.size(2) >= 1, op, ": need at least one class, got ", z.sizes());
  check_target(target, z, z.size(1), op);
}

inline void check_deg1(const at::Tensor& z0, const at::Tensor& v, const at::Tensor& target, int64_t order) {
  const char* op = "lamda_ext::taylor_cross_entropy_deg1";
  check_floating(z0, op, "z0");
  check_same(z0, v, op, "z0", "v");
  TORCH_CHECK_VALUE(z0.dim() == 2, op, ": z0 must have shape [B, classes], got ", z0.sizes());
  TORCH_CHECK_VALUE(v.dim() == 3 && v.size(1) == z0.size(0) && v.size(2) == z0.size(1), op,
                    ": v must have shape [K, B, classes] = [K, ", z0.size(0), ", ", z0.size(1), "], got ", v.sizes());
  TORCH_CHECK_VALUE(z0.size(1) >= 1, op, ": need at least one class, got ", z0.sizes());
  TORCH_CHECK_VALUE(order >= 1 && order <= taylor::kMaxCoeffs - 1, op, ": order must be in 1..",
                    taylor::kMaxCoeffs - 1, ", got ", order);
  check_target(target, z0, z0.size(0), op);
}

inline void check_grad(const at::Tensor& grad, const at::Tensor& ref, at::IntArrayRef shape, const char* op) {
  TORCH_CHECK_VALUE(grad.sizes() == shape, op, ": grad must have the output's shape ", shape, ", got ",
                    grad.sizes());
  check_same(grad, ref, op, "grad", "input");
}

}  // namespace lamda_ext
