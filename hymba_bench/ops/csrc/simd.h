// Vector helpers shared by the compiled CPU kernels (selective_scan.cpp, causal_conv.cpp,
// rms_norm.cpp): GCC/Clang vector types of 8 floats, so every lane computes at once on any SIMD
// width the compiler targets.
//
// No fast-math: exp is the classic range reduction e^x = 2^k e^r, |r| <= ln2/2, with a degree-6
// polynomial for e^r (within 2 ulp of libm; tests/ops/test_ops.py holds it there).

#pragma once

#include <cstdint>
#include <cstring>

namespace hb {

typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
constexpr int LANES = 8;

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float s) { return vf{} + s; }
inline float hsum(vf v) {  // a tree: three shuffle-adds, not seven dependent lane extracts
  typedef int32_t vmask __attribute__((vector_size(32)));
  v += __builtin_shuffle(v, vmask{4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, vmask{2, 3, 0, 1, 6, 7, 4, 5});
  v += __builtin_shuffle(v, vmask{1, 0, 3, 2, 5, 4, 7, 6});
  return v[0];
}

inline vf gather_lanes(const float* p, int64_t stride) {  // p[0], p[stride], ... as one vector
  vf v;
  for (int c = 0; c < LANES; ++c) v[c] = p[c * stride];
  return v;
}

inline void scatter_lanes(float* p, int64_t stride, vf v) {
  for (int c = 0; c < LANES; ++c) p[c * stride] = v[c];
}

// A (batch, channel, time) float tensor as torch holds it, strides in elements: a transposed or
// sliced view is read in place. lanes(b, c0, t): channels c0 .. c0 + 7 at step t, one vector load
// where the channels are adjacent.
struct View {
  const float* p;
  const int64_t* s;
  const float* at(int64_t b, int64_t c, int64_t t) const { return p + b * s[0] + c * s[1] + t * s[2]; }
  vf lanes(int64_t b, int64_t c0, int64_t t) const {
    const float* q = at(b, c0, t);
    return s[1] == 1 ? load(q) : gather_lanes(q, s[1]);
  }
};

__attribute__((always_inline)) inline vf vexp(vf x) {
  const vf lo = splat(-87.33654475f), hi = splat(88.3683f);  // keeps round(x / ln 2) <= 127
  const vi under = x < lo;  // e^x below the smallest normal float: 0, as libm's result rounds to
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  // k = round(x / ln 2) by the 1.5 * 2^23 trick: adding it leaves k in the low mantissa bits
  const vf shifted = x * 1.44269504088896341f + 12582912.0f;
  const vf kf = shifted - 12582912.0f;
  vi k;
  std::memcpy(&k, &shifted, sizeof k);
  k -= 0x4B400000;
  const vf r = x - kf * 0.693359375f + kf * 2.12194440e-4f;  // ln 2 split in two for exactness
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi bits = (k + 127) << 23;  // 2^k as float bits
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const vf y = p * scale;
  return under ? splat(0.f) : y;
}

inline vf sigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

}  // namespace hb
