// W4A16 GEMV/GEMM for decode batches (M <= 16): dense INT4, and N:4 sparse INT4 (2:4, 1:4) with 2-bit indices.
//
// y[M, N] = x[M, K] @ W^T, W [N, K] stored as in egt.quant.packing (int32 words, 8 codes per word along K, code k
// in bits 4*(k%8)..) with fp16 scales/offsets per group of GS stored values (asym: w = s*q + o; sym: w = s*(q-8)).
// Sparse: the row keeps KC = K*n/4 values (same word layout), plus uint8 indices (4 two-bit in-group positions per
// byte, first in the low bits); kept value k lies in group k/n of 4 dense columns.
//
// Scheme (a block = one tile of 16 weight rows x a K range of chunks; mma.sync m16n8k16, weights as A,
// activations as B):
// - At entry, before waiting on the previous kernel (PDL), every lane issues cp.async copies of the block's WHOLE
//   share of packed words (and index bytes, scale/offset words) into shared memory, one commit group per chunk, so
//   all of a block's bytes are in flight at once; the compute loop waits chunk by chunk (cp.async.wait_group).
//   A quad of lanes covers 16 contiguous words (128 stored values = one "chunk") of rows g and g + 8; each lane
//   copies exactly the 16 bytes it later reads, so no barrier is needed per chunk.
// - Dequantization without int->float conversion: (w >> 4i) & 0x000F000F | MAGIC puts two nibbles into the
//   mantissas of two fp16 (bf16) numbers equal to 1024+q (128+q); one HSUB2 makes them exact codes and one
//   HFMA2/HMUL2 applies the group's scale (and offset); dense g >= 128 instead folds the scale per chunk in fp32.
// - The reduction order inside an mma is free, so the K positions a thread owns are mapped to the mma's logical
//   k indices however is cheapest: dense words give nibble pairs (i, i+4), and the activations are staged once per
//   block in shared memory already permuted to match; sparse groups are expanded in registers to their 4 dense
//   columns with byte permutes whose selectors come from a table indexed by a whole index byte (2:4: two groups,
//   1:4: two pairs of groups per byte).
// - Split-K across blocks (grid.y) writes fp32 partials; the last block of a row tile to arrive (an arrival
//   counter, reset by that block) adds them in a fixed order, so results are deterministic and nothing needs
//   zeroing between calls. No floating-point atomics.
// - Programmatic dependent launch (optional, sm_90): the kernel calls griddepcontrol.launch_dependents right after
//   issuing its weight copies and griddepcontrol.wait before it reads x or writes y / the split-K scratch, so with
//   the launch attribute the next GEMV of a chain starts streaming its weights while this one finishes. Contract:
//   the weights must not be written by the kernels just before it in the stream (they are static model weights).
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


// ---- asynchronous copies (cp.async, sm_80+) and programmatic dependent launch (griddepcontrol, sm_90+) ----
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
// src_bytes < size zero-fills the rest (0 = nothing is read: rows past N, units past the row's end).
__device__ __forceinline__ void cp16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp8(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Wait until at most n of this thread's most recent groups are pending. n is clamped to 3 (waiting for more
// groups than needed is safe); an if-chain is a few instructions where a 0..7 switch compiled to a jump table.
__device__ __forceinline__ void cp_wait(int n) {
  if (n >= 3) asm volatile("cp.async.wait_group 3;" ::: "memory");
  else if (n == 2) asm volatile("cp.async.wait_group 2;" ::: "memory");
  else if (n == 1) asm volatile("cp.async.wait_group 1;" ::: "memory");
  else asm volatile("cp.async.wait_group 0;" ::: "memory");
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

// Shared-memory plan of one block (bytes, every region 16-byte aligned), the same on host and device:
//   W  [cps][16 rows][4 lanes t] uint4   the block's packed words (a chunk = 64 bytes of each of its 16 rows)
//   IX [cps][16][4] uint2                sparse: the matching index bytes
//   SC [2][16 rows][SW] uint32           scales, then offsets: the words that hold the block's groups of each row
//   X  [M][cps * UPC] uint4 + xsum [M][cps] float   the activation slice (permuted / swizzled) and sum(x) per chunk
// The cross-warp reduction reuses the space from offset 0 at the end.
struct Smem {
  int w, ix, sc, x, xsum, total, sw;
};
__host__ __device__ inline int groups_bound(const Params& p) {  // groups of a row one block's chunk range touches
  if (p.gshift < 0) return 1;
  const int n = ((p.cps * 128) >> p.gshift) + 2;
  return n < p.G ? n : p.G;
}
__host__ __device__ inline Smem smem_plan(const Params& p, int mode, int nw, int nt) {
  const int upc = 16 * (mode == 0 ? 1 : 4 / mode);
  Smem s;
  s.sw = (groups_bound(p) + 3) / 2;
  s.w = 0;
  s.ix = s.w + p.cps * 1024;
  s.sc = s.ix + (mode == 0 ? 0 : p.cps * 512);
  s.x = s.sc + ((2 * 16 * s.sw * 4 + 15) / 16) * 16;
  s.xsum = s.x + p.M * p.cps * upc * 16;
  const int end = s.xsum + ((p.M * p.cps * 4 + 15) / 16) * 16;
  const int red = nw * 1 * nt * 4 * 32 * 4;
  s.total = end > red ? end : red;
  return s;
}

template <int MODE> struct Lut {
  // 2:4: per index byte (two groups), the PRMT selectors (dense columns 0-1, 2-3) of the low group then the high one.
  // 1:4: per index byte (four groups), two entries: groups (0, 1) then (2, 3) of the byte, each {lo01, lo23, hi01,
  // hi23} (lo = the even group, its kept value in the low half of the dequantized pair; hi = the odd group).
  static constexpr int N = MODE == 0 ? 1 : (MODE == 2 ? 256 : 512);
};

__device__ __forceinline__ uint32_t sel24(int i0, int i1, int half) {  // columns 2*half, 2*half+1 of a 2:4 group
  uint32_t r = 0;
  for (int k = 0; k < 2; ++k) {
    const int c = 2 * half + k;
    r |= (c == i0 ? 0x10u : (c == i1 ? 0x32u : 0x54u)) << (8 * k);
  }
  return r;
}
__device__ __forceinline__ uint32_t sel14(int i, int hi, int half) {  // a 1:4 group whose value is half `hi` of v
  uint32_t r = 0;
  for (int k = 0; k < 2; ++k) r |= ((2 * half + k) == i ? (hi ? 0x32u : 0x10u) : 0x54u) << (8 * k);
  return r;
}

// Scales/offsets of a block: for each (array, row) pair, the 32-bit words that hold the row's groups [g0, g1)
// (the first word may start one half early). L lanes per pair (a power of two >= the words per row, at most 32), so
// a warp covers 32 / L pairs per pass; rows past N are zero-filled.
template <bool SYM>
__device__ __forceinline__ void copy_scales(uint32_t* SCsm, const Params& p, int sw, int row0, int g0, int g1, int warp,
                                            int lane, int nw) {
  const int L = sw <= 4 ? 4 : (sw <= 8 ? 8 : (sw <= 16 ? 16 : 32));
  const int per = 32 / L;
  const int npairs = SYM ? 16 : 32;  // symmetric: no offsets
  const int total_halves = p.N * p.G;
  for (int ar = warp * per + lane / L; ar < npairs; ar += nw * per) {
    const int r = ar & 15, row = row0 + r;
    const bool ok = row < p.N;
    const uint32_t* base = reinterpret_cast<const uint32_t*>(ar < 16 ? p.sc : p.of);
    const int w0 = ok ? (row * p.G + g0) >> 1 : 0;
    const int nwords = ok ? (((row * p.G + g1) + 1) >> 1) - w0 : sw;
    for (int k = lane % L; k < nwords; k += L) {
      const int bytes = ok ? min(4, 2 * (total_halves - 2 * (w0 + k))) : 0;
      cp4(SCsm + ar * sw + k, bytes > 0 ? base + w0 + k : reinterpret_cast<const uint32_t*>(p.sc), bytes > 0 ? bytes : 0);
    }
  }
}

// LATE (dense, groups of >= 128 values): the mma multiplies the raw magic-number values (BASE + q) and the group's
// scale is applied once per chunk in fp32: y += s * sum((BASE + q) x) + (o - BASE s) * sum(x), with sum(x) per
// chunk computed while staging. Saves the per-weight HSUB2 + HFMA2; the cancellation of BASE * sum(x) happens in
// fp32 (about 10 of its 24 bits).
// NWMAX: 4 (blocks of 4 warps, several resident per SM) or 16 (blocks of 8 or 16 warps).
template <typename T, int MODE, int NT, bool SYM, bool LATE, int NWMAX>
__global__ void __launch_bounds__(NWMAX * 32, NWMAX == 4 ? 5 : 1) w4_kernel(Params p) {
  using T2 = typename Tr<T>::T2;
  using MD = Mode<MODE>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ uint4 lut[Lut<MODE>::N];
  __shared__ int last_flag;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int nchunks = (p.KC + 127) >> 7;
  const int c0 = blockIdx.y * p.cps;
  const int c1 = min(c0 + p.cps, nchunks);
  const int units = p.cps * MD::UPC;  // smem row length of the activation slice, in 16-byte units
  const int row0 = blockIdx.x * 16;
  const Smem sp = smem_plan(p, MODE, nw, NT);
  uint4* Wsm = reinterpret_cast<uint4*>(smem + sp.w);
  uint2* IXsm = reinterpret_cast<uint2*>(smem + sp.ix);
  uint32_t* SCsm = reinterpret_cast<uint32_t*>(smem + sp.sc);
  uint4* xs = reinterpret_cast<uint4*>(smem + sp.x);
  float* xsum = reinterpret_cast<float*>(smem + sp.xsum);

  // 1. Before anything that depends on earlier kernels: the block's whole share of the (static) weights goes out
  //    as asynchronous copies, so all its bytes are in flight at once (Little's law: a DRAM round trip of ~1 us at
  //    ~4 TB/s needs ~30 KB in flight per SM; a block's share is 12-90 KB).
  //    Scales/offsets: the 32-bit words covering the block's groups of each row (all threads, strided) = group 0.
  const int g0 = p.gshift < 0 ? 0 : (c0 * 128) >> p.gshift;
  const int g1 = p.gshift < 0 ? 1 : min(p.G, (((c1 * 128) - 1) >> p.gshift) + 1);
  //    Weights (and indices): lane (g, t) of warp w copies exactly what it will read: chunks c0 + w + i * nw, rows g
  //    and g + 8, 16-byte unit t. One commit group per chunk, so the compute loop can start on the first chunk to
  //    arrive. Group 0 also holds the scale/offset words (copied by all lanes after the first chunk's copies).
  const uint4* wrow[2];
  const uint2* irow[2];
  bool rok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row0 + g + 8 * h;
    rok[h] = row < p.N;
    wrow[h] = reinterpret_cast<const uint4*>(p.qw + (rok[h] ? (size_t)row * p.KW : 0));
    irow[h] = reinterpret_cast<const uint2*>(p.idx + (MODE != 0 && rok[h] ? (size_t)row * (p.KC / 4) : 0));
  }
  int nmine = 0;
  for (int c = c0 + warp; c < c1; c += nw, ++nmine) {
    const int v16 = c * 4 + t;
    const bool uok = v16 * 4 < p.KW;
    uint4* wd = Wsm + ((c - c0) * 16 + g) * 4 + t;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool ok = rok[h] && uok;
      cp16(wd + 32 * h, wrow[h] + (ok ? v16 : 0), ok ? 16 : 0);
      if (MODE != 0) cp8(IXsm + ((c - c0) * 16 + g + 8 * h) * 4 + t, irow[h] + (ok ? v16 : 0), ok ? 8 : 0);
    }
    if (nmine == 0) copy_scales<SYM>(SCsm, p, sp.sw, row0, g0, g1, warp, lane, nw);
    cp_commit();
  }
  if (nmine == 0) {  // a warp without chunks still copies its share of the scales
    copy_scales<SYM>(SCsm, p, sp.sw, row0, g0, g1, warp, lane, nw);
    cp_commit();
  }
  if (MODE != 0) {
    for (int v = threadIdx.x; v < 256; v += nw * 32) {
      if (MODE == 2) {  // two groups per byte; each group: two 2-bit positions (first kept value in the low bits)
        const int lo = v & 15, hi = v >> 4;
        lut[v] = make_uint4(sel24(lo & 3, lo >> 2, 0), sel24(lo & 3, lo >> 2, 1), sel24(hi & 3, hi >> 2, 0),
                            sel24(hi & 3, hi >> 2, 1));
      } else {  // four groups per byte, one 2-bit position each
        for (int pr = 0; pr < 2; ++pr) {
          const int ie = (v >> (4 * pr)) & 3, io = (v >> (4 * pr + 2)) & 3;
          lut[2 * v + pr] = make_uint4(sel14(ie, 0, 0), sel14(ie, 0, 1), sel14(io, 1, 0), sel14(io, 1, 1));
        }
      }
    }
  }
  // 2. Let the next kernel in the stream launch now (PDL: its blocks start their own weight copies while this one
  //    works), then wait for the previous kernel (it writes x, and may read y or the split-K scratch).
  pdl_launch_dependents();
  pdl_wait();

  // Stage x[:, block columns] once (permuted for dense, swizzled for all). Columns past K are zero. Dense also
  // records sum(x) per (row of x, chunk) for the LATE scaling: a half-warp holds exactly one chunk (16 units).
  {
    const int nunits = (c1 - c0) * MD::UPC;
    const int total = p.M * nunits;  // a multiple of 16
    const uint4* xg = reinterpret_cast<const uint4*>(p.x);
    // One unit per lane per pass, spread over all warps (measured: four units per lane per pass concentrated the
    // staging on the first warps and made every block wait longer at the barrier below, +1 us on H100).
    constexpr int XU = 1;
    for (int i0 = warp * 32 * XU; i0 < total; i0 += nw * 32 * XU) {  // warp-uniform trip count (shuffles below)
      uint4 xv4[XU];
#pragma unroll
      for (int q = 0; q < XU; ++q) {
        const int i = i0 + q * 32 + lane;
        const int b = p.M == 1 ? 0 : i / nunits, u = i - b * nunits;
        const int col = c0 * MD::UPC * 8 + u * 8;
        xv4[q] = make_uint4(0, 0, 0, 0);
        if (i < total && col < p.K) xv4[q] = __ldcg(xg + ((size_t)b * p.K + col) / 8);  // L2: PDL may overlap the writer
      }
#pragma unroll
      for (int q = 0; q < XU; ++q) {
        const int i = i0 + q * 32 + lane;
        const int b = p.M == 1 ? 0 : i / nunits, u = i - b * nunits;
        uint4 v = xv4[q];
        float part = 0.f;
        if (MODE == 0) {  // (x0,x1),(x2,x3),(x4,x5),(x6,x7) -> (x0,x4),(x1,x5),(x2,x6),(x3,x7)
          const float2 a = Tr<T>::f2(v.x), bb = Tr<T>::f2(v.y), c = Tr<T>::f2(v.z), d = Tr<T>::f2(v.w);
          part = ((a.x + a.y) + (bb.x + bb.y)) + ((c.x + c.y) + (d.x + d.y));
          v = make_uint4(prmt(v.x, v.z, 0x5410), prmt(v.x, v.z, 0x7632), prmt(v.y, v.w, 0x5410), prmt(v.y, v.w, 0x7632));
        }
        if (i < total) xs[b * units + swz<MODE>(u, b)] = v;
        if (MODE == 0 && LATE) {
#pragma unroll
          for (int o = 8; o >= 1; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
          if (i < total && (lane & 15) == 0) xsum[b * p.cps + u / 16] = part;
        }
      }
    }
  }
  cp_wait(nmine - 1);  // group 0 (first chunk + scales) of this thread; the barrier shares every thread's copies
  __syncthreads();

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
  // Scale/offset half index of this lane's rows (g, g + 8) at group g0 (the words start at an even half).
  const __half* sch = reinterpret_cast<const __half*>(SCsm);
  int sbase[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int rl = g + 8 * h;
    sbase[h] = rl * sp.sw * 2 + (((row0 + rl) * p.G + g0) & 1) - g0;
  }
  const int ooff = 16 * sp.sw * 2;  // offsets array, in halves

  float acc[NT][4];
  // Four partial accumulators (by word parity and mma parity), so consecutive mmas form four independent chains.
  float part[4][NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = part[0][n][e] = part[1][n][e] = part[2][n][e] = part[3][n][e] = 0.f;
  const T2 base = Tr<T>::base(SYM);

  int i = 0;
  for (int c = c0 + warp; c < c1; c += nw, ++i) {
    cp_wait(nmine - 1 - i);  // this chunk's copies (issued by this very lane) have landed
    const int lc = c - c0;
    const int gi = p.gshift < 0 ? 0 : min((c * 128 + 32 * t) >> p.gshift, p.G - 1);
    uint4 wq[2];
    uint2 wi[2];
    __half s16[2], o16[2];
    T2 s2[2], o2[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      wq[h] = Wsm[(lc * 16 + g + 8 * h) * 4 + t];
      if (MODE != 0) wi[h] = IXsm[(lc * 16 + g + 8 * h) * 4 + t];
      s16[h] = sch[sbase[h] + gi];
      o16[h] = SYM ? __float2half(0.f) : sch[ooff + sbase[h] + gi];
      s2[h] = Tr<T>::from_half(s16[h]);
      o2[h] = Tr<T>::from_half(o16[h]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // word j of the lane's 16 bytes
      auto& D0 = part[2 * (j & 1)];
      auto& D1 = part[2 * (j & 1) + 1];
      // Activation units this word needs (DPS units per word), per n-tile.
      uint4 xv[NT][MD::DPS];
#pragma unroll
      for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int d = 0; d < MD::DPS; ++d) xv[n][d] = xrow[n][lc * MD::UPC + xa[n] + ((j * MD::DPS + d) ^ xl[n])];
      }
      uint32_t w[2], ix[2];
      w[0] = (&wq[0].x)[j];
      w[1] = (&wq[1].x)[j];
      ix[0] = (j < 2 ? wi[0].x : wi[0].y) >> (16 * (j & 1));
      ix[1] = (j < 2 ? wi[1].x : wi[1].y) >> (16 * (j & 1));
      if (MODE == 0) {
        uint32_t a[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int k = 0; k < 4; ++k)
            a[h][k] = LATE ? lop_magic(w[h] >> (4 * k), Tr<T>::MAGIC)
                           : dq<T>(lop_magic(w[h] >> (4 * k), Tr<T>::MAGIC), base, s2[h], o2[h], SYM);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          mma<T>(D0[n], a[0][0], a[1][0], a[0][1], a[1][1], xv[n][0].x, xv[n][0].y);
          mma<T>(D1[n], a[0][2], a[1][2], a[0][3], a[1][3], xv[n][0].z, xv[n][0].w);
        }
      } else {
        // Kept values 2grp and 2grp+1 of the word, dequantized as one pair: byte grp of w -> byte 0, byte grp of
        // w>>4 -> byte 2, so nibbles (2grp, 2grp+1) sit at bits 0 and 16 for the magic-number LOP3.
        // 2:4: the pair is group grp (its two kept values); 1:4: groups 2grp (low half) and 2grp+1 (high half).
        const uint32_t w4[2] = {w[0] >> 4, w[1] >> 4};
        uint4 L[2];  // 2:4: the table entry of the current index byte (groups grp, grp+1), per row
#pragma unroll
        for (int grp = 0; grp < 4; ++grp) {
          uint32_t e[2][4];  // per row: two (2:4) or four (1:4) expanded registers
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t pr = prmt(w[h], w4[h], grp | ((4 + grp) << 8));
            const uint32_t v = dq<T>(lop_magic(pr, Tr<T>::MAGIC), base, s2[h], o2[h], SYM);
            const uint32_t byte = (ix[h] >> (8 * (grp >> 1))) & 255;
            if (MODE == 2) {
              if ((grp & 1) == 0) L[h] = lut[byte];
              e[h][0] = prmt(v, 0u, (grp & 1) ? L[h].z : L[h].x);
              e[h][1] = prmt(v, 0u, (grp & 1) ? L[h].w : L[h].y);
            } else {
              const uint4 sel = lut[2 * byte + (grp & 1)];
              e[h][0] = prmt(v, 0u, sel.x);
              e[h][1] = prmt(v, 0u, sel.y);
              e[h][2] = prmt(v, 0u, sel.z);
              e[h][3] = prmt(v, 0u, sel.w);
            }
          }
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            if (MODE == 2) {  // group grp: activation unit grp/2, half grp&1
              const uint4 xu = xv[n][grp >> 1];
              mma<T>(part[2 * (j & 1) + (grp & 1)][n], e[0][0], e[1][0], e[0][1], e[1][1], (grp & 1) ? xu.z : xu.x,
                     (grp & 1) ? xu.w : xu.y);
            } else {  // groups 2grp and 2grp+1: activation unit grp, halves 0 and 1
              const uint4 xu = xv[n][grp];
              mma<T>(D0[n], e[0][0], e[1][0], e[0][1], e[1][1], xu.x, xu.y);
              mma<T>(D1[n], e[0][2], e[1][2], e[0][3], e[1][3], xu.z, xu.w);
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
        for (int e = 0; e < 4; ++e) {
          const float sf = __half2float(s16[e >> 1]);
          const float of = SYM ? -8.f * sf : __half2float(o16[e >> 1]);
          acc[n][e] = fmaf(sf, (part[0][n][e] + part[1][n][e]) + (part[2][n][e] + part[3][n][e]),
                           fmaf(of - Tr<T>::BASE * sf, xsm[e & 1], acc[n][e]));
          part[0][n][e] = part[1][n][e] = part[2][n][e] = part[3][n][e] = 0.f;
        }
      }
    }
  }

  if (!LATE) {
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[n][e] = (part[0][n][e] + part[1][n][e]) + (part[2][n][e] + part[3][n][e]);
  }
  // Cross-warp reduction through shared memory (weights and activations are no longer needed).
  constexpr int NV = NT * 4;
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[((warp * NV) + n * 4 + e) * 32 + lane] = acc[n][e];
  __syncthreads();
  const bool split = p.S > 1;
  for (int v = warp; v < NV; v += nw) {
    float s = 0.f;
    for (int w2 = 0; w2 < nw; ++w2) s += red[(w2 * NV + v) * 32 + lane];
    const int n = v / 4, e = v % 4;
    const int row = row0 + g + 8 * (e >> 1);
    const int b = n * 8 + 2 * t + (e & 1);
    if (row < p.N && b < p.M) {
      if (split) p.ws[((size_t)blockIdx.y * p.M + b) * p.N + row] = s;
      else reinterpret_cast<T*>(p.y)[(size_t)b * p.N + row] = Tr<T>::to_t(s);
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
  const int rows = min(16, p.N - row0);
  for (int k = threadIdx.x; k < rows * p.M; k += nw * 32) {
    const int b = k / rows, row = row0 + k % rows;
    float v = 0.f;
    for (int s = 0; s < p.S; ++s) v += __ldcg(p.ws + ((size_t)s * p.M + b) * p.N + row);
    reinterpret_cast<T*>(p.y)[(size_t)b * p.N + row] = Tr<T>::to_t(v);
  }
  if (threadIdx.x == 0) p.counters[blockIdx.x] = 0;
}

constexpr int SMEM_MAX = 200 * 1024;  // dynamic shared memory one block may take (static LUT/flag sit on top)

template <typename T, int MODE, int NT, bool SYM, bool LATE>
int launch_t(const Params& p, int nw, bool pdl, cudaStream_t stream) {
  void (*kern)(Params) = nw <= 4 ? w4_kernel<T, MODE, NT, SYM, LATE, 4> : w4_kernel<T, MODE, NT, SYM, LATE, 16>;
  const Smem sp = smem_plan(p, MODE, nw, NT);
  const size_t smem = sp.total;
  if (smem > SMEM_MAX) return -5;
  static size_t allowed[2] = {0, 0};  // raised once per kernel
  size_t& al = allowed[nw <= 4 ? 0 : 1];
  if (smem > al) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_MAX);
    if (e != cudaSuccess) return (int)e;
    // Every variant asks for the largest shared-memory carveout: kernels of a chain then share one L1/shared split,
    // so an SM can hold blocks of consecutive kernels at once (PDL) without reconfiguring. x is read through L2.
    e = cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
    if (e != cudaSuccess) return (int)e;
    al = SMEM_MAX;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((p.N + 15) / 16, p.S);
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
  if (MODE != 0 && two) return -2;
  if (rt != 1) return -3;
  if (nw != 4 && nw != 8 && nw != 16) return -4;
  const bool late = MODE == 0 && (p.gshift < 0 || p.gshift >= 7);  // every chunk lies inside one group
#define EGT_W4_CASE(NT_, SYM_)                          \
  if ((NT_ == 2) == two && sym == SYM_)                 \
    return late ? launch_t<T, MODE, NT_, SYM_, MODE == 0>(p, nw, pdl, s) : launch_t<T, MODE, NT_, SYM_, false>(p, nw, pdl, s);
  EGT_W4_CASE(1, 0) EGT_W4_CASE(1, 1)
  if constexpr (MODE == 0) {
    EGT_W4_CASE(2, 0) EGT_W4_CASE(2, 1)
  }
#undef EGT_W4_CASE
  return -3;
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
// Dynamic shared memory (bytes) one block of this call takes; the Python side picks split-K so that it fits.
int egt_w4_smem_bytes(const egt_w4::Params* p, int mode, int nw) {
  return egt_w4::smem_plan(*p, mode, nw, p->M > 8 ? 2 : 1).total;
}
const char* egt_w4_error_string(int e) {
  if (e == -5) return "shared memory plan over the cap (more split-K needed)";
  return e >= 0 ? cudaGetErrorString((cudaError_t)e) : "configuration not compiled (row tiles 1; warps 4, 8 or 16)";
}
int egt_w4_num_sms(int device) {
  int v = 0;
  cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device);
  return v;
}
}
