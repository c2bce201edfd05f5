// Mamba-1 selective scan for the CPU: forward and backward, one pass over time per block of 8
// channels with the state in registers/L1. Built on first use by hymba_bench/ops/cpu_kernel.py
// (c++ -O3 -march=native) and called through ctypes on tensors' data pointers; the Python side
// owns threads (each call takes a range of blocks) and autograd.
//
// Shapes are mamba-ssm's, float32. The inputs are read through their strides (simd.h's View), so
// the mixers' transposed slices arrive without a copy; the caller allocates the outputs time-major:
//   u, delta, z, dout: (B, D, L) views, any strides; Bm, Cm: (B, N, L) views, any strides
//   st: the strides (batch, channel or state, time) of u, delta, z, Bm, Cm (and dout), 3 each
//   y, du_grad, ddelta, dz: (B, L, D) contiguous     delta before bias and softplus
//   A: (D, N)   Dv, dbias: (D,)   dDp, dbp: (B, D)   last, dlast, dA: (B, D, N)
//   ck: (chunks, B, N, D)
//   dBp, dCp: (D / 8, B, L, N) per-block partial sums, reduced over the first axis by the caller
// D is a multiple of 8 (the caller pads), N <= MAX_N. A block is 8 channels of one batch row; it
// walks time in chunks of CHUNK steps, gathering each chunk's inputs into a small time-major tile
// first, so the inner loop reads one 8-lane vector per step.
//
//   delta_t <- softplus(delta_t + dbias) (each optional, as mamba-ssm's delta_bias, delta_softplus;
//   done here, on the tile, because as two torch ops and their backward they cost half the scan)
//   a_t = exp(delta_t A),  x_t = a_t x_{t-1} + delta_t u_t B_t,  y_t = sum_n C_t[n] x_t[n]
//   out_t = (y_t + Dv u_t) * silu(z_t)     (Dv and z optional, as in mamba-ssm)
//
// exp and the vector helpers are in simd.h.

#include "simd.h"

namespace {

using namespace hb;
constexpr int MAX_N = 64;

constexpr int64_t CHUNK = 64;

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(e) = 2 atanh(e / (2 + e)) as its odd series
// to s^15 (s <= 1/3: the next term is below 1e-9), exact for small e where log(1 + e) is not.
// Above 20 this rounds to x, as torch's threshold gives.
inline vf softplus(vf x) {
  const vf e = vexp(x > 0 ? -x : x), s = e / (2.0f + e), s2 = s * s;
  vf p = splat(1.0f / 15);
  p = p * s2 + 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  return (x > 0 ? x : splat(0.f)) + 2.0f * (s + s * s2 * p);
}

// One block's view of a chunk [t0, t1): the inputs gathered into time-major tiles.
struct Tile {
  // dl: delta as the recurrence uses it; raw: delta + bias, before softplus (for its gradient)
  float dl[CHUNK][LANES], raw[CHUNK][LANES], u[CHUNK][LANES], z[CHUNK][LANES], bm[CHUNK][MAX_N],
      cm[CHUNK][MAX_N];

  void load_inputs(const View& uv, const View& dv, const float* dbias, bool soft, const View& zv,
                   const View& bv, const View& cv, int64_t N, int64_t b, int64_t d0, int64_t t0,
                   int64_t len) {
    const vf bias = dbias ? load(dbias + d0) : splat(0.f);
    for (int64_t t = 0; t < len; ++t) {
      const vf r = dv.lanes(b, d0, t0 + t) + bias;
      store(raw[t], r);
      store(dl[t], soft ? softplus(r) : r);
      store(u[t], uv.lanes(b, d0, t0 + t));
      if (zv.p) store(z[t], zv.lanes(b, d0, t0 + t));
    }
    load_states(bv, bm, N, b, t0, len);
    load_states(cv, cm, N, b, t0, len);
  }

  static void load_states(const View& m, float (*tile)[MAX_N], int64_t N, int64_t b, int64_t t0,
                          int64_t len) {
    if (m.s[1] == 1) {  // the states of a step adjacent (a time-major projection's slice)
      for (int64_t t = 0; t < len; ++t) std::memcpy(tile[t], m.at(b, 0, t0 + t), N * sizeof(float));
      return;
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < len; ++t) tile[t][n] = *m.at(b, n, t0 + t);
  }
};

// (B, L, D) rows of the block's channels <- a time-major (len, LANES) tile
inline void store_tile(float* out, const float (*tile)[LANES], int64_t L, int64_t D, int64_t b,
                       int64_t d0, int64_t t0, int64_t len) {
  float* o = out + (b * L + t0) * D + d0;
  for (int64_t t = 0; t < len; ++t) store(o + t * D, load(tile[t]));
}

}  // namespace

extern "C" {

int hb_max_state() { return MAX_N; }
int hb_chunk() { return CHUNK; }

// Blocks [blk0, blk1) of B * D / 8. ck may be null (no backward to feed): else the state before
// each chunk is stored there, for the backward to recompute from.
void hb_scan_fwd(const float* u_in, const float* delta, const float* dbias, const float* A,
                 const float* Bm, const float* Cm, const float* Dv, const float* z, float* y,
                 float* last, float* ck, const int64_t* st, int64_t L, int64_t B, int64_t D,
                 int64_t N, int64_t soft, int64_t blk0, int64_t blk1) {
  const View uv{u_in, st}, dv{delta, st + 3}, zv{z, st + 6}, bv{Bm, st + 9}, cv{Cm, st + 12};
  const int64_t per_row = D / LANES;
  Tile tile;
  float yt[CHUNK][LANES];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t b = blk / per_row, d0 = (blk % per_row) * LANES;
    vf x[MAX_N], a_n[MAX_N];
    for (int64_t n = 0; n < N; ++n) { x[n] = splat(0.f); a_n[n] = gather_lanes(A + d0 * N + n, N); }
    const vf skip = Dv ? load(Dv + d0) : splat(0.f);
    for (int64_t t0 = 0; t0 < L; t0 += CHUNK) {
      const int64_t len = t0 + CHUNK < L ? CHUNK : L - t0;
      if (ck)
        for (int64_t n = 0; n < N; ++n) store(ck + ((t0 / CHUNK * B + b) * N + n) * D + d0, x[n]);
      tile.load_inputs(uv, dv, dbias, soft, zv, bv, cv, N, b, d0, t0, len);
      for (int64_t t = 0; t < len; ++t) {
        const vf dl = load(tile.dl[t]), uu = load(tile.u[t]), du = dl * uu;
        vf acc = skip * uu;
        for (int64_t n = 0; n < N; ++n) {
          x[n] = vexp(dl * a_n[n]) * x[n] + du * tile.bm[t][n];
          acc += x[n] * tile.cm[t][n];
        }
        if (z) {
          const vf zz = load(tile.z[t]);
          acc *= zz * sigmoid(zz);
        }
        store(yt[t], acc);
      }
      store_tile(y, yt, L, D, b, d0, t0, len);
    }
    for (int64_t n = 0; n < N; ++n) scatter_lanes(last + (b * D + d0) * N + n, N, x[n]);
  }
}

// The reverse recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} (g: dLoss/dx_t), one chunk at a time,
// the chunk's states, decays and outputs recomputed from its checkpoint. dA and dDp are written
// per batch row (the caller sums over B); ddelta includes the path through delta * u, and is
// the gradient of the delta given (before bias and softplus); dbp per batch row, as dDp.
void hb_scan_bwd(const float* u_in, const float* delta, const float* dbias, const float* A,
                 const float* Bm, const float* Cm, const float* Dv, const float* z,
                 const float* ck, const float* dout, const float* dlast, float* du_grad,
                 float* ddelta, float* dA, float* dBp, float* dCp, float* dDp, float* dbp, float* dz,
                 const int64_t* st, int64_t L, int64_t B, int64_t D, int64_t N, int64_t soft,
                 int64_t blk0, int64_t blk1) {
  const View uv{u_in, st}, dv{delta, st + 3}, zv{z, st + 6}, bv{Bm, st + 9}, cv{Cm, st + 12},
      gv{dout, st + 15};
  const int64_t per_row = D / LANES, chunks = (L + CHUNK - 1) / CHUNK;
  Tile tile;
  float dyt[CHUNK][LANES], yt[CHUNK][LANES], out_du[CHUNK][LANES], out_dl[CHUNK][LANES],
      out_dz[CHUNK][LANES];
  vf* xs = new vf[(2 * CHUNK + 1) * N];  // states x_{t0-1} .. x_{t1-1}, (len + 1, N)
  vf* as = xs + (CHUNK + 1) * N;         // decays a_{t0} .. a_{t1-1}, (len, N)
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t b = blk / per_row, j = blk % per_row, d0 = j * LANES;
    vf g[MAX_N], a_n[MAX_N], da_acc[MAX_N];
    for (int64_t n = 0; n < N; ++n) {
      a_n[n] = gather_lanes(A + d0 * N + n, N);
      g[n] = dlast ? gather_lanes(dlast + (b * D + d0) * N + n, N) : splat(0.f);  // a g so far
      da_acc[n] = splat(0.f);
    }
    const vf skip = Dv ? load(Dv + d0) : splat(0.f);
    vf dskip = splat(0.f), draw_sum = splat(0.f);
    for (int64_t c = chunks - 1; c >= 0; --c) {
      const int64_t t0 = c * CHUNK, len = t0 + CHUNK < L ? CHUNK : L - t0;
      tile.load_inputs(uv, dv, dbias, soft, zv, bv, cv, N, b, d0, t0, len);
      for (int64_t t = 0; t < len; ++t) store(dyt[t], gv.lanes(b, d0, t0 + t));
      for (int64_t n = 0; n < N; ++n) xs[n] = load(ck + ((c * B + b) * N + n) * D + d0);
      for (int64_t t = 0; t < len; ++t) {
        const vf dl = load(tile.dl[t]), du = dl * load(tile.u[t]);
        const vf* prev = xs + t * N;
        vf* next = xs + (t + 1) * N;
        vf* a = as + t * N;
        vf acc = splat(0.f);
        for (int64_t n = 0; n < N; ++n) {
          a[n] = vexp(dl * a_n[n]);
          next[n] = a[n] * prev[n] + du * tile.bm[t][n];
          acc += next[n] * tile.cm[t][n];
        }
        store(yt[t], acc);
      }
      float* dbr = dBp + ((j * B + b) * L + t0) * N;  // step t's states at dbr + t * N
      float* dcr = dCp + ((j * B + b) * L + t0) * N;
      for (int64_t t = len - 1; t >= 0; --t) {
        const vf dl = load(tile.dl[t]), uu = load(tile.u[t]), du = dl * uu;
        vf dyv = load(dyt[t]);  // dLoss/d out_t, then dLoss/d(y_t + Dv u_t)
        if (z) {
          const vf zz = load(tile.z[t]), sz = sigmoid(zz);
          store(out_dz[t], dyv * (load(yt[t]) + skip * uu) * sz * (1.0f + zz * (1.0f - sz)));
          dyv *= zz * sz;
        }
        dskip += dyv * uu;
        const vf* prev = xs + t * N;  // x_{t-1}
        const vf* cur = prev + N;     // x_t
        const vf* a = as + t * N;
        vf ddl = splat(0.f), ddu = splat(0.f);
        for (int64_t n = 0; n < N; ++n) {
          const vf gt = g[n] + dyv * tile.cm[t][n];
          dcr[t * N + n] = hsum(cur[n] * dyv);
          dbr[t * N + n] = hsum(gt * du);
          ddu += gt * tile.bm[t][n];
          const vf dlog = gt * prev[n] * a[n];  // dLoss / d(delta_t A)
          ddl += dlog * a_n[n];
          da_acc[n] += dlog * dl;
          g[n] = gt * a[n];
        }
        store(out_du[t], ddu * dl + dyv * skip);
        vf draw = ddl + ddu * uu;  // dLoss / d delta_t, then through softplus: sigmoid(raw)
        if (soft) draw *= sigmoid(load(tile.raw[t]));
        draw_sum += draw;
        store(out_dl[t], draw);
      }
      store_tile(du_grad, out_du, L, D, b, d0, t0, len);
      store_tile(ddelta, out_dl, L, D, b, d0, t0, len);
      if (z) store_tile(dz, out_dz, L, D, b, d0, t0, len);
    }
    store(dDp + b * D + d0, dskip);
    store(dbp + b * D + d0, draw_sum);
    for (int64_t n = 0; n < N; ++n) scatter_lanes(dA + (b * D + d0) * N + n, N, da_acc[n]);
  }
  delete[] xs;
}

}  // extern "C"
