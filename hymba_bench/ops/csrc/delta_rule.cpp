// The gated delta rule's forward for the CPU: one pass over time per (batch row, head), the
// (K, V) memory in L1. Built and called as the other kernels are (hymba_bench/ops/cpu_kernel.py).
//
// Per step, q already scaled, g <= 0 a log-decay, beta in (0, 1):
//   S' = exp(g) S,   u = beta (v - S'^T k),   S = S' + k u^T,   o = S^T q
// done as two passes over S: the read-out S^T k (times exp(g), so S' is never written), then
// the update and the output together.
//
// Shapes, float32, contiguous: q, k (B, L, H, K); v, o (B, L, H, V); g, beta (B, L, H);
// s0 (optional) and s_out (B, H, K, V). V is a multiple of 8 (the caller pads). A job is one
// (batch row, head); a call runs jobs [lo, hi).

#include <algorithm>
#include <cmath>
#include <vector>

#include "simd.h"

constexpr int GROUP = 8;

// One step on NB vectors of columns [v0, v0 + 8 NB): NB a constant, so the sums live in registers.
// NB independent sums per pass, as many as a core keeps in flight, not one chain of K additions.
template <int NB>
__attribute__((always_inline)) inline void step_columns(float* S, const float* qt, const float* kt,
                                                        const float* vt, float* ot, float decay,
                                                        float bt, int64_t K, int64_t V,
                                                        int64_t v0) {
  using namespace hb;
  vf read[NB], out[NB], uv[NB];
  for (int j = 0; j < NB; ++j) read[j] = out[j] = splat(0.f);
  for (int64_t i = 0; i < K; ++i) {  // u = beta (v - exp(g) S^T k)
    const float* srow = S + i * V + v0;
    for (int j = 0; j < NB; ++j) read[j] += load(srow + j * LANES) * kt[i];
  }
  for (int j = 0; j < NB; ++j) uv[j] = (load(vt + v0 + j * LANES) - read[j] * decay) * bt;
  for (int64_t i = 0; i < K; ++i) {  // S = exp(g) S + k u^T;  o = S^T q
    float* srow = S + i * V + v0;
    for (int j = 0; j < NB; ++j) {
      const vf s = load(srow + j * LANES) * decay + uv[j] * kt[i];
      store(srow + j * LANES, s);
      out[j] += s * qt[i];
    }
  }
  for (int j = 0; j < NB; ++j) store(ot + v0 + j * LANES, out[j]);
}

extern "C" {

void hb_delta_rule_fwd(const float* q, const float* k, const float* v, const float* g,
                       const float* beta, const float* s0, float* o, float* s_out, int64_t B,
                       int64_t L, int64_t H, int64_t K, int64_t V, int64_t lo, int64_t hi) {
  using namespace hb;
  std::vector<float> S(K * V);
  for (int64_t job = lo; job < hi; ++job) {
    const int64_t b = job / H, h = job % H;
    if (s0) std::memcpy(S.data(), s0 + job * K * V, K * V * sizeof(float));
    else std::fill(S.begin(), S.end(), 0.f);
    for (int64_t t = 0; t < L; ++t) {
      const int64_t row = (b * L + t) * H + h;
      const float *qt = q + row * K, *kt = k + row * K, *vt = v + row * V;
      float* ot = o + row * V;
      const float decay = std::exp(g[row]), bt = beta[row];
      int64_t v0 = 0;
      for (; v0 + GROUP * LANES <= V; v0 += GROUP * LANES)
        step_columns<GROUP>(S.data(), qt, kt, vt, ot, decay, bt, K, V, v0);
      switch ((V - v0) / LANES) {  // the last columns: fewer than GROUP vectors
        case 7: step_columns<7>(S.data(), qt, kt, vt, ot, decay, bt, K, V, v0); break;
        case 6: step_columns<6>(S.data(), qt, kt, vt, ot, decay, bt, K, V, v0); break;
        case 5: step_columns<5>(S.data(), qt, kt, vt, ot, decay, bt, K, V, v0); break;
        case 4: step_columns<4>(S.data(), qt, kt, vt, ot, decay, bt, K, V, v0); break;
        case 3: step_columns<3>(S.data(), qt, kt, vt, ot, decay, bt, K, V, v0); break;
        case 2: step_columns<2>(S.data(), qt, kt, vt, ot, decay, bt, K, V, v0); break;
        case 1: step_columns<1>(S.data(), qt, kt, vt, ot, decay, bt, K, V, v0); break;
        default: break;
      }
    }
    std::memcpy(s_out + job * K * V, S.data(), K * V * sizeof(float));
  }
}

}  // extern "C"
