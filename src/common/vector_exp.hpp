// Eight-lane double vectors and exp(-x) on them, for the flow's tied kernels
// (internal, not installed).
#pragma once

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <bit>
#include <cstdint>
#include <cstring>

// The 64-byte vector type is passed between inline functions only; without
// AVX-512 (MEASATTN_NATIVE=OFF) the compilers warn that its calling convention
// would differ from an AVX-512 build's, which cannot matter for functions no
// other translation unit calls.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace measattn::detail::vexp {

constexpr int kLanes = 8;  // doubles per vector (one AVX-512 register; split elsewhere)

// GCC/Clang vector extensions: portable code that compiles to one AVX-512
// instruction per operation here and to two or four narrower ones elsewhere.
typedef double Vd __attribute__((vector_size(64)));
typedef std::int64_t Vl __attribute__((vector_size(64)));

inline Vd load(const double* p) {
  Vd v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(double* p, Vd v) { std::memcpy(p, &v, sizeof v); }
inline Vd splat(double x) { return Vd{} + x; }

/// 16 / ln 2: exp(-x) = exp2_sixteenths(-kSixteenthsPerNat x).
constexpr double kSixteenthsPerNat = 23.083120654223414;

inline double horizontal_sum(Vd v) {
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

#ifdef __AVX512F__
namespace impl {
// 2^(k / 16) exp(r) given t = magic + k (k an integer in the low bits of t)
// and |r| <= ln2 / 32: exp(r) - 1 = r + r^2 / 2 + c3 r^3 + ... + c6 r^6, the
// c interpolating at the Chebyshev nodes of that interval (relative error
// 2.8e-17, computed and checked in 50-digit arithmetic: the degree-7 Taylor
// polynomial is as good with one more multiply-add); 2^(j/16), j = k mod 16,
// from a 16-entry table in two registers (one permute); 2^m, m = floor(k /
// 16), added to its exponent bits; the scale applied by one fused multiply-add.
inline Vd table_exp(Vd t, Vd r) {
  // 2^(j/16), correctly rounded (50-digit arithmetic).
  alignas(64) static constexpr double kLow[8] = {
      0x1.0000000000000p+0, 0x1.0b5586cf9890fp+0, 0x1.172b83c7d517bp+0, 0x1.2387a6e756238p+0,
      0x1.306fe0a31b715p+0, 0x1.3dea64c123422p+0, 0x1.4bfdad5362a27p+0, 0x1.5ab07dd485429p+0};
  alignas(64) static constexpr double kHigh[8] = {
      0x1.6a09e667f3bcdp+0, 0x1.7a11473eb0187p+0, 0x1.8ace5422aa0dbp+0, 0x1.9c49182a3f090p+0,
      0x1.ae89f995ad3adp+0, 0x1.c199bdd85529cp+0, 0x1.d5818dcfba487p+0, 0x1.ea4afa2a490dap+0};
  const Vd r2 = r * r;
  const Vd r4 = r2 * r2;
  const Vd q1 = 0.5 + 0.16666666665301144 * r;
  const Vd q2 = 0.041666666664959766 + 0.008333449724528355 * r;
  const Vd q3 = q2 + 0.0013889034377693012 * r2;
  const Vd e = (r + q1 * r2) + q3 * r4;  // exp(r) - 1
  // j = k mod 16 selects the table entry (the permute reads the low 4 bits);
  // m = floor(k / 16) goes into the exponent: the bits of t shifted right by 4
  // then left by 52 are m << 52 (magic's bits are a multiple of 2^16).
  const __m512i bits = (__m512i)t;
  const __m512d scale = _mm512_permutex2var_pd(_mm512_load_pd(kLow), bits, _mm512_load_pd(kHigh));
  const __m512i m = _mm512_slli_epi64(_mm512_srai_epi64(bits, 4), 52);
  const Vd s = (Vd)_mm512_add_epi64((__m512i)scale, m);
  return s * e + s;  // one rounding after the table's: ~1 ulp
}
}  // namespace impl
#else
namespace impl {
// 2^k exp(r) given t = magic + k (k an integer in the low bits of t) and
// |r| <= ln2 / 2: exp(r) - 1 by a degree-11 polynomial interpolating exp at the
// Chebyshev nodes of that interval (relative error 1.7e-17 with these double
// coefficients, computed and checked in 50-digit arithmetic), 2^k built in the
// exponent bits, the scale applied once.
inline Vd poly_exp(Vd t, Vd r) {
  constexpr double magic = 6755399441055744.0;
  constexpr std::int64_t bias = 1023 - std::bit_cast<std::int64_t>(magic);
  // Estrin's scheme: 14 operations instead of Horner's 11, but a dependency
  // chain of 5 instead of 11 (measured 6 % faster on one thread).
  const Vd r2 = r * r;
  const Vd r4 = r2 * r2;
  const Vd r8 = r4 * r4;
  const Vd q1 = 0.5000000000000019 + 0.1666666666666668 * r;
  const Vd q2 = 0.0416666666664881 + 0.008333333333319601 * r;
  const Vd q3 = 0.0013888888952314775 + 0.00019841269890047113 * r;
  const Vd q4 = 2.4801485482328494e-05 + 2.755724091857897e-06 * r;
  const Vd q5 = 2.763263963904103e-07 + 2.5110037605963777e-08 * r;
  const Vd e = ((r + q1 * r2) + (q2 + q3 * r2) * r4) + (q4 + q5 * r2) * r8;  // exp(r) - 1
  const Vd s = (Vd)(((Vl)t + bias) << 52);
  return s * e + s;
}
}  // namespace impl
#endif

/// exp(-x) for x >= 0 (and x slightly negative), lane-wise, to about 1 ulp
/// (tests/flow_test.cpp measures it against long double). exp(r) - 1 is
/// summed first and the scale applied by one fused multiply-add, so that the
/// leading 1 is rounded once. x > 708 gives exp(-708) ~ 3e-308: the callers'
/// sums are >= 1e-280 or recomputed exactly.
///
/// With AVX-512: -x = (16 m + j) ln2 / 16 + r, |r| <= ln2 / 32; exp(r) by a
/// degree-6 polynomial, 2^(j/16) from a 16-entry table held in two registers
/// (one permute), 2^m added to its exponent bits (impl::table_exp). 10
/// multiply-type operations per vector; the polynomial version below needs
/// 16, and these kernels are bound by them (measured 12 % faster for the
/// d = 3 flow step).
///
/// Otherwise: -x = k ln2 + r, |r| <= ln2 / 2, and impl::poly_exp.
inline Vd exp_negative(Vd x) {
  constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52: round to nearest
#ifdef __AVX512F__
  constexpr double c_hi = 0x1.62e42fp-5;           // ln2 / 16, 24 bits: k c_hi exact
  constexpr double c_lo = 1.7436042554835966e-09;  // ln2 / 16 - c_hi
  x = (Vd)_mm512_min_pd((__m512d)x, (__m512d)splat(708.0));
  const Vd t = x * -kSixteenthsPerNat + magic;  // k = round(-16 x / ln 2) in the low bits
  const Vd k = t - magic;
  const Vd r = (-(k * c_hi) - x) - k * c_lo;
  return impl::table_exp(t, r);
#else
  constexpr double log2e = 1.4426950408889634074;
  constexpr double ln2_hi = 6.93145751953125e-1;
  constexpr double ln2_lo = 1.42860682030941723212e-6;
  x = x > 708.0 ? splat(708.0) : x;
  const Vd t = x * -log2e + magic;
  const Vd k = t - magic;
  const Vd r = (-(k * ln2_hi) - x) - k * ln2_lo;
  return impl::poly_exp(t, r);
#endif
}

/// 2^(y / 16) for y <= 0 (and y slightly positive), lane-wise: exp(-x) for a
/// caller that has its exponent in sixteenths of a bit, y = -16 x / ln 2,
/// already (a kernel can scale its inputs once so that the dot products give
/// y directly). Then the range reduction is two additions and one
/// multiplication (r = (y - round(y)) ln2 / 16, the difference exact) instead
/// of three fused multiply-adds, which the tied d <= 8 kernel is bound by.
/// Same table and polynomial as exp_negative: about 1 ulp in y's value; y
/// below -16343 (x > 708) gives ~2^-1021.
inline Vd exp2_sixteenths(Vd y) {
#ifdef __AVX512F__
  constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52: round to nearest
  constexpr double c = 0x1.62e42fefa39efp-5;    // ln 2 / 16
  y = (Vd)_mm512_max_pd((__m512d)y, (__m512d)splat(-16343.0));
  const Vd t = y + magic;
  const Vd f = y - (t - magic);  // exact (Sterbenz)
  const Vd r = f * c;
  return impl::table_exp(t, r);
#else
  // 2^(y/16) = 2^k 2^f with k = round(y / 16) and f = y / 16 - k (both exact), so
  // the only rounding before the polynomial is r = f ln 2, of size <= ln2 / 2:
  // converting y back to nats first would carry an error of |x| ulps.
  constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52: round to nearest
  constexpr double ln2 = 0.69314718055994530942;
  y = y < -16343.0 ? splat(-16343.0) : y;
  const Vd u = y * (1.0 / 16);  // exact
  const Vd t = u + magic;
  const Vd f = u - (t - magic);  // exact (Sterbenz)
  return impl::poly_exp(t, f * ln2);
#endif
}

}  // namespace measattn::detail::vexp

#pragma GCC diagnostic pop
