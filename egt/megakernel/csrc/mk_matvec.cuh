// egt MegaKernel opcode: y[b, n] = sum_k W[n, k] * x[b, k] for a block's statically assigned row tiles.
//
// Contract:
// - The row tiles of one op are split over the grid in contiguous, balanced ranges (rotated by ROT so that the
//   blocks that carry one extra tile differ from op to op); every block knows its range at compile time.
// - Weights stream through a ring of ST shared-memory stages (TR rows x TK columns each) filled by cp.async.
//   `prefill` issues the first stages and touches no activation, so the generated schedule calls it for the
//   next op *before* waiting on that op's dependency: the weight stream never stops for a grid-wide sync.
// - The activation x (B x K) is staged in shared memory KS parts at a time ("K-split"): KS>1 cuts the
//   activation footprint by KS at the cost of keeping per-row partial sums in shared memory.
// - Reductions run in a fixed order, so the result does not depend on timing (bit-identical reruns).
// - The weight format is the policy `WF` (an operand kind): how one stage is fetched (`issue` with cp.async, or
//   `issue_bulk` with sm_90 bulk copies when the plan asks for them) and multiplied (`accumulate`), plus any
//   per-part activation data it needs (`extra_floats`, `after_stage`). `DenseW` reads bf16/fp16 rows in place;
//   `Q4W` and `Q4TC` read the INT4 chunk layout of egt/megakernel/operands.py on CUDA cores / tensor cores, `S4W`
//   and `S4TC` its N:4 sparse INT4 chunks (CUDA cores / sparse tensor cores), `Q3W` its INT3 chunks. The schedule,
//   the ring and the epilogues are the same for every kind.
#pragma once
#include "mk_common.cuh"

namespace egt {

// The weight ring: ST stage slots in shared memory (an op's stage size) and, for bulk copies, one mbarrier per slot.
struct Ring {
  uint4* buf;
  uint64_t* bar;   // [MAX_RING] in shared memory: one per slot
  unsigned phase;  // bit i: parity of mbarrier i's next completion (every thread tracks the same value)
};

template <int N_, int K_, int NMAT_, int TR_, int TK_, int ST_, int KS_, int WPR_, int ROT_>
struct MvCfg {
  static constexpr int N = N_, K = K_, NMAT = NMAT_, TR = TR_, TK = TK_, ST = ST_, KS = KS_, WPR = WPR_, ROT = ROT_;
  static constexpr int KP = K / KS;               // columns per K part
  static constexpr int CP = KP / TK;              // stages per tile per part
  static constexpr int NW = NTHR / 32;
  static constexpr int SLOTS = NW / WPR;          // row slots in a block
  static constexpr int RPW = TR / SLOTS;          // rows per warp
  static constexpr int TPR = 32 * WPR;            // threads per row
};

// Accumulator of the CUDA-core policies: each lane holds partial sums of the rows its warp owns; `rows` hands
// them to the tile epilogue (which sums the lanes and the warps of a row).
template <class C> struct LaneAcc {
  static constexpr bool OWNED = false;  // lanes hold partial sums of every row: the epilogue sums the warp
  float v[C::RPW][C::NMAT][NB];
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int j = 0; j < C::RPW; ++j)
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
        for (int b = 0; b < NB; ++b) v[j][m][b] = 0.f;
  }
  __device__ __forceinline__ void rows(float (&acc)[C::RPW][C::NMAT][NB], int) const {
#pragma unroll
    for (int j = 0; j < C::RPW; ++j)
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
        for (int b = 0; b < NB; ++b) acc[j][m][b] = v[j][m][b];
  }
};

// Dense bf16/fp16 rows, read in place. Source: a row map rp(m, n) -> first 16-byte vector of row n of matrix m.
// PAD: 16-byte vectors after each row in the ring (DenseTC's ldmatrix reads need 1 to avoid bank conflicts).
template <typename T, int PAD = 0> struct DenseW {
  template <class C> using Acc = LaneAcc<C>;
  template <class C> __host__ __device__ static constexpr int extra_floats() { return 0; }
  template <class C, class SRC> __device__ static __forceinline__ void after_stage(const uint4*, float*, const SRC&) {}
  template <class C, class SRC> __device__ static __forceinline__ float* xsum_part(float*, const SRC&) { return nullptr; }
  template <class C> __host__ __device__ static constexpr int row_vec() { return C::TK / 8 + PAD; }
  template <class C> __host__ __device__ static constexpr int stage_vec() { return C::NMAT * C::TR * row_vec<C>(); }
  template <class C, class RP>
  __device__ static __forceinline__ void issue(uint4* buf, int tile, int kp, int ch, const RP& rp, int first) {
    constexpr int VPR = C::TK / 8;
    const int col0 = (kp * C::KP + ch * C::TK) / 8;
    const uint64_t pol = evict_first_policy();
MK_COLD_LOOP
    for (int v = threadIdx.x - first; v < C::NMAT * C::TR * VPR; v += NTHR - first) {
      const int m = v / (C::TR * VPR);
      const int rem = v - m * (C::TR * VPR);
      const int r = rem / VPR;
      const int c = rem - r * VPR;
      const int n = tile * C::TR + r;
      if (n < C::N) cp_async16_ef(buf + (PAD == 0 ? v : (m * C::TR + r) * row_vec<C>() + c), rp(m, n) + col0 + c, pol);
    }
  }
  // sm_90: one bulk copy per row run of the stage, issued by the lanes of one warp.
  template <class C, class RP>
  __device__ static __forceinline__ void issue_bulk(uint4* buf, uint64_t* bar, int tile, int kp, int ch, const RP& rp,
                                                    int lane) {
    const int col0 = (kp * C::KP + ch * C::TK) / 8;
    const int rows = min(C::TR, C::N - tile * C::TR);
    if (lane == 0) mbar_expect(bar, (unsigned)(C::NMAT * rows * C::TK * 2));
    __syncwarp();
MK_COLD_LOOP
    for (int i = lane; i < C::NMAT * rows; i += 32) {
      const int m = i / rows, r = i - m * rows;
      bulk_g2s(buf + (m * C::TR + r) * row_vec<C>(), rp(m, tile * C::TR + r) + col0, C::TK * 2, bar);
    }
  }
  // L2 look-ahead: the rows of tiles [t0, t1) of each matrix, one run per matrix when its rows are contiguous in
  // memory (else a run per row), in address order until `budget` bytes.
  template <class C, class RP> __device__ static __forceinline__ void l2_share(int t0, int t1, const RP& rp, long long budget) {
    constexpr long long ROW = C::K * 2;
    const int n0 = t0 * C::TR, n1 = min(t1 * C::TR, C::N);
MK_COLD_LOOP
    for (int m = 0; m < C::NMAT && budget > 0 && n1 > n0; ++m) {
      if (rp(m, n1 - 1) == rp(m, n0) + (long long)(n1 - 1 - n0) * (C::K / 8)) {
        const long long b = min(budget, (n1 - n0) * ROW);
        l2_prefetch(rp(m, n0), b);
        budget -= b;
      } else {
MK_COLD_LOOP
        for (int n = n0; n < n1 && budget > 0; ++n, budget -= ROW) l2_prefetch(rp(m, n), min(budget, ROW));
      }
    }
  }
  template <class C, class RP>
  __device__ static __forceinline__ void accumulate(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, const RP&, LaneAcc<C>& st) {
    auto& acc = st.v;
    constexpr int VPR = C::TK / 8, VPT = (VPR + C::TPR - 1) / C::TPR;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
      const int c = wi * 32 + lane + v * C::TPR;
      if (VPT * C::TPR == VPR || c < VPR) {
        float xf[NB][8];
#pragma unroll
        for (int b = 0; b < NB; ++b) unpack8<T>(xs[b * XR<C::KP> + ch * VPR + c], xf[b]);
#pragma unroll
        for (int j = 0; j < C::RPW; ++j) {
          const int r = slot * C::RPW + j;
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m) {
            float wf[8];
            unpack8<T>(buf[(m * C::TR + r) * VPR + c], wf);
#pragma unroll
            for (int b = 0; b < NB; ++b) {
              float a = acc[j][m][b];
#pragma unroll
              for (int e = 0; e < 8; ++e) a = fmaf(wf[e], xf[b][e], a);
              acc[j][m][b] = a;
            }
          }
        }
      }
    }
  }
};

// Chunked weight kinds (operands.py): stage (tile, kp, ch) is one contiguous run of 16-byte vectors at a fixed
// stride from the op's chunk 0; a stage copies only the vectors its layer's format uses. Policy W (CRTP) gives the
// stride (`stage_vec`) and that count (`chunk_vecs(src)`); this gives it `issue` (cp.async) and `issue_bulk`.
template <class W> struct ChunkCopy {
  // Where the stager writes the part's sums of x per 32 columns (xsum_block), or null: only the tensor-core INT4
  // kinds' late scaling needs them.
  template <class C, class SRC> __device__ static __forceinline__ float* xsum_part(float*, const SRC&) { return nullptr; }
  template <class C, class SRC>
  __device__ static __forceinline__ const uint4* chunk(const SRC& src, int tile, int kp, int ch) {
    return src.base + ((long long)(tile * C::KS + kp) * C::CP + ch) * W::template stage_vec<C>();
  }
  template <class C, class SRC>
  __device__ static __forceinline__ void issue(uint4* buf, int tile, int kp, int ch, const SRC& src, int first) {
    const uint4* from = chunk<C>(src, tile, kp, ch);
    const int n = W::template chunk_vecs<C>(src);
    const uint64_t pol = evict_first_policy();
MK_COLD_LOOP
    for (int v = threadIdx.x - first; v < n; v += NTHR - first) cp_async16_ef(buf + v, from + v, pol);
  }
  // L2 look-ahead: a block's tiles [t0, t1) are one contiguous run of chunks; its first `budget` bytes.
  template <class C, class SRC>
  __device__ static __forceinline__ void l2_share(int t0, int t1, const SRC& src, long long budget) {
    l2_prefetch(chunk<C>(src, t0, 0, 0), min(budget, 16ll * (t1 - t0) * C::KS * C::CP * W::template stage_vec<C>()));
  }
  // sm_90: the stage's chunk is one contiguous run: one bulk copy.
  template <class C, class SRC>
  __device__ static __forceinline__ void issue_bulk(uint4* buf, uint64_t* bar, int tile, int kp, int ch, const SRC& src,
                                                    int lane) {
    if (lane == 0) {
      const unsigned bytes = 16u * W::template chunk_vecs<C>(src);
      mbar_expect(bar, bytes);
      bulk_g2s(buf, chunk<C>(src, tile, kp, ch), bytes, bar);
    }
  }
};

// Code -> float without an int->float conversion: put the code byte in the mantissa of 2^23 (one byte permute),
// subtract 2^23 (exact). `lo` and `hi` hold four isolated codes a byte: q[2i] from byte i of lo, q[2i+1] of hi.
__device__ __forceinline__ void bytes8(uint32_t lo, uint32_t hi, float (&q)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    q[2 * i] = __uint_as_float(__byte_perm(lo, 0x4B000000u, 0x7440 + i)) - 8388608.f;
    q[2 * i + 1] = __uint_as_float(__byte_perm(hi, 0x4B000000u, 0x7440 + i)) - 8388608.f;
  }
}

// The codes of one 32-column vector of a dense quantized row, decoded eight columns at a time (`decode(i, q)`:
// columns 8i .. 8i+7, in order). Nib4: egt.quant's INT4 word, code k at bits 4(k%8) of word k/8 (one uint4).
struct Nib4 {
  uint4 w;
  __device__ __forceinline__ void load(const uint4* codes, int vec) { w = codes[vec]; }
  __device__ __forceinline__ void decode(int i, float (&q)[8]) const {
    const uint32_t x = i == 0 ? w.x : (i == 1 ? w.y : (i == 2 ? w.z : w.w));
    bytes8(x & 0x0F0F0F0Fu, (x >> 4) & 0x0F0F0F0Fu, q);
  }
};
// Bits3: operands.py's INT3 vector, three words a, b, c. Byte j of word i < 3 holds columns 8i+2j (bits 0-2) and
// 8i+2j+1 (bits 3-5); columns 24+2j and 24+2j+1 take their low two bits from bits 6-7 of byte j of a and b and
// their high bit from bits 6 and 7 of byte j of c. So every eight columns cost 2-4 logic ops, about as INT4's.
struct Bits3 {
  uint32_t a, b, c;
  __device__ __forceinline__ void load(const uint4* codes, int vec) {
    const uint32_t* p = reinterpret_cast<const uint32_t*>(codes) + 3 * vec;  // stride 3 words: no bank conflict
    a = p[0], b = p[1], c = p[2];
  }
  __device__ __forceinline__ void decode(int i, float (&q)[8]) const {
    if (i == 3) {
      bytes8(((a >> 6) & 0x03030303u) | ((c >> 4) & 0x04040404u), ((b >> 6) & 0x03030303u) | ((c >> 5) & 0x04040404u), q);
    } else {
      const uint32_t x = i == 0 ? a : (i == 1 ? b : c);
      bytes8(x & 0x07070707u, (x >> 3) & 0x07070707u, q);
    }
  }
};

// y += W x for dense quantized codes (format F) with (scale, offset) pairs per 2^lg columns, on CUDA cores:
// sum_k (s q_k + o) x_k = s * sum_k q_k x_k + o * sum_k x_k, one scale FMA per vector, not per weight.
// codes [NMAT][TR][TK/32] vectors in F's layout; pairs [NMAT][TR][TK >> lg] half2.
template <class F, typename T, class C>
__device__ __forceinline__ void dense_codes(const uint4* codes, const __half2* pairs, const uint4* xs, int ch, int slot,
                                            int wi, int lane, int lg, LaneAcc<C>& st) {
  auto& acc = st.v;
  constexpr int VPR = C::TK / 32, VPT = (VPR + C::TPR - 1) / C::TPR;
  const int sps = C::TK >> lg;
MK_VEC_LOOP
  for (int v = 0; v < VPT; ++v) {
    const int c = wi * 32 + lane + v * C::TPR;
    if (VPT * C::TPR == VPR || c < VPR) {
      const int gi = (c * 32) >> lg;
      F w[C::RPW][C::NMAT];
#pragma unroll
      for (int j = 0; j < C::RPW; ++j)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) w[j][m].load(codes, (m * C::TR + slot * C::RPW + j) * VPR + c);
      float dot[C::RPW][C::NMAT][NB], xsum[NB];
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        xsum[b] = 0.f;
#pragma unroll
        for (int j = 0; j < C::RPW; ++j)
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m) dot[j][m][b] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float xf[NB][8];
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          unpack8<T>(xs[b * XR<C::KP> + ch * (C::TK / 8) + c * 4 + i], xf[b]);
#pragma unroll
          for (int e = 0; e < 8; ++e) xsum[b] += xf[b][e];
        }
#pragma unroll
        for (int j = 0; j < C::RPW; ++j)
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m) {
            float q[8];
            w[j][m].decode(i, q);
#pragma unroll
            for (int b = 0; b < NB; ++b)
#pragma unroll
              for (int e = 0; e < 8; ++e) dot[j][m][b] = fmaf(q[e], xf[b][e], dot[j][m][b]);
          }
      }
#pragma unroll
      for (int j = 0; j < C::RPW; ++j)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          const float2 so = __half22float2(pairs[(m * C::TR + slot * C::RPW + j) * sps + gi]);
#pragma unroll
          for (int b = 0; b < NB; ++b) acc[j][m][b] = fmaf(so.x, dot[j][m][b], fmaf(so.y, xsum[b], acc[j][m][b]));
        }
    }
  }
}

// INT4 weights in the MegaKernel chunk layout (egt/megakernel/operands.py). Chunk (tile, kp, ch) is contiguous:
//   codes  [NMAT][TR][TK/32] x uint4   (32 codes per vector, egt.quant's nibble order: code k at bits 4(k%8) of
//                                       word k/8)
//   pairs  [NMAT][TR][TK >> lg] x half2 (scale, offset): w = scale * code + offset over 2^lg columns
// lg (log2 of the scale granularity, >= 5) is a per-layer run-time value, so adaptive group sizes share one binary;
// chunks have a fixed stride sized for lg = 5 and a stage copies only the pairs it uses.
struct Q4Src {
  const uint4* base;  // chunk 0 of this layer's op
  int lg;
};
template <typename T> struct Q4W : ChunkCopy<Q4W<T>> {
  template <class C> using Acc = LaneAcc<C>;
  template <class C> __host__ __device__ static constexpr int extra_floats() { return 0; }
  template <class C, class SRC> __device__ static __forceinline__ void after_stage(const uint4*, float*, const SRC&) {}
  template <class C> __host__ __device__ static constexpr int code_vec() { return C::NMAT * C::TR * (C::TK / 32); }
  template <class C> __host__ __device__ static constexpr int stage_vec() { return code_vec<C>() + (C::NMAT * C::TR * (C::TK / 32) * 4 + 15) / 16; }
  template <class C> __device__ static __forceinline__ int pair_vecs(int lg) { return (C::NMAT * C::TR * (C::TK >> lg) * 4 + 15) / 16; }
  template <class C, class SRC> __device__ static __forceinline__ int chunk_vecs(const SRC& src) { return code_vec<C>() + pair_vecs<C>(src.lg); }
  __device__ static __forceinline__ void codes8(uint32_t w, float (&q)[8]) { bytes8(w & 0x0F0F0F0Fu, (w >> 4) & 0x0F0F0F0Fu, q); }
  template <class C, class SRC>
  __device__ static __forceinline__ void accumulate(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, const SRC& src, LaneAcc<C>& st) {
    dense_codes<Nib4, T, C>(buf, reinterpret_cast<const __half2*>(buf + code_vec<C>()), xs, ch, slot, wi, lane, src.lg, st);
  }
};

// A warp's quads q = wi, wi + WPR, ... < QUADS of a stage (the tensor-core INT4 loops). Where their count is fixed
// (QUADS a multiple of WPR) and at most 3, up to batch 4, they are unrolled completely, so that all of them are in
// flight at once (qwen2.5-1.5b's qkv, o and gate/up: 24 quads on 8 warps); else UNROLL at a time. Unrolled 2x, the
// third quad ran alone: all three made the step 1.02x faster at batch 1 on qwen2.5-1.5b w4a16 (dense loop) and
// w4a16-mix (sparse loop), 1.01-1.02x at 2 and 4 (H200, bench/results/megakernel/session23).
template <int QUADS, int WPR, int UNROLL, class F> __device__ __forceinline__ void warp_quads(int wi, F&& quad) {
  if constexpr (QUADS % WPR == 0 && QUADS / WPR <= 3 && NB <= 4) {
#pragma unroll
    for (int k = 0; k < QUADS / WPR; ++k) quad(wi + k * WPR);
  } else {
#pragma unroll(UNROLL)
    for (int q = wi; q < QUADS; q += WPR) quad(q);
  }
}

// INT4 on tensor cores (bf16 activations): each warp owns 16 rows (RPW == 16; 8 and 4: `parts` below) and its share
// of the stage's 64-column quads; mma.m16n8k16 multiplies the raw codes by the activations with float32
// accumulation. Batch <= 16 at 16 rows a warp (the B fragment's 8 columns are batch rows: groups of 8), <= 8 / P at
// RPW = 16 / P.
// Chunk codes (operands.py, layout "tc"): [NMAT][TR/16][TK/64 quads][32 lanes] x uint4; word i of a lane holds the
// 8 codes of its A-fragment registers for k-step 4q+i, nibble p = low and p+4 = high half of register p, so one
// shift and one LOP3 (mask | OR of 0x4300, bf16 128) yield bf16x2 (128+lo, 128+hi), exact. At 16 rows a warp the
// chunks take a quad's columns in the order of operands.py `_quad_columns`, so that lane t's B fragments of two
// k-steps are 8 consecutive columns of x: one 16-byte load where the natural order needs four 4-byte ones.
// Late scaling: the MMA accumulates T = sum (128 + q) x over a quad (over each half where a scale block is 32
// columns) into temporary fragments, and T is folded in float32 as s*T + (o - 128 s) * sum x (w = s q + o). That is one LOP3 (+ shift) per
// two weights instead of a dequantization to bf16 per weight; sum x per 32 columns is computed once per staged
// activation part (`xsum_part`). The 128 x sum cancels in float32 (products exact, ~10 of 24 bits lost).
// Latency, not issue, bounds this loop (two warps a scheduler at 256 threads): every shared-memory load of a quad
// is issued at its top, and its k-steps accumulate in two independent MMA chains. With the weights already in
// shared memory (bench/megakernel_ceiling.py, H100) that is 1.30-1.35x the rate of one chain with loads at each
// k-step for one-matrix ops (qkv, o, down), 1.52x with 32-column scale blocks, 1.04x for gate/up; one-matrix ops
// ran compute-bound below the per-SM share of copy bandwidth before.
// Pairs region as in Q4W.
template <typename T> struct Q4TC : ChunkCopy<Q4TC<T>> {
  static constexpr float BASE = 128.f;
  // Quads a warp keeps in flight (loop unrolling) up to batch 4: the loop is latency-bound there (two warps a
  // scheduler); two quads in flight made qwen2.5-1.5b w4a16's step 1.035x faster at batch 1, 1.02-1.03x at 2 and
  // 1.01x at 4 (H200, session 21); at batch 8 and 16 it was 0.3-0.8% slower.
  static constexpr int QUAD_UNROLL = NB <= 4 ? 2 : 1;
  // Column parts of one A fragment: 16 rows a warp (P = 1), or RPW = 8 / 4 rows whose fragment rows p*RPW + r hold
  // row r's columns 16p .. 16p+15 of a k-step of 16 P columns (operands.py `_tc_words`); the B fragment's column
  // n = P b + p holds those columns of x[b], so C[p*RPW + r][P b + p] is part p of row r. Same MMAs per weight;
  // narrower row tiles let an op of few rows cover more SMs (qwen2.5-0.5b's down: 56 tiles of 16 rows on 132 SMs;
  // in 8-row tiles the step is 6% faster on an H100, bench/results/megakernel/ab_h100.md run 54).
  template <class C> __host__ __device__ static constexpr int parts() { return 16 / C::RPW; }
  template <class C> struct Acc {
    static constexpr int P = parts<C>();
    // P = 1: the B fragment's 8 columns are 8 batch rows, so batches above 8 take NG column groups (one MMA each per
    // k-step, on the same A registers). P = 2, 4: column P b + p, so P * NB <= 8 and one group.
    static constexpr int NG = P == 1 ? (NB + 7) / 8 : 1;
    static_assert(P == 1 ? NB <= 16 : P * NB <= 8, "tensor-core INT4: batch <= 16 (16 rows a warp), 8 / P else");
    // P = 1: each (row, batch) sum lives whole in one lane of the C fragment, so the epilogue needs no warp
    // reduction. P = 2: lane (g, t) holds row g, batch t (parts 0 and 1 in c0 and c3). P = 4: lane (g, t) holds part
    // (t & 1) * 2 + (g >> 2) of row g & 3, batch t >> 1; `each` adds the four lanes of a row into lane 4 r + 2 b.
    static constexpr bool OWNED = true;
    float c[NG * C::NMAT][P == 1 ? 4 : 1];  // folded (scaled) sums, [group][matrix]
    __device__ __forceinline__ void clear() {
#pragma unroll
      for (int m = 0; m < NG * C::NMAT; ++m)
#pragma unroll
        for (int i = 0; i < (P == 1 ? 4 : 1); ++i) c[m][i] = 0.f;
    }
    // f(j, b, v) for every (row j of the warp, batch b) whose whole sum this lane holds, v[m] per matrix. P = 1: c0,
    // c1 = (row g, batch 8 group + 2t, +1), c2, c3 = (row g+8, ...). Every lane calls it (P = 4 shuffles).
    template <class F> __device__ __forceinline__ void each(int lane, F&& f) const {
      const int g = lane >> 2, t = lane & 3;
      float v[C::NMAT];
      if constexpr (P == 1) {
#pragma unroll
        for (int h = 0; h < NG; ++h)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int b = 8 * h + 2 * t + (i & 1);
            if (b < NB) {
#pragma unroll
              for (int m = 0; m < C::NMAT; ++m) v[m] = c[h * C::NMAT + m][i];
              f(g + 8 * (i >> 1), b, v);
            }
          }
      } else {
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          v[m] = c[m][0];
          if constexpr (P == 4) {
            v[m] += __shfl_xor_sync(0xffffffffu, v[m], 16);  // parts of g and g ^ 4
            v[m] += __shfl_xor_sync(0xffffffffu, v[m], 1);   // parts of t and t ^ 1
          }
        }
        if (P == 2 ? t < NB : (g < 4 && (t & 1) == 0 && (t >> 1) < NB)) f(g, P == 2 ? t : t >> 1, v);
      }
    }
  };
  template <class C> __host__ __device__ static constexpr int code_vec() { return Q4W<T>::template code_vec<C>(); }
  template <class C> __host__ __device__ static constexpr int stage_vec() { return Q4W<T>::template stage_vec<C>(); }
  // float sums of x per 32 columns of the staged part, [NB][KP/32], after the activations in the op's page
  template <class C> __host__ __device__ static constexpr int extra_floats() { return NB * C::KP / 32; }
  template <class C, class SRC> __device__ static __forceinline__ int chunk_vecs(const SRC& src) { return Q4W<T>::template chunk_vecs<C>(src); }
  // At batch 1 the stager writes them (xsum_block) as it stages x, which took a pass and a barrier off every INT4
  // op's critical path (1.025x on qwen2.5-1.5b w4a16, H200, bench/results/megakernel/session23). Above batch 1 a
  // pass of their own, a thread a 32-column block: there the stagers' loads come in several trips, and summing
  // between them delayed the next trip (0.945x at batch 16).
  template <class C, class SRC> __device__ static __forceinline__ float* xsum_part(float* extra, const SRC&) {
    return NB == 1 ? extra : nullptr;
  }
  template <class C, class SRC> __device__ static __forceinline__ void after_stage(const uint4* xs, float* xsum, const SRC&) {
    if constexpr (NB > 1) {
      constexpr int NBLK32 = C::KP / 32;
MK_COLD_LOOP
      for (int i = threadIdx.x; i < NB * NBLK32; i += NTHR) {
        const int b = i / NBLK32, c = i - b * NBLK32;
        float sum = 0.f;
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          float f[8];
          unpack8<T>(xs[b * XR<C::KP> + c * 4 + v], f);
#pragma unroll
          for (int e = 0; e < 8; ++e) sum += f[e];
        }
        xsum[i] = sum;
      }
      __syncthreads();
    }
  }
  __device__ static __forceinline__ uint32_t raw(uint32_t word, int p) {
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(word >> (4 * p)), "n"(0x000F000F), "n"(0x43004300));
    return r;
  }
  // d += A B for one k-step: A = raw bf16 codes (128 + q) in the four fragment registers, B = (b0, b1)
  __device__ static __forceinline__ void mma_raw(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // the same with A = the 8 codes of `word`
  __device__ static __forceinline__ void mma_codes(float (&d)[4], uint32_t word, uint32_t b0, uint32_t b1) {
    const uint32_t a[4] = {raw(word, 0), raw(word, 1), raw(word, 2), raw(word, 3)};
    mma_raw(d, a, b0, b1);
  }
  // c[h] += s*T + (o - 128 s) * X for the C-fragment rows g and g+8 of every matrix, (s, o) from so[m][r]
  template <class C>
  __device__ static __forceinline__ void fold(Acc<C>& st, int h, const float (&tf)[C::NMAT][4], const float (&xr)[2],
                                              const __half2 (&so2)[C::NMAT][2]) {
#pragma unroll
    for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float2 so = __half22float2(so2[m][r]);
        const float off = fmaf(-BASE, so.x, so.y);
        float* c = st.c[h * C::NMAT + m];
#pragma unroll
        for (int e = 0; e < 2; ++e) c[2 * r + e] = fmaf(so.x, tf[m][2 * r + e], fmaf(off, xr[e], c[2 * r + e]));
      }
  }
  // The quads of one stage. SPLIT (32-column scale blocks): the two MMA chains are the two halves, each folded
  // with its own (s, o). Otherwise they are the even and odd k-steps, added and folded once a quad. Two loops, not
  // one with a run-time test: the test and the second half's operands cost the common case 10-20% (H100).
  // Batch rows 8h .. 8h+7 are column group h: its own B fragments, chains and fold, the same A registers.
  template <class C, bool SPLIT>
  __device__ static __forceinline__ void quads(const uint4* buf, const uint4* xs, int ch, int slot, int wi, int lane,
                                               int lg, Acc<C>& st) {
    constexpr int QUADS = C::TK / 64;
    constexpr int NH = SPLIT ? 2 : 1;  // scale blocks a quad
    constexpr int NG = Acc<C>::NG;
    const int g = lane >> 2, t = lane & 3;
    const int sps = C::TK >> lg;
    const __half2* pairs = reinterpret_cast<const __half2*>(buf + code_vec<C>());
    const float* xsum = reinterpret_cast<const float*>(xs + NB * XR<C::KP>);
    // A B-fragment column (batch row) past NB only feeds C columns that no one reads, so those lanes load the last
    // batch row instead of branching: no predicates, no zeroing, and at batch 1 one broadcast address a group.
    const uint4* xq[NG];  // lane's x vector of quad 0 in column group h: batch row 8h + g
#pragma unroll
    for (int h = 0; h < NG; ++h) xq[h] = xs + min(8 * h + g, NB - 1) * XR<C::KP> + ch * (C::TK / 8) + t;
    const uint4* wq = buf + slot * QUADS * 32 + lane;  // lane's code vector of quad 0, matrix 0
    warp_quads<QUADS, C::WPR, QUAD_UNROLL>(wi, [&](int q) {
      // every shared-memory operand of the quad first: codes, B fragments of its 4 k-steps, scale pairs, sums of x
      uint4 wv[C::NMAT];
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m) wv[m] = wq[(m * (C::TR / 16) * QUADS + q) * 32];
      // B fragments (b0, b1) of k-steps 2hh and 2hh+1: x[b][32 hh + 8t .. +7] of the quad in the chunks' column
      // order (operands.py `_quad_columns`), one 16-byte load a half
      uint32_t xb[NG][8];
#pragma unroll
      for (int h = 0; h < NG; ++h)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const uint4 v = xq[h][q * 8 + hh * 4];
          xb[h][4 * hh] = v.x;
          xb[h][4 * hh + 1] = v.y;
          xb[h][4 * hh + 2] = v.z;
          xb[h][4 * hh + 3] = v.w;
        }
      __half2 so[NH][C::NMAT][2];  // [scale block][matrix][row g, g+8]
#pragma unroll
      for (int h = 0; h < NH; ++h)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
          for (int r = 0; r < 2; ++r)
            so[h][m][r] = pairs[(m * C::TR + slot * 16 + g + 8 * r) * sps + ((q * 64 + h * 32) >> lg)];
      const int c32 = (ch * C::TK + q * 64) >> 5;  // first 32-column block of the quad within the K part
      float xr[NG][2][2];  // [group][half][batch 8 group + 2t + e]
#pragma unroll
      for (int n = 0; n < NG; ++n)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            xr[n][h][e] = xsum[min(8 * n + 2 * t + e, NB - 1) * (C::KP / 32) + c32 + h];
          }
      float ta[NG][C::NMAT][4], tb[NG][C::NMAT][4];
#pragma unroll
      for (int n = 0; n < NG; ++n)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
          for (int i = 0; i < 4; ++i) ta[n][m][i] = tb[n][m][i] = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = SPLIT ? (j >> 1) | ((j & 1) << 1) : j;  // issue order alternates the chains: 0 2 1 3 or 0 1 2 3
        const bool second = SPLIT ? (i >= 2) : (i & 1);
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          const uint32_t word = i == 0 ? wv[m].x : (i == 1 ? wv[m].y : (i == 2 ? wv[m].z : wv[m].w));
          const uint32_t a[4] = {raw(word, 0), raw(word, 1), raw(word, 2), raw(word, 3)};
#pragma unroll
          for (int n = 0; n < NG; ++n) mma_raw(second ? tb[n][m] : ta[n][m], a, xb[n][2 * i], xb[n][2 * i + 1]);
        }
      }
#pragma unroll
      for (int n = 0; n < NG; ++n) {
        if constexpr (SPLIT) {
          fold<C>(st, n, ta[n], xr[n][0], so[0]);
          fold<C>(st, n, tb[n], xr[n][1], so[1]);
        } else {
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
            for (int i = 0; i < 4; ++i) ta[n][m][i] += tb[n][m][i];
          const float xq[2] = {xr[n][0][0] + xr[n][1][0], xr[n][0][1] + xr[n][1][1]};
          fold<C>(st, n, ta[n], xq, so[0]);
        }
      }
    });
  }
  // The quads of one stage with P = 4 column parts (4 rows a warp), in the chunks' column order (operands.py
  // `_quad_columns`): part p of k-steps 2hh and 2hh+1 is the 32-column block 4hh + p of the 256-column quad, so lane
  // t's B fragments of both are 8 consecutive columns (one 16-byte load), and each half of the quad is one MMA chain
  // inside one 32-column block, folded with that block's (scale, offset) and sum of x whatever the granularity.
  // The lane's C element is part ep of row er, batch eb (`part_of`); `each` adds a row's four parts.
  template <class C>
  __device__ static __forceinline__ void frag_quads(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, int lg, Acc<C>& st) {
    constexpr int P = 4, QW = 256, QUADS = C::TK / QW;
    const int g = lane >> 2, t = lane & 3;
    const int er = g & 3, eb = t >> 1, ep = (t & 1) * 2 + (g >> 2);
    const int sps = C::TK >> lg;
    const __half2* pairs = reinterpret_cast<const __half2*>(buf + code_vec<C>()) + (slot * C::RPW + er) * sps;
    // batch rows past NB (B columns and sums no one reads, as in `quads`) take the last row
    const float* xsq = reinterpret_cast<const float*>(xs + NB * XR<C::KP>) + min(eb, NB - 1) * (C::KP / 32) +
                       ch * (C::TK / 32) + ep;                    // sum of x over the lane's block of quad 0, half 0
    const uint4* xq = xs + min(g / P, NB - 1) * XR<C::KP> + ch * (C::TK / 8) + (g % P) * 4 + t;  // B column g
    const uint4* wq = buf + slot * QUADS * 32 + lane;
#pragma unroll(QUAD_UNROLL)
    for (int q = wi; q < QUADS; q += C::WPR) {
      uint4 wv[C::NMAT];
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m) wv[m] = wq[(m * (C::TR / C::RPW) * QUADS + q) * 32];
      uint32_t xb[8];  // (b0, b1) of k-step i at 2i, 2i + 1
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const uint4 v = xq[q * 32 + hh * 16];
        xb[4 * hh] = v.x;
        xb[4 * hh + 1] = v.y;
        xb[4 * hh + 2] = v.z;
        xb[4 * hh + 3] = v.w;
      }
      __half2 so[2][C::NMAT];
      float xr[2];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) so[hh][m] = pairs[m * C::TR * sps + ((q * QW + 32 * (P * hh + ep)) >> lg)];
        xr[hh] = xsq[q * 8 + hh * 4];
      }
      float tc[2][C::NMAT][4];
#pragma unroll
      for (int c = 0; c < 2; ++c)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
          for (int e = 0; e < 4; ++e) tc[c][m][e] = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = (j >> 1) | ((j & 1) << 1);  // issue order 0 2 1 3 alternates the chains (halves)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          const uint32_t word = i == 0 ? wv[m].x : (i == 1 ? wv[m].y : (i == 2 ? wv[m].z : wv[m].w));
          mma_codes(tc[i >> 1][m], word, xb[2 * i], xb[2 * i + 1]);
        }
      }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          const float2 so2 = __half22float2(so[hh][m]);
          st.c[m][0] = fmaf(so2.x, part_of<P>(tc[hh][m], ep), fmaf(fmaf(-BASE, so2.x, so2.y), xr[hh], st.c[m][0]));
        }
    }
  }
  // The quads of one stage with P = 2 column parts (8 rows a warp), natural column order. A quad is 4 k-steps of
  // 32 columns; the lane's C element (row g, batch t) adds both parts of a k-step, one 32-column block. NSB
  // scale blocks a quad (128 >> lg, at most 4): one MMA chain each (two alternating chains for one block), folded
  // per block with the (o - 128 s) * sum x term of the block.
  template <class C, int NSB>
  __device__ static __forceinline__ void part_quads(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, int lg, Acc<C>& st) {
    constexpr int P = parts<C>(), KW = 16 * P, QW = 4 * KW, QUADS = C::TK / QW;
    static_assert(P == 2, "4 rows a warp: frag_quads");
    constexpr int SPB = 4 / NSB;               // k-steps a scale block
    constexpr int NCH = NSB == 1 ? 2 : NSB;    // MMA chains a matrix
    const int g = lane >> 2, t = lane & 3;
    const int sps = C::TK >> lg;
    const __half2* pairs = reinterpret_cast<const __half2*>(buf + code_vec<C>());
    const uint32_t* xw = reinterpret_cast<const uint32_t*>(xs);  // bf16 pairs of x[b][k]
    const float* xsum = reinterpret_cast<const float*>(xs + NB * XR<C::KP>);
    const int xb_b = g / P, xb_p = g % P;  // B column g: part xb_p of batch xb_b
    const bool xon = t < NB;
    const int prow = slot * C::RPW + g;
#pragma unroll 1
    for (int q = wi; q < QUADS; q += C::WPR) {
      uint4 wv[C::NMAT];
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m) wv[m] = buf[((m * (C::TR / C::RPW) + slot) * QUADS + q) * 32 + lane];
      const int k0 = ch * C::TK + q * QW;  // first column of the quad within the K part
      uint32_t xb[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int k = k0 + i * KW + 16 * xb_p;
        xb[2 * i] = xb_b < NB ? xw[(xb_b * 8 * XR<C::KP> + k) / 2 + t] : 0u;
        xb[2 * i + 1] = xb_b < NB ? xw[(xb_b * 8 * XR<C::KP> + k) / 2 + t + 4] : 0u;
      }
      __half2 so[NSB][C::NMAT];
      float xr[NSB];
#pragma unroll
      for (int h = 0; h < NSB; ++h) {
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) so[h][m] = pairs[(m * C::TR + prow) * sps + ((q * QW + h * SPB * KW) >> lg)];
        xr[h] = 0.f;
#pragma unroll
        for (int i = h * SPB; i < (h + 1) * SPB; ++i)
          xr[h] += xon ? xsum[t * (C::KP / 32) + ((k0 + i * KW) >> 5)] : 0.f;
      }
      float tc[NCH][C::NMAT][4];
#pragma unroll
      for (int c = 0; c < NCH; ++c)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
          for (int e = 0; e < 4; ++e) tc[c][m][e] = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = NSB == 2 ? (j >> 1) | ((j & 1) << 1) : j;  // issue order alternates the chains
        const int c = NSB == 1 ? (i & 1) : i / SPB;
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          const uint32_t word = i == 0 ? wv[m].x : (i == 1 ? wv[m].y : (i == 2 ? wv[m].z : wv[m].w));
          mma_codes(tc[c][m], word, xb[2 * i], xb[2 * i + 1]);
        }
      }
#pragma unroll
      for (int h = 0; h < NSB; ++h)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          float tsum;
          if constexpr (NSB == 1) tsum = part_of<P>(tc[0][m], 0) + part_of<P>(tc[1][m], 0);
          else tsum = part_of<P>(tc[h][m], 0);
          const float2 so2 = __half22float2(so[h][m]);
          st.c[m][0] = fmaf(so2.x, tsum, fmaf(fmaf(-BASE, so2.x, so2.y), xr[h], st.c[m][0]));
        }
    }
  }
  // The lane's element of a C fragment (P = 2: parts 0 and 1 of row g, batch t; P = 4: part ep), without indexing
  // registers at run time.
  template <int P> __device__ static __forceinline__ float part_of(const float (&d)[4], int ep) {
    if constexpr (P == 2) return d[0] + d[3];
    else return ep == 0 ? d[0] : (ep == 1 ? d[1] : (ep == 2 ? d[2] : d[3]));
  }
  template <class C, class SRC>
  __device__ static __forceinline__ void accumulate(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, const SRC& src, Acc<C>& st) {
    constexpr int P = parts<C>();
    static_assert((C::RPW == 16 || C::RPW == 8 || C::RPW == 4) && C::TK % (64 * P) == 0,
                  "tensor-core INT4: 16, 8 or 4 rows a warp, quads of 64 x 16/RPW columns");
    if constexpr (P == 1) {
      if (src.lg == 5) quads<C, true>(buf, xs, ch, slot, wi, lane, src.lg, st);
      else quads<C, false>(buf, xs, ch, slot, wi, lane, src.lg, st);
    } else {
      const int nsb = (64 * P) >> src.lg;
      if constexpr (P == 4) frag_quads<C>(buf, xs, ch, slot, wi, lane, src.lg, st);
      else if (nsb >= 4) part_quads<C, 4>(buf, xs, ch, slot, wi, lane, src.lg, st);
      else if (nsb == 2) part_quads<C, 2>(buf, xs, ch, slot, wi, lane, src.lg, st);
      else part_quads<C, 1>(buf, xs, ch, slot, wi, lane, src.lg, st);
    }
  }
};

// Dense bf16/fp16 rows on tensor cores (kinds dense-bf16-tc / dense-fp16-tc, batch <= 16; by default from batch 4,
// search.dense_path): each warp owns 16 rows and every WPR-th 16-column k-step of the stage; one m16n8k16 per k-step
// and group of 8 batch rows (the B fragment's columns), float32 accumulation in the C fragments (Q4TC's Acc). On
// CUDA cores a weight costs one FMA per batch row, which binds from batch ~4 on (qwen2.5-1.5b bf16 at batch 16 took
// 4.2x batch 1's time, H100). Stage: DenseW's rows with one 16-byte pad after each, so that ldmatrix's eight row
// addresses of a 16-byte column fall in distinct banks (row stride TK*2 + 16 bytes); the copies (cp.async or bulk)
// land each row at its padded start (DenseW with PAD = 1, so copies and the L2 look-ahead are DenseW's).
template <typename T> struct DenseTC : DenseW<T, 1> {
  template <class C> using Acc = typename Q4TC<T>::template Acc<C>;
  __device__ static __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same<T, __half>::value) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
  }
  // Two MMA chains (alternate k-steps of the warp), added into the accumulator at the end of the stage.
  template <class C, class RP>
  __device__ static __forceinline__ void accumulate(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, const RP&, Acc<C>& st) {
    static_assert(C::RPW == 16 && C::TK % 16 == 0, "dense tensor-core tiles: 16 rows a warp, 16-column k-steps");
    constexpr int KSTEPS = C::TK / 16, NG = Acc<C>::NG;
    const int g = lane >> 2, t = lane & 3;
    const uint32_t* xw = reinterpret_cast<const uint32_t*>(xs);  // pairs of x[b][k]
    // ldmatrix x4: lanes 8i .. 8i+7 address matrix i = (rows 0-7 | 8-15) x (columns 0-7 | 8-15) of the k-step
    uint32_t a_row[C::NMAT];
#pragma unroll
    for (int m = 0; m < C::NMAT; ++m) {
      const int r = m * C::TR + slot * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      a_row[m] = smem_u32(buf + r * DenseW<T, 1>::template row_vec<C>() + (lane >> 4));
    }
    float d[2][NG][C::NMAT][4];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int n = 0; n < NG; ++n)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
          for (int i = 0; i < 4; ++i) d[h][n][m][i] = 0.f;
    auto step = [&](int s, float (&acc)[NG][C::NMAT][4]) {
      const int k = ch * C::TK + s * 16;  // column within the K part
      uint32_t b0[NG], b1[NG];
#pragma unroll
      for (int n = 0; n < NG; ++n) {
        const int b = 8 * n + g;
        b0[n] = b < NB ? xw[(b * 8 * XR<C::KP> + k) / 2 + t] : 0u;
        b1[n] = b < NB ? xw[(b * 8 * XR<C::KP> + k) / 2 + t + 4] : 0u;
      }
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m) {
        uint32_t a[4];
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                     : "r"(a_row[m] + s * 32));
#pragma unroll
        for (int n = 0; n < NG; ++n) mma(acc[n][m], a, b0[n], b1[n]);
      }
    };
#pragma unroll 1
    for (int s = wi; s < KSTEPS; s += 2 * C::WPR) {
      step(s, d[0]);
      if (s + C::WPR < KSTEPS) step(s + C::WPR, d[1]);
    }
#pragma unroll
    for (int n = 0; n < NG; ++n)
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
        for (int i = 0; i < 4; ++i) st.c[n * C::NMAT + m][i] += d[0][n][m][i] + d[1][n][m][i];
  }
};

// N:4 sparse INT4 (egt.sparsify's SparseQuantLinear: kept values quantized as a dense row of K*N/4 columns, and a
// 2-bit position inside its group of 4 per kept value), N a per-layer run-time value (TBL_FMT), so one binary runs a
// model that mixes 2:4, 1:4 and dense INT4 layers. Chunk (tile, kp, ch) for N in {1, 2} (operands.py):
//   codes  [NMAT][TR][WR] x u32    WR = TK*N/32 words, 8 kept codes each (egt.quant's nibble order)
//   index  [NMAT][TR][WR] x u16    the 2-bit positions of a word's 8 kept values, first in the low bits
//   pairs  [NMAT][TR][(TK*N/4) >> lg] x half2 (scale, offset), at the next 4-byte boundary; lg in kept values
// N == 4 layers (dense QuantLinear in a mixed model) use the Q4W chunk and loop. The stride is Q4W's: no layout of
// N <= 2 is larger. The kernel gathers x by index: `after_stage` copies the staged part into float32 with one pad
// after every word's 32/N-column window, so the 32 lanes of a gather (adjacent windows) hit distinct banks.
struct S4Src {
  const uint4* base;  // chunk 0 of this layer's op
  int lg;             // log2 of the scale block (kept values for N <= 2, columns for N == 4)
  int n;              // kept values per group of 4: 1, 2 or 4
};
template <typename T> struct S4W : ChunkCopy<S4W<T>> {
  template <class C> using Acc = LaneAcc<C>;
  template <class C> __host__ __device__ static constexpr int xps() { return C::KP + C::KP / 16; }  // padded row
  template <class C> __host__ __device__ static constexpr int extra_floats() { return NB * xps<C>(); }
  template <class C> __host__ __device__ static constexpr int stage_vec() { return Q4W<T>::template stage_vec<C>(); }
  template <class C> __device__ static __forceinline__ int pairs_byte(int n) { return (6 * C::NMAT * C::TR * (C::TK * n / 32) + 3) & ~3; }
  template <class C> __device__ static __forceinline__ int chunk_vecs(const S4Src& s) {
    if (s.n == 4) return Q4W<T>::template chunk_vecs<C>(s);
    return (pairs_byte<C>(s.n) + C::NMAT * C::TR * ((C::TK * s.n / 4) >> s.lg) * 4 + 15) / 16;
  }
  template <class C> __device__ static __forceinline__ void after_stage(const uint4* xs, float* xp, const S4Src& src) {
    if (src.n == 4) return;  // the dense loop reads the staged part itself
    const int sh = src.n == 2 ? 4 : 5;  // log2 of a word's window (32/N columns)
MK_COLD_LOOP
    for (int i = threadIdx.x; i < NB * C::KP / 8; i += NTHR) {
      const int b = i / (C::KP / 8), col = (i - b * (C::KP / 8)) * 8;
      float f[8];
      unpack8<T>(xs[b * XR<C::KP> + col / 8], f);
#pragma unroll
      for (int e = 0; e < 8; ++e) xp[b * xps<C>() + col + e + ((col + e) >> sh)] = f[e];
    }
    __syncthreads();
  }
  // sum_j (s q_j + o) x[pos_j] = s * sum q x + o * sum x over a word (8 kept values in one scale block).
  template <int N, class C>
  __device__ static __forceinline__ void sparse(const uint4* buf, const float* xp, int ch, int slot, int wi, int lane,
                                                int lg, LaneAcc<C>& st) {
    constexpr int WR = C::TK * N / 32, W = 32 / N, WPT = (WR + C::TPR - 1) / C::TPR;
    const uint32_t* codes = reinterpret_cast<const uint32_t*>(buf);
    const uint16_t* index = reinterpret_cast<const uint16_t*>(codes + C::NMAT * C::TR * WR);
    const __half2* pairs = reinterpret_cast<const __half2*>(reinterpret_cast<const unsigned char*>(buf) +
                                                            ((6 * C::NMAT * C::TR * WR + 3) & ~3));
    const int sps = (C::TK * N / 4) >> lg;
MK_VEC_LOOP
    for (int v = 0; v < WPT; ++v) {
      const int c = wi * 32 + lane + v * C::TPR;
      if (WPT * C::TPR == WR || c < WR) {
        const int gi = (c * 8) >> lg;
        const float* xw = xp + (ch * (C::TK / W) + c) * (W + 1);  // this word's padded window
#pragma unroll
        for (int j = 0; j < C::RPW; ++j)
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m) {
            const int row = m * C::TR + slot * C::RPW + j;
            const uint32_t ix = index[row * WR + c];
            float q[8];
            Q4W<T>::codes8(codes[row * WR + c], q);
            float dot[NB], xsum[NB];
#pragma unroll
            for (int b = 0; b < NB; ++b) dot[b] = xsum[b] = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
              const int off = 4 * (e / N) + ((ix >> (2 * e)) & 3);
#pragma unroll
              for (int b = 0; b < NB; ++b) {
                const float xv = xw[b * xps<C>() + off];
                dot[b] = fmaf(q[e], xv, dot[b]);
                xsum[b] += xv;
              }
            }
            const float2 so = __half22float2(pairs[row * sps + gi]);
#pragma unroll
            for (int b = 0; b < NB; ++b) st.v[j][m][b] = fmaf(so.x, dot[b], fmaf(so.y, xsum[b], st.v[j][m][b]));
          }
      }
    }
  }
  template <class C>
  __device__ static __forceinline__ void accumulate(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, const S4Src& src, LaneAcc<C>& st) {
    const float* xp = reinterpret_cast<const float*>(xs + NB * XR<C::KP>);  // the policy's floats follow xs
    if (src.n == 2) sparse<2, C>(buf, xp, ch, slot, wi, lane, src.lg, st);
    else if (src.n == 1) sparse<1, C>(buf, xp, ch, slot, wi, lane, src.lg, st);
    else Q4W<T>::template accumulate<C>(buf, xs, ch, slot, wi, lane, src, st);
  }
};

// N:4 sparse INT4 on sparse tensor cores (kind int4-nm-tc: bf16 activations, batch <= 16 at 16 rows a warp in
// groups of 8 as in Q4TC, <= 4 at 8 rows):
// mma.sp.m16n8k32 multiplies 16 rows x 32 columns of which the metadata names two of every four: no gather of x.
// A quad still costs about as many instructions as a dense one (activation fragments, scale pairs, fold), so the
// loop's time follows its columns more than its bytes (bench/results/megakernel/megakernel_ceiling.md: 2:4 keeps up
// with an SM's share of the copy bandwidth, 1:4 does not). N == 4 layers (dense INT4 in a mixed model) run Q4TC.
// The 1:4 pairs (kept, kept ^ 1) are unordered for odd positions: measured correct on an H100 (sm_90) only.
// Chunk (tile, kp, ch) for N in {1, 2} (operands.py `_sp_fragments`; lane (g, t), quad q of 64 P columns = two
// k-steps, step s read with sparsity selector s; P = 16 / RPW column parts, see `sparse_quads`):
//   codes [NMAT][TR/RPW][QUADS][32] x N words: N == 2: word s, nibble r (r + 4) = the first (second) kept code of
//                                    A register r of step s; N == 1: nibble 4s + r = the kept code of register r
//   meta  [NMAT][TR/RPW][QUADS][32] x 2N bytes: the lane's metadata register (N == 2), or its 2-bit kept positions
//                                    (N == 1), which `spread` turns into the index pairs (kept, kept ^ 1)
//   pairs [NMAT][TR][(TK*N/4) >> lg] half2 (scale, offset); a lane's kept values of a k-step lie in one scale block
// Late scaling as in Q4TC, with the sum of x over the kept columns per row from a second mma.sp whose A is 1.0 at
// the kept halves: w = s q + o gives y = s * sum (128 + q) x + (o - 128 s) * sum x.
template <typename T> struct S4TC : ChunkCopy<S4TC<T>> {
  template <class C> using Acc = typename Q4TC<T>::template Acc<C>;
  template <class C> __host__ __device__ static constexpr int stage_vec() { return Q4W<T>::template stage_vec<C>(); }
  template <class C> __host__ __device__ static constexpr int extra_floats() { return Q4TC<T>::template extra_floats<C>(); }
  // code words / metadata a stage holds: 32 lanes per (matrix, row group, quad of 64 x 16/RPW columns)
  template <class C> __host__ __device__ static constexpr int lanes() {
    return C::NMAT * (C::TR / C::RPW) * (C::TK / (64 * Q4TC<T>::template parts<C>())) * 32;
  }
  template <class C> __device__ static __forceinline__ int chunk_vecs(const S4Src& s) {
    if (s.n == 4) return Q4W<T>::template chunk_vecs<C>(s);
    return (6 * s.n * lanes<C>() + C::NMAT * C::TR * ((C::TK * s.n / 4) >> s.lg) * 4 + 15) / 16;
  }
  // N == 4 layers run Q4TC's loop and need its sums of x; N:4 layers sum the kept columns with a second mma.sp
  template <class C> __device__ static __forceinline__ float* xsum_part(float* extra, const S4Src& src) {
    return src.n == 4 ? Q4TC<T>::template xsum_part<C>(extra, src) : nullptr;
  }
  template <class C> __device__ static __forceinline__ void after_stage(const uint4* xs, float* xsum, const S4Src& src) {
    if (src.n == 4) Q4TC<T>::template after_stage<C>(xs, xsum, src);  // n is uniform: every thread takes the barrier
  }
  // 1:4 metadata: eight 2-bit kept positions -> eight nibbles (kept, kept ^ 1); the partner's value is a zero
  __device__ static __forceinline__ uint32_t spread(uint32_t x) {
    x = (x | (x << 8)) & 0x00FF00FFu;
    x = (x | (x << 4)) & 0x0F0F0F0Fu;
    x = (x | (x << 2)) & 0x33333333u;
    return x | ((x ^ 0x11111111u) << 2);
  }
  // bf16 (128 + code) in the low half, zero in the high half
  __device__ static __forceinline__ uint32_t raw_lo(uint32_t word, int p) {
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(word >> (4 * p)), "n"(0x0000000F), "n"(0x00004300));
    return r;
  }
  template <int SEL>
  __device__ static __forceinline__ void mma_sp(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e) {
    asm volatile(
        "mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, "
        "{%0,%1,%2,%3}, %12, %13;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e), "n"(SEL));
  }
  // k-step SEL of a quad: T1 += (128 + q) x, T2 += x over the kept columns, per column group and matrix; the A
  // registers are built once and serve every group of 8 batch rows
  template <class C, int N, int NG, int SEL>
  __device__ static __forceinline__ void step(const uint32_t (&cw)[C::NMAT][N], const uint32_t (&e)[C::NMAT],
                                              const uint32_t (&xb)[NG][2][4], float (&t1)[NG][C::NMAT][4],
                                              float (&t2)[NG][C::NMAT][4]) {
    constexpr uint32_t ONE = N == 2 ? 0x3F803F80u : 0x00003F80u;  // bf16 1.0 where the codes sit
    const uint32_t ones[4] = {ONE, ONE, ONE, ONE};
#pragma unroll
    for (int m = 0; m < C::NMAT; ++m) {
      uint32_t a[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = N == 2 ? Q4TC<T>::raw(cw[m][N == 2 ? SEL : 0], r) : raw_lo(cw[m][0], 4 * SEL + r);
#pragma unroll
      for (int n = 0; n < NG; ++n) {
        mma_sp<SEL>(t1[n][m], a, xb[n][SEL], e[m]);
        mma_sp<SEL>(t2[n][m], ones, xb[n][SEL], e[m]);
      }
    }
  }
  // P = 16 / RPW column parts a fragment (1 or 2), as in Q4TC: fragment row p * RPW + r holds row r's columns
  // 32p .. 32p+31 of a k-step of 32 P columns (operands.py `_sp_maps`), B column P b + p those columns of x[b]. A
  // quad is two k-steps. One (scale, offset) pair serves a lane's quad where a scale block holds its 16 N P kept
  // values; STEP: one a k-step (8 N P kept values, so P = 2 needs no larger groups than P = 1's 16 N).
  template <class C, int N, bool STEP>
  __device__ static __forceinline__ void sparse_quads(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                      int lane, int lg, Acc<C>& st) {
    constexpr int P = Q4TC<T>::template parts<C>(), QUADS = C::TK / (64 * P), RG = C::TR / C::RPW;
    constexpr int NG = Acc<C>::NG;  // groups of 8 batch rows (P = 1 only)
    const int g = lane >> 2, t = lane & 3;
    const int sps = (C::TK * N / 4) >> lg;
    const unsigned char* base = reinterpret_cast<const unsigned char*>(buf);
    const uint32_t* words = reinterpret_cast<const uint32_t*>(base);
    const unsigned char* meta = base + 4 * N * lanes<C>();
    const __half2* pairs = reinterpret_cast<const __half2*>(base + 6 * N * lanes<C>());
    const int xb_b = g / P, xb_p = g % P;  // B column g of group n: part xb_p of batch 8 n + xb_b
    const int er = P == 2 ? g : (g & 3), ep = P == 2 ? 0 : (t & 1) * 2 + (g >> 2);  // P > 1: the lane's element
    // the lane's x words of quad 0 per column group; a batch row past NB (whose C columns no one reads) takes the
    // last row, as in Q4TC::quads
    const uint32_t* xw[NG];
#pragma unroll
    for (int n = 0; n < NG; ++n)
      xw[n] = reinterpret_cast<const uint32_t*>(xs + min(8 * n + xb_b, NB - 1) * XR<C::KP>) +
              (ch * C::TK + 32 * xb_p) / 2 + t;
    warp_quads<QUADS, C::WPR, 1>(wi, [&](int q) {  // one quad at a time where the count is not fixed
      // every shared-memory operand of the quad first: codes, metadata, B fragments of both steps, scale pairs
      uint32_t cw[C::NMAT][N], e[C::NMAT];
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m) {
        const int li = (m * RG * QUADS + q) * 32 + slot * QUADS * 32 + lane;
        if constexpr (N == 2) {
          const uint2 v = reinterpret_cast<const uint2*>(words)[li];
          cw[m][0] = v.x;
          cw[m][N - 1] = v.y;
          e[m] = reinterpret_cast<const uint32_t*>(meta)[li];
        } else {
          cw[m][0] = words[li];
          e[m] = spread(reinterpret_cast<const uint16_t*>(meta)[li]);
        }
      }
      uint32_t xb[NG][2][4];
#pragma unroll
      for (int n = 0; n < NG; ++n)
#pragma unroll
        for (int s = 0; s < 2; ++s)
#pragma unroll
          for (int r = 0; r < 4; ++r) xb[n][s][r] = xw[n][(q * 2 + s) * 16 * P + 4 * r];  // rows 8r + 2t, +1
      constexpr int NR = P == 1 ? 2 : 1;  // rows of the lane's C elements: g, g + 8 (P = 1) or er
      constexpr int NS = STEP ? 2 : 1;    // scale blocks a quad
      __half2 so[NS][C::NMAT][NR];
#pragma unroll
      for (int h = 0; h < NS; ++h)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
          for (int r = 0; r < NR; ++r)
            so[h][m][r] = pairs[(m * C::TR + slot * C::RPW + (P == 1 ? g + 8 * r : er)) * sps +
                                (((q * 2 + h) * 8 * N * P) >> lg)];
      float t1[NS][NG][C::NMAT][4], t2[NS][NG][C::NMAT][4];
#pragma unroll
      for (int h = 0; h < NS; ++h)
#pragma unroll
        for (int n = 0; n < NG; ++n)
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
            for (int i = 0; i < 4; ++i) t1[h][n][m][i] = t2[h][n][m][i] = 0.f;
      step<C, N, NG, 0>(cw, e, xb, t1[0], t2[0]);
      step<C, N, NG, 1>(cw, e, xb, t1[NS - 1], t2[NS - 1]);
#pragma unroll
      for (int h = 0; h < NS; ++h)
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
          for (int r = 0; r < NR; ++r) {
            const float2 sc = __half22float2(so[h][m][r]);
            const float off = fmaf(-Q4TC<T>::BASE, sc.x, sc.y);
            if constexpr (P == 1) {
#pragma unroll
              for (int n = 0; n < NG; ++n)
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                  float& c = st.c[n * C::NMAT + m][2 * r + i];
                  c = fmaf(sc.x, t1[h][n][m][2 * r + i], fmaf(off, t2[h][n][m][2 * r + i], c));
                }
            } else {
              st.c[m][0] = fmaf(sc.x, Q4TC<T>::template part_of<P>(t1[h][0][m], ep),
                                fmaf(off, Q4TC<T>::template part_of<P>(t2[h][0][m], ep), st.c[m][0]));
            }
          }
    });
  }
  template <class C>
  __device__ static __forceinline__ void accumulate(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, const S4Src& src, Acc<C>& st) {
    constexpr int P = Q4TC<T>::template parts<C>();
    static_assert((C::RPW == 16 || C::RPW == 8) && C::TK % (64 * P) == 0,
                  "sparse tensor-core INT4: 16 or 8 rows a warp, quads of 64 x 16/RPW columns");
    const bool per_step = P > 1 && (1 << src.lg) < 16 * src.n * P;
    if (src.n == 2) {
      if (per_step) sparse_quads<C, 2, true>(buf, xs, ch, slot, wi, lane, src.lg, st);
      else sparse_quads<C, 2, false>(buf, xs, ch, slot, wi, lane, src.lg, st);
    } else if (src.n == 1) {
      if (per_step) sparse_quads<C, 1, true>(buf, xs, ch, slot, wi, lane, src.lg, st);
      else sparse_quads<C, 1, false>(buf, xs, ch, slot, wi, lane, src.lg, st);
    } else {
      Q4TC<T>::template accumulate<C>(buf, xs, ch, slot, wi, lane, src, st);
    }
  }
};

// Dense INT3 (egt.quant 3-bit QuantLinear) with INT4 allowed per layer: `bits` (3 or 4) is a per-layer run-time
// value (the table's format byte), so one binary runs a model whose adaptive plan mixes INT3 and INT4 layers.
// Chunk (tile, kp, ch) for bits == 3 (operands.py `q3_chunks`):
//   codes  [NMAT][TR][TK/32] x 3 u32   (Bits3's order: 32 codes in 12 bytes)
//   pairs  [NMAT][TR][TK >> lg] x half2 at the next 16-byte boundary, as in Q4W
// bits == 4 layers use the Q4W chunk and loop. The stride is Q4W's, so an INT3 stage copies 3/4 of the code bytes.
struct Q3Src {
  const uint4* base;  // chunk 0 of this layer's op
  int lg;
  int bits;           // 3 or 4
};
template <typename T> struct Q3W : ChunkCopy<Q3W<T>> {
  template <class C> using Acc = LaneAcc<C>;
  template <class C> __host__ __device__ static constexpr int extra_floats() { return 0; }
  template <class C, class SRC> __device__ static __forceinline__ void after_stage(const uint4*, float*, const SRC&) {}
  template <class C> __host__ __device__ static constexpr int stage_vec() { return Q4W<T>::template stage_vec<C>(); }
  template <class C> __host__ __device__ static constexpr int code_vec() { return (C::NMAT * C::TR * (C::TK / 32) * 12 + 15) / 16; }
  template <class C> __device__ static __forceinline__ int chunk_vecs(const Q3Src& s) {
    return s.bits == 4 ? Q4W<T>::template chunk_vecs<C>(s) : code_vec<C>() + Q4W<T>::template pair_vecs<C>(s.lg);
  }
  template <class C>
  __device__ static __forceinline__ void accumulate(const uint4* buf, const uint4* xs, int ch, int slot, int wi,
                                                    int lane, const Q3Src& src, LaneAcc<C>& st) {
    if (src.bits == 4) Q4W<T>::template accumulate<C>(buf, xs, ch, slot, wi, lane, src, st);
    else dense_codes<Bits3, T, C>(buf, reinterpret_cast<const __half2*>(buf + code_vec<C>()), xs, ch, slot, wi, lane, src.lg, st);
  }
};

template <class T, class = void> struct HasBegin { static constexpr bool value = false; };
template <class T> struct HasBegin<T, decltype(void(&T::begin))> { static constexpr bool value = true; };

template <class C, class WF> struct Matvec {
  static constexpr int NW = C::NW, KP = C::KP, CP = C::CP, SLOTS = C::SLOTS, RPW = C::RPW;
  static constexpr int NT = (C::N + C::TR - 1) / C::TR;
  static constexpr int STAGE_VEC = WF::template stage_vec<C>();
  static constexpr int MAXT = (NT + NBLK - 1) / NBLK;
  static constexpr int XVEC = NB * XR<KP>;
  static constexpr int RING_BYTES = C::ST * STAGE_VEC * 16;
  // The ring bytes this op's stages can occupy: the busiest block's stage count, at most ST slots.
  static constexpr int FOOT_BYTES = (MAXT * C::KS * CP < C::ST ? MAXT * C::KS * CP : C::ST) * STAGE_VEC * 16;
  // Stages issued ahead of the dependency wait. cp.async (sm_80/89): enough to cover a grid sync, no more,
  // because issuing a deep prefill 16 bytes a thread delays the wake-up itself (seen in traces on the H100).
  // Bulk copies (sm_90) cost one instruction a run: the whole ring but the stage the loop refills first.
  static constexpr int PF_WANT = (PREFETCH_BYTES + STAGE_VEC * 16 - 1) / (STAGE_VEC * 16);
  static constexpr int PF = MK_BULK ? C::ST - 1 : (PF_WANT < 1 ? 1 : (PF_WANT > C::ST - 1 ? C::ST - 1 : PF_WANT));
  static constexpr int XS_BYTES = XVEC * 16;
  static constexpr int EXTRA_FLOATS = WF::template extra_floats<C>();  // the policy's per-part data (after xs)
  static constexpr int RED_FLOATS = (C::WPR > 1) ? NW * RPW * C::NMAT * NB : 0;
  static constexpr int ACC_FLOATS = (C::KS > 1) ? MAXT * C::TR * NB * C::NMAT : 0;
  static constexpr int REGION_BYTES = XS_BYTES + 4 * (EXTRA_FLOATS + RED_FLOATS + ACC_FLOATS);
  static_assert(C::K % C::KS == 0 && KP % C::TK == 0 && C::TK % 8 == 0, "K, KS, TK must tile");
  static_assert(NW % C::WPR == 0 && C::TR % SLOTS == 0 && RPW >= 1, "TR must be a multiple of warps/WPR");
  static_assert(C::ST >= 2 && C::ST <= MAX_RING, "two to MAX_RING stages");

  __device__ static __forceinline__ void tiles(int& t0, int& t1) {
    const int b = (blockIdx.x + C::ROT) % NBLK;
    t0 = (int)(((long long)NT * b) / NBLK);
    t1 = (int)(((long long)NT * (b + 1)) / NBLK);
  }
  // Stage s -> (K part, tile of the block, stage in the tile). Without a K-split there is no division by the
  // run-time tile count (its code, inlined at every call site of every op, is not small).
  __device__ static __forceinline__ void decode(int s, int nt, int& kp, int& tl, int& ch) {
    ch = s % CP;
    const unsigned r = (unsigned)(s / CP);
    if constexpr (C::KS == 1) {
      tl = (int)r;
      kp = 0;
    } else {
      tl = (int)(r % (unsigned)nt);
      kp = (int)(r / (unsigned)nt);
    }
  }
  // Stage s of the block's sequence into ring slot s % ST. cp.async: threads from `first` on issue 16 bytes
  // each and commit one group per stage (empty past the end), so wait_group<ST-2> finds stage s complete.
  // Bulk: warp 0 issues; slot i's mbarrier completes once per fill, its parity tracked in ring.phase.
  template <class SRC>
  __device__ static __forceinline__ void issue(Ring& ring, int s, int t0, int nt, const SRC& src, int first = 0) {
#if MK_BULK
    if (s < nt * C::KS * CP && threadIdx.x < 32) {
      int kp, tl, ch;
      decode(s, nt, kp, tl, ch);
      WF::template issue_bulk<C>(ring.buf + (s % C::ST) * STAGE_VEC, ring.bar + s % C::ST, t0 + tl, kp, ch, src,
                                 threadIdx.x);
    }
#else
    if (s < nt * C::KS * CP && (int)threadIdx.x >= first) {
      int kp, tl, ch;
      decode(s, nt, kp, tl, ch);
      WF::template issue<C>(ring.buf + (s % C::ST) * STAGE_VEC, t0 + tl, kp, ch, src, first);
    }
    cp_commit();
#endif
  }
  __device__ static __forceinline__ void wait(Ring& ring, int s) {
#if MK_BULK
    const int i = s % C::ST;
    mbar_wait(ring.bar + i, (ring.phase >> i) & 1u);
    ring.phase ^= 1u << i;
#else
    cp_wait<C::ST - 2>();
#endif
  }
  // Stages s0..PF-1 (a prefill may be issued in two parts). Threads below 32 issue nothing: warp 0 stays free to
  // poll the dependency counter during a prefill.
  template <class SRC>
  __device__ static __forceinline__ void prefill(Ring& ring, const SRC& src, int s0 = 0, int s1 = PF) {
    int t0, t1;
    tiles(t0, t1);
#pragma unroll 1
    for (int s = s0; s < s1; ++s) issue(ring, s, t0, t1 - t0, src, NTHR > 32 ? 32 : 0);
  }

  // L2 look-ahead of the block's share of this op, up to `budget` bytes, issued by one lane.
  template <class SRC> __device__ static __forceinline__ void l2_ahead(const SRC& src, long long budget) {
    if (threadIdx.x != NTHR - 1) return;
    int t0, t1;
    tiles(t0, t1);
    WF::template l2_share<C>(t0, t1, src, budget);
  }

  // src: where the weights are (the policy's source: a row map for DenseW, a Q4Src for Q4W).
  // stage(xs, kp, xsum): writes activation part kp (and, where xsum is not null, its sums per 32 columns) and syncs.
  // epi(n, b, v[NMAT]): consumes a finished output element (called by exactly one thread per (n, b)).
  template <class SRC, class XS, class EPI>
  __device__ static __forceinline__ void run(Ring& ring, unsigned char* region, const SRC& src, const XS& stage, EPI& epi) {
    int t0, t1;
    tiles(t0, t1);
    const int nt = t1 - t0;
    const int ns = nt * C::KS * CP;
    uint4* xs = reinterpret_cast<uint4*>(region);
    float* extra = reinterpret_cast<float*>(region + XS_BYTES);
    float* red = extra + EXTRA_FLOATS;
    float* accs = red + RED_FLOATS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int slot = warp / C::WPR, wi = warp % C::WPR;
    typename WF::template Acc<C> st;
    st.clear();
    if constexpr (HasBegin<EPI>::value) {
      const int n0 = t0 * C::TR;
      epi.begin(n0, min(t1 * C::TR, C::N) > n0 ? min(t1 * C::TR, C::N) : n0);
    }
#pragma unroll 1
    for (int s = PF; s < C::ST - 1; ++s) issue(ring, s, t0, nt, src);  // the stages prefill left out
    float* xsum = WF::template xsum_part<C>(extra, src);
    if (ns > 0) {
      stage(xs, 0, xsum);
      WF::template after_stage<C>(xs, extra, src);
    }
    MK_PROBE(20);
#pragma unroll 1
    for (int s = 0; s < ns; ++s) {
      wait(ring, s);
      __syncthreads();
      if (s == 0) MK_PROBE(21);
      if (s == ns - 1) MK_PROBE(23);
      issue(ring, s + C::ST - 1, t0, nt, src);  // refills the stage everyone finished last iteration
      int kp, tl, ch;
      decode(s, nt, kp, tl, ch);
      if (kp > 0 && tl == 0 && ch == 0) {
        stage(xs, kp, xsum);
        WF::template after_stage<C>(xs, extra, src);
      }
      WF::template accumulate<C>(ring.buf + (s % C::ST) * STAGE_VEC, xs, ch, slot, wi, lane, src, st);
      if (s == 0) MK_PROBE(22);
      if (ch == CP - 1) {
        finish_tile(st, t0 + tl, tl, kp, red, accs, warp, lane, slot, epi);
        st.clear();
      }
    }
#if !MK_BULK
    cp_wait<0>();
#endif
    __syncthreads();
    MK_PROBE(24);
  }

  // Row r of tile `tile` (the block's tl-th), batch b, K part kp: K parts add up in shared memory (KS > 1); the
  // last part's sum goes to the epilogue.
  template <class EPI>
  __device__ static __forceinline__ void emit(float (&v)[C::NMAT], int tile, int tl, int r, int b, int kp, float* accs,
                                              EPI& epi) {
    if constexpr (C::KS > 1) {
      float* a = accs + ((tl * C::TR + r) * NB + b) * C::NMAT;
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m) {
        if (kp > 0) v[m] += a[m];
        a[m] = v[m];
      }
    }
    const int n = tile * C::TR + r;
    if (kp == C::KS - 1 && n < C::N) epi(n, b, v);
  }
  // The warp's sums of (row j, batch b) go to the epilogue (WPR == 1: the warp owns its rows, no block barrier) or,
  // added over the WPR warps of a row in a fixed order, through shared memory. Each output is finished by one lane:
  // the one holding its whole sum (OWNED accumulators: tensor-core fragments), else lanes in turn after a warp
  // reduction.
  template <class EPI>
  __device__ static __forceinline__ void finish_tile(const typename WF::template Acc<C>& st, int tile, int tl, int kp,
                                                     float* red, float* accs, int warp, int lane, int slot, EPI& epi) {
    auto out = [&](int j, int b, float (&v)[C::NMAT]) {
      if constexpr (C::WPR == 1) {
        emit(v, tile, tl, slot * RPW + j, b, kp, accs, epi);
      } else {
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) red[((warp * RPW + j) * C::NMAT + m) * NB + b] = v[m];
      }
    };
    if constexpr (WF::template Acc<C>::OWNED) {
      st.each(lane, out);
    } else {
      float acc[RPW][C::NMAT][NB];
      st.rows(acc, lane);
#pragma unroll
      for (int j = 0; j < RPW; ++j)
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          float v[C::NMAT];
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m) v[m] = warp_sum(acc[j][m][b]);
          if (lane == (C::WPR == 1 ? (j * NB + b) & 31 : 0)) out(j, b, v);
        }
    }
    if constexpr (C::WPR > 1) {
      __syncthreads();
MK_COLD_LOOP
      for (int it = threadIdx.x; it < C::TR * NB; it += NTHR) {
        const int r = it / NB, b = it % NB;
        const int sl = r / RPW, j = r % RPW;
        float v[C::NMAT];
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          float t = 0.f;
#pragma unroll
          for (int w = 0; w < C::WPR; ++w) t += red[(((sl * C::WPR + w) * RPW + j) * C::NMAT + m) * NB + b];
          v[m] = t;
        }
        emit(v, tile, tl, r, b, kp, accs, epi);
      }
    }
  }
};

}  // namespace egt
