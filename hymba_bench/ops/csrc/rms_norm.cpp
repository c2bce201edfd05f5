// RMSNorm for the CPU: forward and backward, one pass over each row. Built and called like the
// scan (hymba_bench/ops/cpu_kernel.py); the caller owns threads (each call takes a range of
// blocks of ROWS rows) and autograd.
//
// Why a kernel: a tiny model's training step runs ~60 norms per forward over rows of 16-192
// floats; as torch ops each is eight passes over memory forward and backward, here one.
//
// Layouts, float32, contiguous: x, out, dy, dx: (R, d)   w: (d,)   rstd: (R,)
//   dwp: (ceil(R / ROWS), d) per-block partial sums of dw, reduced by the caller
//
//   rstd = 1 / sqrt(mean(x^2) + eps),  out = x rstd w
//   dx = rstd (g - xhat mean(g xhat)) with g = dy w, xhat = x rstd;  dw = sum_rows dy xhat

#include <vector>

#include "simd.h"

namespace {

using namespace hb;
constexpr int64_t ROWS = 64;

inline float dot(const float* a, const float* b, int64_t d) {
  vf acc = splat(0.f);
  int64_t j = 0;
  for (; j + LANES <= d; j += LANES) acc += load(a + j) * load(b + j);
  float s = hsum(acc);
  for (; j < d; ++j) s += a[j] * b[j];
  return s;
}

}  // namespace

extern "C" {

int64_t hb_norm_rows() { return ROWS; }

void hb_rmsnorm_fwd(const float* x, const float* w, float* out, float* rstd, int64_t R, int64_t d,
                    float eps, int64_t blk0, int64_t blk1) {
  const int64_t r1 = blk1 * ROWS < R ? blk1 * ROWS : R;
  for (int64_t r = blk0 * ROWS; r < r1; ++r) {
    const float* xr = x + r * d;
    float* o = out + r * d;
    const float rs = 1.0f / __builtin_sqrtf(dot(xr, xr, d) / d + eps);
    rstd[r] = rs;
    const vf vrs = splat(rs);
    int64_t j = 0;
    for (; j + LANES <= d; j += LANES) store(o + j, load(xr + j) * vrs * load(w + j));
    for (; j < d; ++j) o[j] = xr[j] * rs * w[j];
  }
}

void hb_rmsnorm_bwd(const float* x, const float* w, const float* rstd, const float* dy, float* dx,
                    float* dwp, int64_t R, int64_t d, int64_t blk0, int64_t blk1) {
  std::vector<float> g(d);
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    float* dw = dwp + blk * d;
    for (int64_t j = 0; j < d; ++j) dw[j] = 0.f;
    const int64_t r1 = (blk + 1) * ROWS < R ? (blk + 1) * ROWS : R;
    for (int64_t r = blk * ROWS; r < r1; ++r) {
      const float *xr = x + r * d, *dyr = dy + r * d;
      const float rs = rstd[r];
      for (int64_t j = 0; j < d; ++j) g[j] = dyr[j] * w[j];
      const float m = dot(g.data(), xr, d) * rs / d;  // mean(g xhat)
      float* dxr = dx + r * d;
      for (int64_t j = 0; j < d; ++j) {
        const float xh = xr[j] * rs;
        dxr[j] = rs * (g[j] - xh * m);
        dw[j] += dyr[j] * xh;
      }
    }
  }
}

}  // extern "C"
