// Plain C++ test of the Taylor recurrences in csrc/taylor_recurrences.h against
// closed-form series (no libtorch needed). Exit code 0 = all passed.
#include <cmath>
#include <cstdio>
#include <initializer_list>

#include "taylor_recurrences.h"

using namespace lamda_ext::taylor;

static int failures = 0;

static void expect_series(const char* name, const double* got, std::initializer_list<double> want, double tol = 1e-13) {
  int n = 0;
  for (double w : want) {
    const double err = std::fabs(got[n] - w);
    if (!(err <= tol * (1.0 + std::fabs(w)))) {
      std::printf("FAIL %s: coefficient %d = %.17g, expected %.17g\n", name, n, got[n], w);
      ++failures;
    }
    ++n;
  }
}

template <Kind K>
static void unary(const double* x, double* y, double* g, int C, double alpha = 1.0) {
  unary_series<K, double>(x, y, g, C, alpha);
}

int main() {
  const int C = 9;
  double y[kMaxCoeffs], g[kMaxCoeffs];
  const double t[kMaxCoeffs] = {0, 1, 0, 0, 0, 0, 0, 0, 0};  // the series x(t) = t

  // exp(x0 + t) = exp(x0) sum t^n / n!
  const double x0t[kMaxCoeffs] = {0.3, 1, 0, 0, 0, 0, 0, 0, 0};
  unary<Kind::Exp>(x0t, y, g, C);
  {
    const double e = std::exp(0.3);
    expect_series("exp", y, {e, e, e / 2, e / 6, e / 24, e / 120, e / 720, e / 5040, e / 40320});
    expect_series("exp'", g, {e, e, e / 2, e / 6, e / 24, e / 120, e / 720, e / 5040, e / 40320});
  }
  // log(1 + t) = sum (-1)^(n+1) t^n / n, log'(1 + t) = 1/(1 + t)
  const double one_t[kMaxCoeffs] = {1, 1, 0, 0, 0, 0, 0, 0, 0};
  unary<Kind::Log>(one_t, y, g, C);
  expect_series("log", y, {0, 1, -1.0 / 2, 1.0 / 3, -1.0 / 4, 1.0 / 5, -1.0 / 6, 1.0 / 7, -1.0 / 8});
  expect_series("log'", g, {1, -1, 1, -1, 1, -1, 1, -1, 1});
  // tanh(t) = t - t^3/3 + 2t^5/15 - 17t^7/315
  unary<Kind::Tanh>(t, y, g, C);
  expect_series("tanh", y, {0, 1, 0, -1.0 / 3, 0, 2.0 / 15, 0, -17.0 / 315, 0});
  expect_series("tanh'", g, {1, 0, -1, 0, 2.0 / 3, 0, -17.0 / 45, 0, 62.0 / 315});
  // sigmoid(t) = 1/2 + t/4 - t^3/48 + t^5/480 - 17 t^7/80640
  unary<Kind::Sigmoid>(t, y, g, C);
  expect_series("sigmoid", y, {0.5, 0.25, 0, -1.0 / 48, 0, 1.0 / 480, 0, -17.0 / 80640, 0});
  expect_series("sigmoid'", g, {0.25, 0, -1.0 / 16, 0, 1.0 / 96, 0, -17.0 / 11520, 0, 31.0 / 161280});
  // softplus(t) = log 2 + integral of sigmoid
  unary<Kind::Softplus>(t, y, g, C);
  expect_series("softplus", y, {std::log(2.0), 0.5, 1.0 / 8, 0, -1.0 / 192, 0, 1.0 / 2880, 0, -17.0 / 645120});
  // silu(t) = t sigmoid(t)
  unary<Kind::Silu>(t, y, g, C);
  expect_series("silu", y, {0, 0.5, 0.25, 0, -1.0 / 48, 0, 1.0 / 480, 0, -17.0 / 80640});
  // gelu(t) = t Phi(t), Phi(t) = 1/2 + phi(0) (t - t^3/6 + t^5/40 - t^7/336)
  unary<Kind::Gelu>(t, y, g, C);
  {
    const double p = 1.0 / std::sqrt(2.0 * M_PI);
    expect_series("gelu", y, {0, 0.5, p, 0, -p / 6, 0, p / 40, 0, -p / 336});
  }
  // elu: identity for x0 > 0, alpha (exp(x) - 1) otherwise
  const double neg[kMaxCoeffs] = {-1, 1, 0, 0, 0, 0, 0, 0, 0};
  unary<Kind::Elu>(neg, y, g, C, 0.5);
  {
    const double e = 0.5 * std::exp(-1.0);
    expect_series("elu-", y, {0.5 * (std::exp(-1.0) - 1), e, e / 2, e / 6, e / 24, e / 120, e / 720, e / 5040, e / 40320});
  }
  const double pos[kMaxCoeffs] = {0.5, 2, -1, 0.25, 0, 0, 0, 0, 3};
  unary<Kind::Elu>(pos, y, g, C, 0.5);
  expect_series("elu+", y, {0.5, 2, -1, 0.25, 0, 0, 0, 0, 3});
  expect_series("elu+'", g, {1, 0, 0, 0, 0, 0, 0, 0, 0});

  // round trips on a generic series: exp(log(x)) = x, (1/x) x = 1
  const double x[kMaxCoeffs] = {1.7, -0.4, 0.9, 0.3, -1.1, 0.05, 0.7, -0.2, 0.4};
  double L[kMaxCoeffs], E[kMaxCoeffs], R[kMaxCoeffs], P[kMaxCoeffs];
  log_series(x, L, C);
  exp_series_from(std::exp(L[0]), L, E, C);
  expect_series("exp(log x)", E, {x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8]}, 1e-12);
  reciprocal_series(x, R, C);
  product_series(x, R, P, C);
  expect_series("x/x", P, {1, 0, 0, 0, 0, 0, 0, 0, 0}, 1e-12);

  // Toeplitz adjoint vs central differences of the forward map (sigmoid of x)
  {
    double gy[kMaxCoeffs] = {0.3, -1.2, 0.7, 0.1, 2.0, -0.5, 0.25, 1.5, -0.8}, gx[kMaxCoeffs];
    unary<Kind::Sigmoid>(x, y, g, C);
    toeplitz_adjoint(gy, g, gx, C);
    for (int k = 0; k < C; ++k) {
      double xp[kMaxCoeffs], xm[kMaxCoeffs], yp[kMaxCoeffs], ym[kMaxCoeffs], gp[kMaxCoeffs];
      const double h = 1e-6;
      for (int c = 0; c < C; ++c) xp[c] = xm[c] = x[c];
      xp[k] += h;
      xm[k] -= h;
      unary<Kind::Sigmoid>(xp, yp, gp, C);
      unary<Kind::Sigmoid>(xm, ym, gp, C);
      double fd = 0;
      for (int n = 0; n < C; ++n) fd += gy[n] * (yp[n] - ym[n]) / (2 * h);
      if (std::fabs(fd - gx[k]) > 1e-7 * (1 + std::fabs(fd))) {
        std::printf("FAIL adjoint k=%d: %.12g vs finite difference %.12g\n", k, gx[k], fd);
        ++failures;
      }
    }
  }

  // cumulants of a Bernoulli(p) variable from its central moments
  {
    const double p = 0.3, q = 1 - p;
    double m[kMaxCoeffs] = {1, 0}, kappa[kMaxCoeffs];
    for (int n = 2; n <= 8; ++n) m[n] = p * std::pow(q, n) + q * std::pow(-p, n);
    cumulants_from_central(m, kappa, 8);
    // kappa_{n+1} = p q d kappa_n / dp
    const double k2 = p * q, k3 = p * q * (1 - 2 * p), k4 = p * q * (1 - 6 * p * q);
    const double k5 = p * q * (1 - 2 * p) * (1 - 12 * p * q);
    double got[4] = {kappa[2], kappa[3], kappa[4], kappa[5]};
    expect_series("bernoulli cumulants", got, {k2, k3, k4, k5}, 1e-13);
  }

  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all recurrence tests passed\n");
  return 0;
}
