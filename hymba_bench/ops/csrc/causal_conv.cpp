// Depthwise causal conv1d with an optional SiLU (causal-conv1d's causal_conv1d_fn) for the CPU:
// forward and backward. Built and called like the scan (hymba_bench/ops/cpu_kernel.py); the caller
// owns threads (each call takes a range of blocks) and autograd.
//
// Why a kernel: at training shapes (rows of ~33 steps, K = 4) torch's depthwise conv backward
// takes ~7x its forward, and the shifted-sum form costs a dozen passes over memory; here the
// pre-activation is recomputed in the backward, so nothing but x is kept.
//
// Layouts, float32. x and dout are read through their strides (simd.h's View), so the mixers'
// transposed slices of their input projection arrive without a copy; out and dx are written
// time-major, (B, L, D) contiguous, the layout the next projection reads.
//   w: (D, K)   bias: (D,) or null   dwp: (B, D, K), dbp: (B, D) per-row partial sums, reduced
//   over B by the caller
// D is a multiple of 8 (the caller pads). A block is 8 channels of one batch row: the channels are
// the vector lanes and time is the loop, the last K inputs kept in a short history.
//
//   pre_t = bias + sum_j w[j] x[t - K + 1 + j]   (x before 0 is 0)
//   out_t = silu(pre_t) if silu else pre_t

#include <vector>

#include "simd.h"

extern "C" {

// Blocks [blk0, blk1) of B * D / 8; sx: x's strides (batch, channel, time) in elements.
void hb_conv_fwd(const float* x, const int64_t* sx, const float* w, const float* bias, float* out,
                 int64_t B, int64_t D, int64_t L, int64_t K, int64_t silu, int64_t blk0,
                 int64_t blk1) {
  using namespace hb;
  (void)B;
  const int64_t per_row = D / LANES;
  const View xv{x, sx};
  std::vector<vf> wv(K), hist(K);  // hist[j] = x_{t - K + 1 + j}
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t b = blk / per_row, d0 = (blk % per_row) * LANES;
    for (int64_t j = 0; j < K; ++j) { wv[j] = gather_lanes(w + d0 * K + j, K); hist[j] = splat(0.f); }
    const vf bv = bias ? load(bias + d0) : splat(0.f);
    float* ob = out + b * L * D + d0;
    for (int64_t t = 0; t < L; ++t) {
      for (int64_t j = 0; j + 1 < K; ++j) hist[j] = hist[j + 1];
      hist[K - 1] = xv.lanes(b, d0, t);
      vf acc = bv;
      for (int64_t j = 0; j < K; ++j) acc += wv[j] * hist[j];
      store(ob + t * D, silu ? acc * sigmoid(acc) : acc);
    }
  }
}

// dpre_t = dout_t * silu'(pre_t);  dx_s = sum_j w[j] dpre_{s + K - 1 - j};
// dw[j] = sum_t dpre_t x_{t - K + 1 + j};  db = sum_t dpre_t
void hb_conv_bwd(const float* x, const int64_t* sx, const float* w, const float* bias,
                 const float* dout, const int64_t* sdout, float* dx, float* dwp, float* dbp,
                 int64_t B, int64_t D, int64_t L, int64_t K, int64_t silu, int64_t blk0,
                 int64_t blk1) {
  using namespace hb;
  (void)B;
  const int64_t per_row = D / LANES;
  const View xv{x, sx}, dv{dout, sdout};
  // dpre is followed by K zeros, so the dx loop reads zeros past the row's end
  std::vector<vf> wv(K), hist(K), dw(K), dpre(L + K);
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t b = blk / per_row, d0 = (blk % per_row) * LANES;
    for (int64_t j = 0; j < K; ++j) {
      wv[j] = gather_lanes(w + d0 * K + j, K);
      hist[j] = dw[j] = splat(0.f);
    }
    const vf bv = bias ? load(bias + d0) : splat(0.f);
    vf db = splat(0.f);
    for (int64_t t = 0; t < L; ++t) {
      for (int64_t j = 0; j + 1 < K; ++j) hist[j] = hist[j + 1];
      hist[K - 1] = xv.lanes(b, d0, t);
      vf pre = bv;
      for (int64_t j = 0; j < K; ++j) pre += wv[j] * hist[j];
      vf g = dv.lanes(b, d0, t);
      if (silu) {
        const vf s = sigmoid(pre);
        g *= s * (1.0f + pre * (1.0f - s));
      }
      dpre[t] = g;
      db += g;
      for (int64_t j = 0; j < K; ++j) dw[j] += g * hist[j];
    }
    for (int64_t j = 0; j < K; ++j) dpre[L + j] = splat(0.f);
    float* dxb = dx + b * L * D + d0;
    for (int64_t s = 0; s < L; ++s) {
      vf acc = splat(0.f);
      for (int64_t j = 0; j < K; ++j) acc += wv[j] * dpre[s + K - 1 - j];
      store(dxb + s * D, acc);
    }
    for (int64_t j = 0; j < K; ++j) scatter_lanes(dwp + (b * D + d0) * K + j, K, dw[j]);
    store(dbp + b * D + d0, db);
  }
}

}  // extern "C"
