// Register-tiled building blocks of the streaming attention kernel (used by
// attention.cpp and by the flow's symmetric kernel for tied query/key
// projections): S = Q Kt + bias on 8-row tiles, acc += P V on R-row tiles.
// Plain loops over Eigen packets; every entry is summed in a fixed order, so
// results do not depend on how rows are grouped or on the thread count.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "measattn/types.hpp"

namespace measattn::detail {

template <class Scalar>
struct Simd {
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  static constexpr int L = Eigen::internal::unpacket_traits<Packet>::size;
};

// Query rows are padded to a multiple of this: the logits tile has 8 rows, the
// values tile 8 or 6 (at most 24 accumulators).
constexpr Index kTileRows = 24;
constexpr int kLogitRows = 8;
// The logits tile is kLogitPackets packets wide; key panels are stored as
// contiguous k x (kLogitPackets L) chunks (no cache-set conflicts between rows).
constexpr int kLogitPackets = 3;

inline Index round_up(Index x, Index m) { return (x + m - 1) / m * m; }

/// s[r][j] = bias[j] + sum_c q[r][c] kt[c][j] for R rows and NS packets of columns.
template <class Scalar, int NS, int R = kLogitRows>
inline void logits_tile(const Scalar* q, Index depth, const Scalar* kt, Index kt_stride,
                        const Scalar* bias, Scalar* s, Index s_stride) {
  using namespace Eigen::internal;
  using Packet = typename Simd<Scalar>::Packet;
  constexpr int L = Simd<Scalar>::L;
  Packet acc[R][NS];
  for (int t = 0; t < NS; ++t) {
    const Packet b = ploadu<Packet>(bias + t * L);
    for (int r = 0; r < R; ++r) acc[r][t] = b;
  }
  for (Index c = 0; c < depth; ++c) {
    Packet kv[NS];
    for (int t = 0; t < NS; ++t) kv[t] = ploadu<Packet>(kt + c * kt_stride + t * L);
    for (int r = 0; r < R; ++r) {
      const Packet qb = pset1<Packet>(q[r * depth + c]);
      for (int t = 0; t < NS; ++t) acc[r][t] = pmadd(qb, kv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NS; ++t) pstoreu(s + r * s_stride + t * L, acc[r][t]);
}

/// acc[r][:] += sum_{j < cols} p[r][j] v[j][:] for R rows and KV packets of columns.
/// With Transposed, p[r][j] is read at p[j * p_stride + r] (P stored by columns:
/// the R broadcasts of one j are then adjacent in memory). With Init, acc is
/// not read: the tile starts from zero (same bits as adding to zeros) and
/// stores its sums, so that a caller need not zero its accumulators first.
template <class Scalar, int KV, int R, bool Transposed = false, bool Init = false>
inline void values_tile(const Scalar* p, Index p_stride, Index cols, const Scalar* v,
                        Index v_stride, Scalar* out, Index out_stride) {
  using namespace Eigen::internal;
  using Packet = typename Simd<Scalar>::Packet;
  constexpr int L = Simd<Scalar>::L;
  Packet acc[R][KV];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < KV; ++t)
      acc[r][t] = Init ? pset1<Packet>(Scalar(0)) : ploadu<Packet>(out + r * out_stride + t * L);
  for (Index j = 0; j < cols; ++j) {
    Packet vv[KV];
    for (int t = 0; t < KV; ++t) vv[t] = ploadu<Packet>(v + j * v_stride + t * L);
    for (int r = 0; r < R; ++r) {
      const Packet pb = pset1<Packet>(Transposed ? p[j * p_stride + r] : p[r * p_stride + j]);
      for (int t = 0; t < KV; ++t) acc[r][t] = pmadd(pb, vv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < KV; ++t) pstoreu(out + r * out_stride + t * L, acc[r][t]);
}

/// S (rows x packets*L, rows a multiple of R) = Q_blk Kt_panel + bias; the panel is
/// a sequence of depth x kt_stride chunks, kt_stride = NS L (the last chunk may
/// be narrower when packets is not a multiple of NS; NS <= 4).
template <class Scalar, int NS = kLogitPackets, int R = kLogitRows>
void logits_block(const Scalar* q, Index rows, Index depth, const Scalar* kt, Index kt_stride,
                  Index packets, const Scalar* bias, Scalar* s, Index s_stride) {
  static_assert(NS >= 1 && NS <= 4);
  constexpr int L = Simd<Scalar>::L;
  // Column chunks outermost: the chunk of Kt stays in L1 across the row tiles.
  for (Index p0 = 0; p0 < packets; p0 += NS) {
    const int np = static_cast<int>(std::min<Index>(NS, packets - p0));
    const Scalar* ktc = kt + (p0 / NS) * depth * kt_stride;
    const Scalar* bc = bias + p0 * L;
    for (Index r0 = 0; r0 < rows; r0 += R) {
      const Scalar* qr = q + r0 * depth;
      Scalar* sr = s + r0 * s_stride + p0 * L;
      switch (np) {
        case 4:
          if constexpr (NS >= 4)
            logits_tile<Scalar, 4, R>(qr, depth, ktc, kt_stride, bc, sr, s_stride);
          break;
        case 3:
          if constexpr (NS >= 3)
            logits_tile<Scalar, 3, R>(qr, depth, ktc, kt_stride, bc, sr, s_stride);
          break;
        case 2:
          logits_tile<Scalar, 2, R>(qr, depth, ktc, kt_stride, bc, sr, s_stride);
          break;
        default:
          logits_tile<Scalar, 1, R>(qr, depth, ktc, kt_stride, bc, sr, s_stride);
          break;
      }
    }
  }
}

template <class Scalar, int KV, bool Transposed, bool Init>
void values_chunk(const Scalar* p, Index p_stride, Index rows, Index cols, const Scalar* v,
                  Index v_stride, Scalar* acc, Index acc_stride) {
  constexpr int R = KV <= 3 ? 8 : 6;  // KV <= 4 (values_block)
  for (Index r0 = 0; r0 < rows; r0 += R) {
    values_tile<Scalar, KV, R, Transposed, Init>(p + (Transposed ? r0 : r0 * p_stride), p_stride,
                                                 cols, v, v_stride, acc + r0 * acc_stride,
                                                 acc_stride);
  }
}

/// acc (rows x k_pad) += P (rows x cols) V_blk (cols x k_pad), in chunks of at
/// most 4 packets: 6 rows x 4 packets (24 accumulators) runs 20 % faster than
/// 3 rows x 8 packets in double (55 against 46 GFLOP/s per core, data in cache,
/// measured here), the loads of V and broadcasts of P being better balanced.
/// Every entry is still summed over j in order: the chunking changes no bit.
/// With Transposed, P is given by columns: p[j * p_stride + r] (P^T stored by
/// rows), which spares an explicit transpose when both G and G^T are applied.
/// With Init, acc is overwritten with P V instead of added to.
template <class Scalar, bool Transposed = false, bool Init = false>
void values_block(const Scalar* p, Index p_stride, Index rows, Index cols, const Scalar* v,
                  Index k_pad, Scalar* acc) {
  constexpr int L = Simd<Scalar>::L;
  const Index packets = k_pad / L;
  for (Index c0 = 0; c0 < packets;) {
    const Index np = std::min<Index>(4, packets - c0);
    const Scalar* vc = v + c0 * L;
    Scalar* ac = acc + c0 * L;
    switch (np) {
      case 4:
        values_chunk<Scalar, 4, Transposed, Init>(p, p_stride, rows, cols, vc, k_pad, ac, k_pad);
        break;
      case 3:
        values_chunk<Scalar, 3, Transposed, Init>(p, p_stride, rows, cols, vc, k_pad, ac, k_pad);
        break;
      case 2:
        values_chunk<Scalar, 2, Transposed, Init>(p, p_stride, rows, cols, vc, k_pad, ac, k_pad);
        break;
      default:
        values_chunk<Scalar, 1, Transposed, Init>(p, p_stride, rows, cols, vc, k_pad, ac, k_pad);
        break;
    }
    c0 += np;
  }
}

}  // namespace measattn::detail
