// libtorch test: the lamda_ext ops are registered (TORCH_LIBRARY) and give, through
// the dispatcher, the same numbers as the header recurrences and closed forms.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>

#include "taylor_recurrences.h"

using namespace lamda_ext::taylor;

static int failures = 0;

static void expect_close(const char* what, double got, double want, double tol = 1e-12) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: %.17g vs %.17g\n", what, got, want);
    ++failures;
  }
}

int main() {
  auto& disp = c10::Dispatcher::singleton();
  auto unary = disp.findSchemaOrThrow("lamda_ext::taylor_unary", "")
                   .typed<at::Tensor(const at::Tensor&, c10::string_view, double)>();
  auto ce = disp.findSchemaOrThrow("lamda_ext::taylor_cross_entropy", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  auto deg1 = disp.findSchemaOrThrow("lamda_ext::taylor_cross_entropy_deg1", "")
                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double)>();

  // unary: tanh over a [C, 4, 3] batch against the header recurrence element by element
  const int C = 7;
  at::Tensor x = at::randn({C, 4, 3}, at::kDouble);
  at::Tensor y = unary.call(x, "tanh", 1.0);
  auto xa = x.accessor<double, 3>();
  auto ya = y.accessor<double, 3>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) {
      double xs[kMaxCoeffs], ys[kMaxCoeffs], gs[kMaxCoeffs];
      for (int c = 0; c < C; ++c) xs[c] = xa[c][i][j];
      unary_series<Kind::Tanh, double>(xs, ys, gs, C, 1.0);
      for (int c = 0; c < C; ++c) expect_close("taylor_unary(tanh)", ya[c][i][j], ys[c]);
    }

  // cross-entropy of constant logits (C = 1) equals at::cross_entropy_loss per sample
  at::Tensor z = at::randn({1, 5, 4}, at::kDouble);
  at::Tensor target = at::randint(0, 4, {5}, at::kLong);
  at::Tensor got = ce.call(z, target, 0.1);
  at::Tensor ref = at::cross_entropy_loss(z[0], target, {}, at::Reduction::None, -100, 0.1);
  for (int m = 0; m < 5; ++m) expect_close("taylor_cross_entropy", got[0][m].item<double>(), ref[m].item<double>());

  // deg-1 head: d_2 = Var_p(v) for one direction
  at::Tensor z0 = at::randn({5, 4}, at::kDouble), v = at::randn({1, 5, 4}, at::kDouble);
  at::Tensor d = deg1.call(z0, v, target, 3, 0.0);
  at::Tensor p = at::softmax(z0, 1);
  at::Tensor mu = (p * v[0]).sum(1, true);
  at::Tensor var = (p * (v[0] - mu).pow(2)).sum(1);
  for (int b = 0; b < 5; ++b) expect_close("taylor_cross_entropy_deg1 d2", d[0][b][1].item<double>(), var[b].item<double>());

  // bad input raises
  bool threw = false;
  try {
    unary.call(at::randn({10, 2}, at::kDouble), "tanh", 1.0);
  } catch (const c10::Error&) {
    threw = true;
  }
  if (!threw) {
    std::printf("FAIL: C = 10 coefficients did not raise\n");
    ++failures;
  }

  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all op tests passed\n");
  return 0;
}
