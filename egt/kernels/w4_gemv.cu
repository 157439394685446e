// W4A16 GEMV/GEMM for decode batches (M <= 16): dense INT4, and N:4 sparse INT4 (2:4, 1:4) with 2-bit indices.
//
// y[M, N] = x[M, K] @ W^T, W [N, K] stored as in egt.quant.packing (int32 words, 8 codes per word along K, code k
// in bits 4*(k%8)..) with fp16 scales/offsets per group of GS stored values (asym: w = s*q + o; sym: w = s*(q-8)).
// Sparse: the row keeps KC = K*n/4 values (same word layout), plus uint8 indices (4 two-bit in-group positions per
// byte, first in the low bits); kept value k lies in group k/n of 4 dense columns.
//
// Scheme (one warp = RT tiles of 16 weight rows; mma.sync m16n8k16, weights as A, activations as B):
// - A thread (lane = 4*g + t) streams 16 bytes (4 words) per row for rows g and g+8 of each tile: a quad of lanes
//   covers 16 contiguous words (128 stored values = one "chunk") of a row; two chunks per register stage, two
//   stages in flight (the next stage's loads are issued before the current one is used).
// - Dequantization without int->float conversion: (w >> 4i) & 0x000F000F | MAGIC puts two nibbles into the
//   mantissas of two fp16 (bf16) numbers equal to 1024+q (128+q); one HSUB2 makes them exact codes and one
//   HFMA2/HMUL2 applies the group's scale (and offset); dense g >= 128 instead folds the scale per chunk in fp32.
// - The reduction order inside an mma is free, so the K positions a thread owns are mapped to the mma's logical
//   k indices however is cheapest: dense words give nibble pairs (i, i+4), and the activations are staged once per
//   block in shared memory already permuted to match; sparse groups are expanded in registers to their 4 dense
//   columns with byte permutes whose selectors come from a 16-entry table indexed by the group's 2-bit positions
//   (a 256-entry table keyed by whole index bytes issued fewer instructions but was slower: shared-memory bank
//   conflicts, H100 profile in bench/results/quant_kernels.notes.md).
// - Split-K across blocks (grid.y) writes fp32 partials; the last block of a row tile to arrive (an arrival
//   counter, reset by that block) adds them in a fixed order, so results are deterministic and nothing needs
//   zeroing between calls. No floating-point atomics.
// - Programmatic dependent launch (optional, sm_90): the kernel issues its first stage of weight loads, then calls
//   griddepcontrol.launch_dependents and griddepcontrol.wait before it reads x or writes y / the split-K scratch,
//   so with the launch attribute the next GEMV of a chain starts loading its weights while this one finishes.
//   Contract: the weights must not be written by the kernels just before it in the stream (static model weights).
// (A variant that copied each block's whole weight share into shared memory with cp.async up front was measured
// and dropped: more instructions per warp in a kernel that is issue/latency-bound, +1.2 us at 7 MB on H100;
// bench/results/quant_kernels.notes.md.)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace egt_w4 {

struct Params {
  const void* x;         // [M, K] T
  const uint32_t* qw;    // [N, KW]
  const uint8_t* idx;    // [N, KC/4] (sparse) or null
  const __half* sc;      // [N, G]
  const __half* of;      // [N, G] or null (sym)
  void* y;               // [M, N] T
  float* ws;             // [S, M, N] fp32 partials (S > 1)
  int* counters;         // [gridDim.x] arrival counters, zero at rest
  int M, N, K, KC, KW, G, gshift, S, cps;  // gshift: log2(group size); -1 = one group per row. cps: chunks per split
};

template <typename T> struct Tr;
template <> struct Tr<__half> {
  using T2 = __half2;
  static constexpr uint32_t MAGIC = 0x64006400u;  // fp16 1024.0 twice
  static __device__ __forceinline__ T2 base(bool sym) { return __floats2half2_rn(sym ? 1032.f : 1024.f, sym ? 1032.f : 1024.f); }
  static __device__ __forceinline__ T2 from_half(__half h) { return __half2half2(h); }
  static __device__ __forceinline__ __half to_t(float f) { return __float2half_rn(f); }
  static constexpr float BASE = 1024.f;
  static __device__ __forceinline__ float2 f2(uint32_t v) { return __half22float2(*reinterpret_cast<__half2*>(&v)); }
};
template <> struct Tr<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t MAGIC = 0x43004300u;  // bf16 128.0 twice
  static __device__ __forceinline__ T2 base(bool sym) { return __floats2bfloat162_rn(sym ? 136.f : 128.f, sym ? 136.f : 128.f); }
  static __device__ __forceinline__ T2 from_half(__half h) { return __float2bfloat162_rn(__half2float(h)); }
  static __device__ __forceinline__ __nv_bfloat16 to_t(float f) { return __float2bfloat16_rn(f); }
  static constexpr float BASE = 128.f;
  static __device__ __forceinline__ float2 f2(uint32_t v) { return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&v)); }
};

__device__ __forceinline__ uint32_t lop_magic(uint32_t v, uint32_t magic) {
  uint32_t r;
  // r = (v & 0x000F000F) | magic in one LOP3 (0xEA = (a & b) | c)
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(v), "n"(0x000F000F), "r"(magic));
  return r;
}

template <typename T>
__device__ __forceinline__ uint32_t dq(uint32_t h, typename Tr<T>::T2 base, typename Tr<T>::T2 s,
                                       typename Tr<T>::T2 o, bool sym) {
  using T2 = typename Tr<T>::T2;
  T2 q = __hsub2(*reinterpret_cast<T2*>(&h), base);  // exact: (q or q - 8)
  T2 w = sym ? __hmul2(q, s) : __hfma2(q, s, o);
  return *reinterpret_cast<uint32_t*>(&w);
}

template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  if constexpr (sizeof(T) == 2 && std::is_same<T, __half>::value) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// Inline PTX rather than __byte_perm: the intrinsic masks a runtime selector with 0x7777 first (one LOP3 per use).
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(s));
  return r;
}

// PDL: without a programmatic launch both are no-ops. wait = every prerequisite grid has completed and its memory
// is visible; launch_dependents = the next kernel in the stream may start once every block of this one said so.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}


// MODE: 0 dense, 1 = 1:4, 2 = 2:4. Dense columns per stored value = 4 / n (dense: 1).
template <int MODE> struct Mode {
  static constexpr int DPS = MODE == 0 ? 1 : 4 / MODE;  // dense columns per stored value
  static constexpr int UPC = 16 * DPS;                   // 16-byte activation units per chunk (8 columns each)
  static constexpr int SH = MODE == 0 ? 2 : (MODE == 2 ? 3 : 4);  // log2 of units per (lane t) slot
};

// Shared-memory address (in 16-byte units) of activation unit `unit` (chunk-relative bits preserved) of batch row b:
// XOR the lane-slot bits into the bank bits so the four lanes t of a quad (and even/odd rows) hit distinct banks.
template <int MODE>
__device__ __forceinline__ int swz(int unit, int b) {
  return unit ^ ((((unit >> Mode<MODE>::SH) & 3) << 1) ^ (b & 1));
}

constexpr int MAX_WARPS = 16;  // warps per block (a runtime choice: 4, 8 or 16) split the block's K range
constexpr int U = 2;  // chunks per register stage; two stages (double buffering)

// One register stage: U chunks x RT tiles x 2 rows (g, g+8) of packed words, indices and group scale/offset.
template <int RT> struct Stage {
  uint4 wq[U][RT][2];
  uint2 wi[U][RT][2];
  __half s16[U][RT][2], o16[U][RT][2];
};

// Per-lane row pointers, computed once: rows g and g+8 of each of the warp's RT tiles (null past the last row).
template <int RT> struct Rows {
  const uint4* q[RT][2];
  const uint2* ix[RT][2];
  const __half* s[RT][2];
  const __half* o[RT][2];
};

template <int MODE, bool SYM, int RT>
__device__ __forceinline__ void row_ptrs(Rows<RT>& rp, const Params& p, int row0, int g) {
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + r * 16 + g + 8 * h;
      const bool ok = row < p.N;
      rp.q[r][h] = ok ? reinterpret_cast<const uint4*>(p.qw + (size_t)row * p.KW) : nullptr;
      rp.ix[r][h] = ok && MODE != 0 ? reinterpret_cast<const uint2*>(p.idx + (size_t)row * (p.KC / 4)) : nullptr;
      rp.s[r][h] = ok ? p.sc + (size_t)row * p.G : nullptr;
      rp.o[r][h] = ok && !SYM ? p.of + (size_t)row * p.G : nullptr;
    }
}

template <int MODE, bool SYM, int RT>
__device__ __forceinline__ void load_stage(Stage<RT>& st, const Rows<RT>& rp, const Params& p, int cb, int c1, int t,
                                           int nw) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int c = cb + u * nw;
    const int v16 = c * 4 + t;  // 16-byte unit of the row (4 words); the same index addresses 8 index bytes
    const bool cok = c < c1 && v16 * 4 < p.KW;
    const int gi = p.gshift < 0 ? 0 : min((c * 128 + 32 * t) >> p.gshift, p.G - 1);
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const bool ok = cok && rp.q[r][h] != nullptr;
        // The group scale is the row's whatever part of the chunk this lane holds: a lane past the end of the
        // row still applies it to the mma result it holds (LATE), which includes the other lanes' columns.
        const bool sok = c < c1 && rp.q[r][h] != nullptr;
        st.wq[u][r][h] = ok ? __ldcs(rp.q[r][h] + v16) : make_uint4(0, 0, 0, 0);
        if (MODE != 0) st.wi[u][r][h] = ok ? __ldcs(rp.ix[r][h] + v16) : make_uint2(0, 0);
        st.s16[u][r][h] = sok ? rp.s[r][h][gi] : __float2half(0.f);
        if (!SYM) st.o16[u][r][h] = sok ? rp.o[r][h][gi] : __float2half(0.f);
      }
  }
}

// LATE (dense, groups of >= 128 values): the mma multiplies the raw magic-number values (BASE + q) and the group's
// scale is applied once per chunk in fp32: y += s * sum((BASE + q) x) + (o - BASE s) * sum(x), with sum(x) per
// chunk computed while staging. Saves the per-weight HSUB2 + HFMA2; the cancellation of BASE * sum(x) happens in
// fp32 (about 10 of its 24 bits).
// NWMAX: 4 (blocks of 4 warps; register cap for 5 resident blocks per SM when dense, so a grid of many row tiles
// runs in one wave) or 16 (blocks of 8 or 16 warps; 128 registers).
template <typename T, int MODE, int NT, bool SYM, int RT, bool LATE, int NWMAX>
__global__ void __launch_bounds__(NWMAX * 32, NWMAX == 4 ? (MODE == 0 ? 5 : 4) : 1) w4_kernel(Params p) {
  using T2 = typename Tr<T>::T2;
  using MD = Mode<MODE>;
  extern __shared__ uint4 xs[];  // [M][units] activations, then reused for the cross-warp reduction
  __shared__ uint4 lut[16];
  __shared__ int last_flag;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int nchunks = (p.KC + 127) >> 7;
  const int c0 = blockIdx.y * p.cps;
  const int c1 = min(c0 + p.cps, nchunks);
  const int units = p.cps * MD::UPC;  // smem row length in units
  const int row0 = blockIdx.x * (16 * RT);
  // The first weight loads go out before the activation staging, so their DRAM latency overlaps it.
  Rows<RT> rp;
  row_ptrs<MODE, SYM, RT>(rp, p, row0, g);
  Stage<RT> cur;
  load_stage<MODE, SYM, RT>(cur, rp, p, c0 + warp, c1, t, nw);

  if (MODE != 0 && threadIdx.x < 16) {
    const int v = threadIdx.x;
    uint32_t s[4];
    for (int c = 0; c < 4; ++c) {
      if (MODE == 2) {  // two kept values (V.lo at i0, V.hi at i1)
        const int i0 = v & 3, i1 = v >> 2;
        s[c] = c == i0 ? 0x10u : (c == i1 ? 0x32u : 0x54u);
      } else {  // one kept value per group; entry serves the lo-half group (v&3) and the hi-half group (v>>2)
        s[c] = c == (v & 3) ? 0x10u : 0x54u;
      }
    }
    uint4 e;
    e.x = s[0] | (s[1] << 8);
    e.y = s[2] | (s[3] << 8);
    if (MODE == 1) {
      uint32_t h[4];
      for (int c = 0; c < 4; ++c) h[c] = c == (v >> 2) ? 0x32u : 0x54u;
      e.z = h[0] | (h[1] << 8);
      e.w = h[2] | (h[3] << 8);
    } else {
      e.z = e.w = 0;
    }
    lut[v] = e;
  }
  // PDL: the first weight stage (above) and the tables do not depend on earlier kernels; x does (and y and the
  // split-K scratch may still be read by them), so wait here; let the next kernel launch as early as possible.
  pdl_launch_dependents();
  pdl_wait();
  // Stage x[:, block columns] once (permuted for dense, swizzled for all). Columns past K are zero. Dense also
  // records sum(x) per (row of x, chunk) for the LATE scaling: a half-warp holds exactly one chunk (16 units).
  float* xsum = reinterpret_cast<float*>(xs + p.M * units);  // [M][cps]
  {
    const int col0 = c0 * MD::UPC * 8;
    const int nunits = (c1 - c0) * MD::UPC;
    const int total = p.M * nunits;  // a multiple of 16
    const uint4* xg = reinterpret_cast<const uint4*>(p.x);
    for (int i0 = warp * 32; i0 < total; i0 += nw * 32) {  // warp-uniform trip count (shuffles below)
      const int i = i0 + lane;
      const int b = i / nunits, u = i - b * nunits;
      float part = 0.f;
      if (i < total) {
        const int col = col0 + u * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (col < p.K) v = __ldcg(xg + ((size_t)b * p.K + col) / 8);  // L2: with PDL x is written during our start
        if (MODE == 0) {  // (x0,x1),(x2,x3),(x4,x5),(x6,x7) -> (x0,x4),(x1,x5),(x2,x6),(x3,x7)
          const float2 a = Tr<T>::f2(v.x), bb = Tr<T>::f2(v.y), c = Tr<T>::f2(v.z), d = Tr<T>::f2(v.w);
          part = ((a.x + a.y) + (bb.x + bb.y)) + ((c.x + c.y) + (d.x + d.y));
          v = make_uint4(prmt(v.x, v.z, 0x5410), prmt(v.x, v.z, 0x7632), prmt(v.y, v.w, 0x5410), prmt(v.y, v.w, 0x7632));
        }
        xs[b * units + swz<MODE>(u, b)] = v;
      }
      if (MODE == 0 && LATE) {
#pragma unroll
        for (int o = 8; o >= 1; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
        if (i < total && (lane & 15) == 0) xsum[b * p.cps + u / 16] = part;
      }
    }
  }
  __syncthreads();

  float acc[RT][NT][4];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][n][e] = 0.f;

  const T2 base = Tr<T>::base(SYM);
  // Per-lane activation addressing, hoisted out of the loop. A lane of n-tile n reads row b = 8n + g (clamped to a
  // real row: columns of y past M are computed from finite data and never stored). swz() only flips the three low
  // bits, with a per-lane constant (t, b), so unit ^ xk splits into a lane part and a compile-time part.
  const uint4* xrow[NT];
  int xa[NT], xl[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int b = min(n * 8 + g, p.M - 1);
    const int xk = (t << 1) ^ (b & 1);
    constexpr int LO = 4 * MD::DPS - 1;
    xrow[n] = xs + b * units;
    xa[n] = ((4 * t * MD::DPS) ^ (xk & ~LO));
    xl[n] = xk & LO;
  }
  // Two partial accumulators, alternated between consecutive mmas, so the mma chain is two independent chains.
  float part[2][RT][NT][4];
#pragma unroll
  for (int k = 0; k < 2; ++k)
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[k][r][n][e] = 0.f;

  for (int cb = c0 + warp; cb < c1; cb += nw * U) {
    // Double buffering: the next stage's loads are in flight while this stage is dequantized and multiplied.
    Stage<RT> nxt;
    load_stage<MODE, SYM, RT>(nxt, rp, p, cb + nw * U, c1, t, nw);
    const auto& wq = cur.wq;
    const auto& wi = cur.wi;
    const auto& s16 = cur.s16;
    const auto& o16 = cur.o16;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = cb + u * nw;
      if (c >= c1) break;
      const int lc = c - c0;  // chunk index within the block's activation slice
      auto& D0 = part[0];
      auto& D1 = part[1];
      T2 s2[RT][2], o2[RT][2];
#pragma unroll
      for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          s2[r][h] = Tr<T>::from_half(s16[u][r][h]);
          o2[r][h] = Tr<T>::from_half(o16[u][r][h]);
        }
#pragma unroll
      for (int j = 0; j < 4; ++j) {  // word j of the lane's 16 bytes
        // Activation units this word needs (DPS units per word), per n-tile.
        uint4 xv[NT][MD::DPS];
#pragma unroll
        for (int n = 0; n < NT; ++n) {
#pragma unroll
          for (int d = 0; d < MD::DPS; ++d) xv[n][d] = xrow[n][lc * MD::UPC + xa[n] + ((j * MD::DPS + d) ^ xl[n])];
        }
#pragma unroll
        for (int r = 0; r < RT; ++r) {
          uint32_t w[2], ix[2];
          w[0] = (&wq[u][r][0].x)[j];
          w[1] = (&wq[u][r][1].x)[j];
          ix[0] = (j < 2 ? wi[u][r][0].x : wi[u][r][0].y) >> (16 * (j & 1));
          ix[1] = (j < 2 ? wi[u][r][1].x : wi[u][r][1].y) >> (16 * (j & 1));
          if (MODE == 0) {
            uint32_t a[2][4];
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int i = 0; i < 4; ++i)
                a[h][i] = LATE ? lop_magic(w[h] >> (4 * i), Tr<T>::MAGIC)
                               : dq<T>(lop_magic(w[h] >> (4 * i), Tr<T>::MAGIC), base, s2[r][h], o2[r][h], SYM);
#pragma unroll
            for (int n = 0; n < NT; ++n) {
              mma<T>(D0[r][n], a[0][0], a[1][0], a[0][1], a[1][1], xv[n][0].x, xv[n][0].y);
              mma<T>(D1[r][n], a[0][2], a[1][2], a[0][3], a[1][3], xv[n][0].z, xv[n][0].w);
            }
          } else if (MODE == 2) {
            uint32_t w4[2] = {w[0] >> 4, w[1] >> 4};
#pragma unroll
            for (int grp = 0; grp < 4; ++grp) {
              uint32_t d01[2], d23[2];
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                // byte grp of w -> byte 0, byte grp of w>>4 -> byte 2: nibbles (2grp, 2grp+1) at bits 0 and 16
                const uint32_t pr = prmt(w[h], w4[h], grp | ((4 + grp) << 8));
                const uint32_t v = dq<T>(lop_magic(pr, Tr<T>::MAGIC), base, s2[r][h], o2[r][h], SYM);
                const uint2 sel = *reinterpret_cast<const uint2*>(&lut[(ix[h] >> (4 * grp)) & 15]);
                d01[h] = prmt(v, 0u, sel.x);
                d23[h] = prmt(v, 0u, sel.y);
              }
              const int d = grp >> 1;
#pragma unroll
              for (int n = 0; n < NT; ++n) {
                const uint32_t b0 = (grp & 1) ? xv[n][d].z : xv[n][d].x;
                const uint32_t b1 = (grp & 1) ? xv[n][d].w : xv[n][d].y;
                mma<T>(part[grp & 1][r][n], d01[0], d01[1], d23[0], d23[1], b0, b1);
              }
            }
          } else {  // MODE == 1
#pragma unroll
            for (int i = 0; i < 4; ++i) {  // nibble pair (i, i+4) = groups i and i+4 of this word
              uint32_t dl01[2], dl23[2], dh01[2], dh23[2];
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const uint32_t v = dq<T>(lop_magic(w[h] >> (4 * i), Tr<T>::MAGIC), base, s2[r][h], o2[r][h], SYM);
                const uint32_t key = ((ix[h] >> (2 * i)) & 3) | ((ix[h] >> (2 * i + 6)) & 12);
                const uint4 sel = lut[key];
                dl01[h] = prmt(v, 0u, sel.x);
                dl23[h] = prmt(v, 0u, sel.y);
                dh01[h] = prmt(v, 0u, sel.z);
                dh23[h] = prmt(v, 0u, sel.w);
              }
#pragma unroll
              for (int n = 0; n < NT; ++n) {
                // group m of the word: activation unit m/2, half m&1
                const uint4 xl = xv[n][i >> 1], xh = xv[n][(i + 4) >> 1];
                mma<T>(D0[r][n], dl01[0], dl01[1], dl23[0], dl23[1], (i & 1) ? xl.z : xl.x, (i & 1) ? xl.w : xl.y);
                mma<T>(D1[r][n], dh01[0], dh01[1], dh23[0], dh23[1], (i & 1) ? xh.z : xh.x, (i & 1) ? xh.w : xh.y);
              }
            }
          }
        }
      }
      if (LATE) {  // apply this chunk's group scale/offset once, in fp32
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          float xsm[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int b = n * 8 + 2 * t + e;
            xsm[e] = b < p.M ? xsum[b * p.cps + lc] : 0.f;
          }
#pragma unroll
          for (int r = 0; r < RT; ++r)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float sf = __half2float(s16[u][r][e >> 1]);
              const float of = SYM ? -8.f * sf : __half2float(o16[u][r][e >> 1]);
              acc[r][n][e] = fmaf(sf, part[0][r][n][e] + part[1][r][n][e], fmaf(of - Tr<T>::BASE * sf, xsm[e & 1], acc[r][n][e]));
              part[0][r][n][e] = part[1][r][n][e] = 0.f;
            }
        }
      }
    }
    cur = nxt;
  }

  if (!LATE) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[r][n][e] = part[0][r][n][e] + part[1][r][n][e];
  }
  // Cross-warp reduction through shared memory (the activation slice is no longer needed).
  constexpr int NV = RT * NT * 4;
  __syncthreads();
  float* red = reinterpret_cast<float*>(xs);
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[((warp * NV) + (r * NT + n) * 4 + e) * 32 + lane] = acc[r][n][e];
  __syncthreads();
  const bool split = p.S > 1;
  for (int i = warp; i < NV; i += nw) {
    float v = 0.f;
#pragma unroll
    for (int w2 = 0; w2 < nw; ++w2) v += red[(w2 * NV + i) * 32 + lane];
    const int r = i / (NT * 4), n = (i / 4) % NT, e = i % 4;
    const int row = row0 + r * 16 + g + 8 * (e >> 1);
    const int b = n * 8 + 2 * t + (e & 1);
    if (row < p.N && b < p.M) {
      if (split) p.ws[((size_t)blockIdx.y * p.M + b) * p.N + row] = v;
      else reinterpret_cast<T*>(p.y)[(size_t)b * p.N + row] = Tr<T>::to_t(v);
    }
  }
  if (!split) return;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int prev = atomicAdd(p.counters + blockIdx.x, 1);
    last_flag = prev == p.S - 1;
  }
  __syncthreads();
  if (!last_flag) return;
  __threadfence();
  const int rows = min(16 * RT, p.N - row0);
  for (int i = threadIdx.x; i < rows * p.M; i += nw * 32) {
    const int b = i / rows, row = row0 + i % rows;
    float v = 0.f;
    for (int s = 0; s < p.S; ++s) v += __ldcg(p.ws + ((size_t)s * p.M + b) * p.N + row);
    reinterpret_cast<T*>(p.y)[(size_t)b * p.N + row] = Tr<T>::to_t(v);
  }
  if (threadIdx.x == 0) p.counters[blockIdx.x] = 0;
}

template <typename T, int MODE, int NT, bool SYM, int RT, bool LATE>
int launch_t(const Params& p, int nw, bool pdl, cudaStream_t stream) {
  void (*kern)(Params) = nw <= 4 ? w4_kernel<T, MODE, NT, SYM, RT, LATE, 4> : w4_kernel<T, MODE, NT, SYM, RT, LATE, 16>;
  const size_t xbytes = (size_t)p.M * p.cps * Mode<MODE>::UPC * 16 + (((size_t)p.M * p.cps * 4 + 15) / 16) * 16;
  const size_t rbytes = (size_t)nw * RT * NT * 4 * 32 * 4;
  const size_t smem = xbytes > rbytes ? xbytes : rbytes;
  static size_t allowed[2] = {40 * 1024, 40 * 1024};  // raised once per kernel (static shared memory sits on top)
  size_t& al = allowed[nw <= 4 ? 0 : 1];
  if (smem > al) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(smem + 16 * 1024));
    if (e != cudaSuccess) return (int)e;
    al = smem + 16 * 1024;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((p.N + 16 * RT - 1) / (16 * RT), p.S);
  cfg.blockDim = dim3(nw * 32);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kern, p);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaGetLastError();
}

template <typename T, int MODE>
int launch_m(const Params& p, int sym, int rt, int nw, bool pdl, cudaStream_t s) {
  const bool two = p.M > 8;
#define EGT_W4_CASE(NT_, SYM_, RT_)                                                 \
  if ((NT_ == 2) == two && sym == SYM_ && rt == RT_)                                \
    return late ? launch_t<T, MODE, NT_, SYM_, RT_, MODE == 0>(p, nw, pdl, s) : launch_t<T, MODE, NT_, SYM_, RT_, false>(p, nw, pdl, s);
  const bool late = MODE == 0 && (p.gshift < 0 || p.gshift >= 7);  // every chunk lies inside one group
  if (nw != 4 && nw != 8 && nw != 16) return -4;
  EGT_W4_CASE(1, 0, 1) EGT_W4_CASE(1, 1, 1) EGT_W4_CASE(2, 0, 1) EGT_W4_CASE(2, 1, 1)
#undef EGT_W4_CASE
  return -3;
}

// Dynamic shared memory (bytes) of one block: the activation slice (+ sum(x) per chunk), or the cross-warp
// reduction if larger. The Python side mirrors it (egt.kernels.smem_bytes) to pick split-K.
inline size_t smem_bytes(const Params& p, int mode, int nw, int nt) {
  const size_t upc = 16 * (mode == 0 ? 1 : 4 / mode);
  const size_t xbytes = (size_t)p.M * p.cps * upc * 16 + (((size_t)p.M * p.cps * 4 + 15) / 16) * 16;
  const size_t rbytes = (size_t)nw * nt * 4 * 32 * 4;
  return xbytes > rbytes ? xbytes : rbytes;
}

}  // namespace egt_w4

extern "C" {
// dtype: 0 fp16, 1 bf16; mode: 0 dense, 1 = 1:4, 2 = 2:4; pdl: launch with programmatic stream serialization
// (sm_90). Returns a cudaError_t (0 ok) or a negative code for a configuration that was not compiled.
int egt_w4_gemv(const egt_w4::Params* p, int dtype, int mode, int sym, int rt, int nw, int pdl, void* stream) {
  using namespace egt_w4;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const bool pd = pdl != 0;
  if (dtype == 0) {
    if (mode == 0) return launch_m<__half, 0>(*p, sym, rt, nw, pd, s);
    if (mode == 1) return launch_m<__half, 1>(*p, sym, rt, nw, pd, s);
    if (mode == 2) return launch_m<__half, 2>(*p, sym, rt, nw, pd, s);
  } else {
    if (mode == 0) return launch_m<__nv_bfloat16, 0>(*p, sym, rt, nw, pd, s);
    if (mode == 1) return launch_m<__nv_bfloat16, 1>(*p, sym, rt, nw, pd, s);
    if (mode == 2) return launch_m<__nv_bfloat16, 2>(*p, sym, rt, nw, pd, s);
  }
  return -1;
}
int egt_w4_smem_bytes(const egt_w4::Params* p, int mode, int nw) {
  return (int)egt_w4::smem_bytes(*p, mode, nw, p->M > 8 ? 2 : 1);
}
const char* egt_w4_error_string(int e) { return e >= 0 ? cudaGetErrorString((cudaError_t)e) : "configuration not compiled (row tiles 1; warps 4, 8 or 16)"; }
int egt_w4_num_sms(int device) {
  int v = 0;
  cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device);
  return v;
}
}
