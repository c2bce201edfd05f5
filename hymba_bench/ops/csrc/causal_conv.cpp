// Depthwise causal conv1d with an optional SiLU (causal-conv1d's causal_conv1d_fn) for the CPU:
// forward and backward, one pass over each (batch, channel) row. Built and called like the scan
// (hymba_bench/ops/cpu_kernel.py); the caller owns threads (each call takes a range of rows) and
// autograd.
//
// Why a kernel: at training shapes (rows of ~33 steps, K = 4) torch's depthwise conv backward
// takes ~7x its forward, and the shifted-sum form costs a dozen passes over memory; here the
// pre-activation is recomputed in the backward, so nothing but x is kept.
//
// Layouts, float32, contiguous: x, out, dout, dx: (B, D, L)   w: (D, K)   bias: (D,) or null
//   dwp: (B, D, K), dbp: (B, D) per-row partial sums, reduced over B by the caller
//
//   pre_t = bias + sum_j w[j] x[t - K + 1 + j]   (x before 0 is 0)
//   out_t = silu(pre_t) if silu else pre_t
//
// Rows are copied into a zero-padded buffer first, so the boundary and the vector tail need no
// branches: pre for 8 consecutive t is K vector loads at shifted offsets.

#include <vector>

#include "simd.h"

namespace {

using namespace hb;

inline int64_t round_up(int64_t n) { return (n + LANES - 1) / LANES * LANES; }

// pre-activations of one row into pre[0 .. round_up(L)); xpad = K-1 zeros, the row, zeros
inline void preactivation(const float* xpad, const float* w, float b, int64_t K, int64_t L,
                          float* pre) {
  for (int64_t t = 0; t < L; t += LANES) {
    vf acc = splat(b);
    for (int64_t j = 0; j < K; ++j) acc += w[j] * load(xpad + t + j);
    store(pre + t, acc);
  }
}

}  // namespace

extern "C" {

// Rows [row0, row1) of B * D.
void hb_conv_fwd(const float* x, const float* w, const float* bias, float* out, int64_t B,
                 int64_t D, int64_t L, int64_t K, int64_t silu, int64_t row0, int64_t row1) {
  (void)B;
  const int64_t Lp = round_up(L);
  std::vector<float> xpad(K - 1 + Lp + LANES, 0.f), pre(Lp);
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t d = row % D;
    std::memcpy(xpad.data() + K - 1, x + row * L, L * sizeof(float));
    preactivation(xpad.data(), w + d * K, bias ? bias[d] : 0.f, K, L, pre.data());
    if (silu)
      for (int64_t t = 0; t < Lp; t += LANES) {
        const vf p = load(pre.data() + t);
        store(pre.data() + t, p * sigmoid(p));
      }
    std::memcpy(out + row * L, pre.data(), L * sizeof(float));
  }
}

// dpre_t = dout_t * silu'(pre_t);  dx_s = sum_j w[j] dpre_{s + K - 1 - j};
// dw[j] = sum_t dpre_t x_{t - K + 1 + j};  db = sum_t dpre_t
void hb_conv_bwd(const float* x, const float* w, const float* bias, const float* dout, float* dx,
                 float* dwp, float* dbp, int64_t B, int64_t D, int64_t L, int64_t K, int64_t silu,
                 int64_t row0, int64_t row1) {
  (void)B;
  const int64_t Lp = round_up(L);
  // dpre is followed by K + LANES zeros that are never written, so every shifted load of the dx
  // loop is in bounds and reads zeros past the row's end.
  std::vector<float> xpad(K - 1 + Lp + LANES, 0.f), pre(Lp), dpad(Lp + K + LANES, 0.f);
  float* dpre = dpad.data();
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t d = row % D;
    const float* wd = w + d * K;
    std::memcpy(xpad.data() + K - 1, x + row * L, L * sizeof(float));
    preactivation(xpad.data(), wd, bias ? bias[d] : 0.f, K, L, pre.data());
    std::memcpy(dpre, dout + row * L, L * sizeof(float));
    std::memset(dpre + L, 0, (Lp - L) * sizeof(float));  // no gradient past the row's end
    vf db = splat(0.f);
    for (int64_t t = 0; t < Lp; t += LANES) {
      vf g = load(dpre + t);
      if (silu) {
        const vf p = load(pre.data() + t), s = sigmoid(p);
        g *= s * (1.0f + p * (1.0f - s));
      }
      store(dpre + t, g);
      db += g;
    }
    dbp[row] = hsum(db);
    for (int64_t j = 0; j < K; ++j) {
      vf acc = splat(0.f);
      for (int64_t t = 0; t < Lp; t += LANES) acc += load(dpre + t) * load(xpad.data() + t + j);
      dwp[row * K + j] = hsum(acc);
    }
    float* dxr = dx + row * L;
    for (int64_t s0 = 0; s0 < L; s0 += LANES) {
      vf acc = splat(0.f);
      for (int64_t j = 0; j < K; ++j) acc += wd[j] * load(dpre + s0 + K - 1 - j);
      if (s0 + LANES <= L) {
        store(dxr + s0, acc);
      } else {
        for (int64_t c = 0; s0 + c < L; ++c) dxr[s0 + c] = acc[c];
      }
    }
  }
}

}  // extern "C"
