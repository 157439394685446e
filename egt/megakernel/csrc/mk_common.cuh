// egt MegaKernel: device primitives shared by every opcode.
//
// Contract: everything here is sm_80+ (cp.async, ld.acquire, red.release, %globaltimer), so a kernel built from
// these runs on Ampere, Ada (sm_89) and Hopper alike. The generated translation unit defines `mk_t` (the
// activation/weight element type, __nv_bfloat16 or __half) before including this file.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

namespace egt {

__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
// Round through the storage dtype: the torch reference materialises every intermediate in it, and matching
// those rounding points keeps our logits within a few ulps of it instead of drifting layer by layer.
template <typename T> __device__ __forceinline__ float rnd(float x) { return to_f(from_f<T>(x)); }

// A staged activation part of KP columns: batch row b starts at vector b * XR<KP> (16-byte vectors). Above batch 1
// one vector of padding a row: a tensor-core B fragment reads the same columns of 8 batch rows, which at a row stride
// that is a multiple of 128 bytes would all fall in one bank (8-way conflicts); 16 more bytes put them 4 banks apart.
// Measured 1.14-1.22x faster steps at batch 8-16 (H200, bench/results/megakernel/session20/README.md).
template <int KP> constexpr int XR = KP / 8 + (NB > 1 ? 1 : 0);

template <typename T> __device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]);
template <> __device__ __forceinline__ void unpack8<__nv_bfloat16>(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
template <> __device__ __forceinline__ void unpack8<__half>(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h = *reinterpret_cast<const __half2*>(&w[i]);
    float2 p = __half22float2(h);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// ---- asynchronous copies (sm_80) -----------------------------------------------------------------------------
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
// Weights are read once per step: their 16-byte copies mark the line evict-first, so that the lines the L2
// look-ahead brought in for a later op (and the activations, the KV cache) survive the stream of the current op.
// By itself it measured within noise (bench/results/megakernel/ab_h100.md run 27).
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
  return pol;
}
__device__ __forceinline__ void cp_async16_ef(void* smem, const void* gmem, uint64_t pol) {
  uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "l"(pol) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// ---- bulk copies (sm_90: cp.async.bulk + mbarrier) ------------------------------------------------------------
// One instruction moves a whole contiguous run into shared memory and its completion is counted in bytes on an
// mbarrier. Why: per-thread 16-byte cp.async keeps too few bytes in flight per SM (traced on an H100: an INT4
// block share streamed at ~10 GB/s per SM), and issuing thousands of them delays the block's own wake-up.
// It is a plan option for the weight ring (EGT_MK_BULK_COPY, codegen); attention's K/V rows always use cp.async.
// Other architectures (sm_80, sm_89) always use cp.async; MK_BULK says which path a device pass compiles.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(EGT_MK_BULK_COPY)
#define MK_BULK 1
#else
#define MK_BULK 0
#endif
constexpr int MAX_RING = 8;  // ring stages at most (one mbarrier each)

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() {
#if MK_BULK
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// The producer's single arrival, announcing the bytes the phase's copies will deliver.
__device__ __forceinline__ void mbar_expect(uint64_t* bar, unsigned bytes) {
#if MK_BULK
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(smem_u32(bar)),
               "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
#if MK_BULK
  asm volatile(
      "{\n .reg .pred done;\n WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT_%=;\n}\n" ::"r"(smem_u32(bar)), "r"(parity) : "memory");
#endif
}
// Weights are read once per step: evict them first, so activations and the KV cache stay in L2.
__device__ __forceinline__ void bulk_g2s(void* smem, const void* gmem, unsigned bytes, uint64_t* bar) {
#if MK_BULK
  uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(
          smem_u32(smem)), "l"(gmem), "r"(bytes), "r"(smem_u32(bar)), "l"(pol) : "memory");
#endif
}

// L2 look-ahead (sm_90): one instruction asks for a contiguous run of a later op's weights to be brought into L2,
// with no completion to wait for. Why: the ring holds only the first stages of the next op, so the HBM sits idle
// through attention and the grid-wide waits; asked ahead, the later op reads the rest from L2. One lane issues
// runs of at most 64 KB. Older architectures compile it to nothing (l2_ahead_kb then changes no timing).
__device__ __forceinline__ void l2_prefetch(const void* gmem, long long bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const char* p = static_cast<const char*>(gmem);
  for (; bytes > 0; bytes -= 65536, p += 65536)
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"((unsigned)min(bytes, 65536ll)) : "memory");
#endif
}

// ---- inter-block synchronisation through global counters -------------------------------------------------------
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned ld_relaxed(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned atom_add_acq_rel(unsigned* p, unsigned v) {
  unsigned old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;\n" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// ctl[0]: launch epoch (counters are cumulative across launches; targets are (epoch+1)*arrivals)
// ctl[1]: error code (0 = fine); ctl[2]: abort flag set by the first block that times out.
enum { MK_OK = 0, MK_TIMEOUT = 1 };

// One step of a spin that gives up: every 64 steps it stops on the abort flag, or raises it after timeout_ns, so a
// dependency that never arrives (a grid that is not co-resident, a bug) ends the kernel instead of hanging.
// Returns false to stop spinning.
__device__ __forceinline__ bool spin_on(unsigned& spins, unsigned long long& t0, int* ctl,
                                        unsigned long long timeout_ns) {
  if (spins++ == 0) t0 = global_ns();
  if ((spins & 63u) == 0) {
    if (*((volatile int*)ctl + 2)) return false;
    if (global_ns() - t0 > timeout_ns) {
      atomicExch(ctl + 1, MK_TIMEOUT);
      atomicExch(ctl + 2, 1);
      return false;
    }
  }
  return true;
}

// Thread 0 spins until *c >= target (giving up as spin_on does).
__device__ __forceinline__ void block_wait(const unsigned* c, unsigned target, int* ctl, unsigned long long timeout_ns) {
  if (threadIdx.x == 0) {
    // Poll with relaxed loads (cheaper than an acquire per poll), then one acquire load of the counter: it reads
    // the last arrival of the release sequence, so the block's later reads see every arriving block's writes.
    // (An acquire load, not a fence.acq_rel: the fence also waits for this thread's own outstanding accesses.)
    unsigned spins = 0;
    unsigned long long t0 = 0;
    while (ld_relaxed(c) < target && spin_on(spins, t0, ctl, timeout_ns)) {
    }
    (void)ld_acquire(c);
  }
  __syncthreads();
}

// ---- flagged words: a dependency on data without a grid-wide wait ------------------------------------------------
// The producer stores each 16-bit value as one 32-bit word: the value's bits in the low half, a 16-bit flag in the
// high half (the write's step counter, launch epoch x L + layer, which differs by one from the word's previous
// write). A 32-bit store is single-copy atomic, so a reader that sees the expected flag has the value with it: no
// counter, release or acquire, and waiting and loading are one L2 round trip (NCCL's LL protocol, 4-byte form).
// The host zeroes the words whenever it resets the epoch. Used where few blocks wait on many: attention's q/k/v
// (at batch 1, 4 blocks). Where every block waited on a whole activation (gate/up on O, QKV on down), 132 blocks
// spinning on the same lines as they were written was 0.5-1.5% slower than the counter (H200, session 22).
__device__ __forceinline__ void st_flagged(unsigned* p, unsigned short bits, unsigned flag) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"((unsigned)bits | (flag << 16)) : "memory");
}
__device__ __forceinline__ uint4 ld_relaxed_v4(const uint4* p) {
  uint4 v;
  asm volatile("ld.relaxed.gpu.global.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}
// 8 consecutive flagged words at p (32-byte aligned) -> their 8 values packed in 16 bytes, once all carry `flag`
// (or the spin gave up)
__device__ __forceinline__ uint4 ld_flagged8(const unsigned* p, unsigned flag, int* ctl, unsigned long long timeout_ns) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
  const unsigned F = flag << 16;
  uint4 a = ld_relaxed_v4(q), c = ld_relaxed_v4(q + 1);
  unsigned spins = 0;
  unsigned long long t0 = 0;
  while ((((a.x ^ F) | (a.y ^ F) | (a.z ^ F) | (a.w ^ F) | (c.x ^ F) | (c.y ^ F) | (c.z ^ F) | (c.w ^ F)) >> 16) &&
         spin_on(spins, t0, ctl, timeout_ns)) {
    a = ld_relaxed_v4(q);
    c = ld_relaxed_v4(q + 1);
  }
  return make_uint4(__byte_perm(a.x, a.y, 0x5410), __byte_perm(a.z, a.w, 0x5410), __byte_perm(c.x, c.y, 0x5410),
                    __byte_perm(c.z, c.w, 0x5410));
}

// All of this block's global writes become visible before the counter moves: the barrier orders the block's
// writes before thread 0's release, and a gpu-scope release is cumulative over them (no extra fence.sc).
__device__ __forceinline__ void block_arrive(unsigned* c) {
  __syncthreads();
  if (threadIdx.x == 0) red_release(c, 1u);
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sums of x over the 32-column blocks of a staged activation part, which the tensor-core INT4 kinds' late scaling
// needs (w = s q + o: sum x per scale block). A stager calls this with the 16-byte vector it stores: vector c of a
// row (c in 0 .. vp-1 within the part) is staged by the lane whose index is c modulo 4 in its group of 4, and the
// 4 vectors of a block by the 4 lanes of one group, so two shuffles within the group add them and no separate pass
// (and barrier) over the staged part is needed. Every lane of a group calls it, or none.
template <typename T> __device__ __forceinline__ void xsum_block(float* xsum, int b, int c, int vp, const uint4& v) {
  float f[8];
  unpack8<T>(v, f);
  float s = ((f[0] + f[1]) + (f[2] + f[3])) + ((f[4] + f[5]) + (f[6] + f[7]));
  const unsigned group = 0xFu << (threadIdx.x & 28u);
  s += __shfl_xor_sync(group, s, 1);
  s += __shfl_xor_sync(group, s, 2);
  if ((c & 3) == 0) xsum[b * (vp / 4) + (c >> 2)] = s;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Argmax as a total order (larger value wins, then the smaller index), so any reduction order gives the same
// answer: repeated runs stay bit-identical and ties resolve like torch.argmax (first index).
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return (v > bv) || (v == bv && i < bi);
}
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) { v = ov; i = oi; }
  }
}

}  // namespace egt

// Compact code (plan option `compact_code`, codegen defines EGT_MK_COMPACT): loops that run once per op or stage
// (activation staging, copy issue, epilogue set-up) stay rolled, and the INT4 loops take one vector a trip (their
// bodies are long enough to keep the pipes busy). Unrolled, every op's instantiation carried copies of them and the
// kernel outgrew the SM's instruction cache: each op then started on cold code (traced on an H100: 1.5-2 us for a
// first stage that later stages ran in 0.5 us).
#ifdef EGT_MK_COMPACT
#define MK_COLD_LOOP _Pragma("unroll 1")
#define MK_VEC_LOOP _Pragma("unroll 1")
#else
#define MK_COLD_LOOP
#define MK_VEC_LOOP _Pragma("unroll")
#endif

// Trace builds (EGT_MK_TRACE = layer): thread 0 stamps %globaltimer into p.trace[block][i] (needs `p` and `l`).
#ifdef EGT_MK_TRACE
#define MK_STAMP(i)                                                                                    \
  do {                                                                                                 \
    if (p.trace && threadIdx.x == 0 && l == EGT_MK_TRACE) p.trace[blockIdx.x * 32 + (i)] = global_ns(); \
  } while (0)
// MK_PROBE(i): stamps from inside an opcode (no `p` there) into the row that `mk_probe` points at; the kernel points
// it at this block's row while the traced layer's gate/up runs (thread 0 writes and reads it: no barrier needed).
__shared__ unsigned long long* mk_probe;
#define MK_PROBE(i)                                                  \
  do {                                                               \
    if (threadIdx.x == 0 && mk_probe) mk_probe[i] = egt::global_ns(); \
  } while (0)
#else
#define MK_STAMP(i) \
  do {              \
  } while (0)
#define MK_PROBE(i) \
  do {              \
  } while (0)
#endif
