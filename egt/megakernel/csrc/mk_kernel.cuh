// egt MegaKernel: the decode step of a Llama/Qwen2-family model as one persistent kernel.
//
// The generated translation unit defines, before including this file: mk_t, the model and plan constants
// (NB, NBLK, NTHR, H, I, L, NH, NKV, HD, V, EPS, QKV_BIAS, scratch offsets, counter offsets) and the op configs
// (MvQKV, MvO, MvGU, MvDN, MvLM, AttnC). The schedule is fully static: the order of ops below, the tiles each block
// owns (compile-time functions of blockIdx) and the dependency targets. There is no task queue.
#pragma once
#include "mk_common.cuh"
#include "mk_matvec.cuh"

namespace egt {

// ---- the kernel's arguments: 8-byte fields only, so the host packs them without a C compiler ---------------------
struct Params {
  const unsigned long long* table;  // per layer: LT pointers (see TBL_*), then the globals
  mk_t* kc;                         // KV cache [L, NB, NKV, maxlen, HD]
  mk_t* vc;
  long long maxlen;
  int* tokens_in;   // [NB] token of this step
  int* rope_pos;    // [NB] RoPE position of this step
  int* attn_start;  // [NB] first valid cache row (left padding)
  int* slot;        // [1] cache row written this step; rows attn_start..slot are attended
  int* tokens_out;  // [NB] greedy next token
  float* logits;    // [NB, V] or null
  unsigned char* scratch;
  unsigned* counters;
  int* ctl;  // [0] epoch, [1] error, [2] abort
  unsigned long long timeout_ns;
  long long advance;  // nonzero: feed the argmax back (tokens_in, rope_pos+1, slot+1) for the next launch
  double rope_scale;
  unsigned long long* trace;  // null, or [NBLK][32] globaltimer stamps of layer TRACE_LAYER (EGT_MK_TRACE builds)
};

}  // namespace egt

#include "mk_attention.cuh"

namespace egt {

using AttnC = AttnCfg<NH, NKV, HD, ATT_S, ATT_SUB, ATT_ROT, ATT_MINC, ATT_HPI, ATT_QL, ATT_FOLD>;

// Per-layer table (u64 each). Dense ops: row pointers of q/k/v, o, gate/up, down. INT4 ops: TBL_WQ, TBL_WO, TBL_WG
// and TBL_WD hold the op's chunk buffer instead (q/k/v and gate/up packed together), TBL_LG the log2 of each
// INT4 op's scale granularity, one byte each: qkv | o << 8 | gate/up << 16 | down << 24, and TBL_FMT each op's
// format in this layer, bytes in the same order: the kept values per group of 4 (sparse kind) or the code bits
// (INT3 kind). GL_LMLG: the LM head's log2 scale granularity | its code bits << 8 (INT3 kind).
enum { TBL_WQ = 0, TBL_WK, TBL_WV, TBL_BQ, TBL_BK, TBL_BV, TBL_WO, TBL_WG, TBL_WU, TBL_WD, TBL_LN1, TBL_LN2, TBL_LG,
       TBL_FMT, LT = 14 };
enum { GL_EMBED = 0, GL_LM, GL_NORM, GL_INVF, GL_LMLG };

__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    mk_t a = from_f<mk_t>(f[2 * i]), b = from_f<mk_t>(f[2 * i + 1]);
    w[i] = (uint32_t)(*reinterpret_cast<unsigned short*>(&a)) | ((uint32_t)(*reinterpret_cast<unsigned short*>(&b)) << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// ---- row maps (which weight row feeds logical output row n of matrix m) ------------------------------------------
struct RowQKV {
  const uint4 *q, *k, *v;
  __device__ const uint4* operator()(int, int n) const {
    constexpr int NQ = NH * HD, NK = NKV * HD, RV = H / 8;
    return n < NQ ? q + (long long)n * RV : (n < NQ + NK ? k + (long long)(n - NQ) * RV : v + (long long)(n - NQ - NK) * RV);
  }
};
struct RowOne {
  const uint4* w;
  int rv;
  __device__ const uint4* operator()(int, int n) const { return w + (long long)n * rv; }
};
struct RowTwo {
  const uint4 *a, *b;
  int rv;
  __device__ const uint4* operator()(int m, int n) const { return (m == 0 ? a : b) + (long long)n * rv; }
};

// ---- weight sources per op: the codegen picks each op's kind (Q4_* / S4_* / Q3_* flags), the schedule stays the same
__device__ __forceinline__ const uint4* u4p(unsigned long long a) { return reinterpret_cast<const uint4*>(a); }
__device__ __forceinline__ int lg_of(const unsigned long long* lt, int op) { return (int)((lt[TBL_LG] >> (8 * op)) & 0xff); }
__device__ __forceinline__ int fmt_of(const unsigned long long* lt, int op) { return (int)((lt[TBL_FMT] >> (8 * op)) & 0xff); }
__device__ __forceinline__ S4Src s4(const unsigned long long* lt, int tbl, int op) {
  return S4Src{u4p(lt[tbl]), lg_of(lt, op), fmt_of(lt, op)};
}
__device__ __forceinline__ Q3Src q3(const unsigned long long* lt, int tbl, int op) {
  return Q3Src{u4p(lt[tbl]), lg_of(lt, op), fmt_of(lt, op)};
}
__device__ __forceinline__ auto src_qkv(const unsigned long long* lt) {
  if constexpr (S4_QKV) return s4(lt, TBL_WQ, 0);
  else if constexpr (Q3_QKV) return q3(lt, TBL_WQ, 0);
  else if constexpr (Q4_QKV) return Q4Src{u4p(lt[TBL_WQ]), lg_of(lt, 0)};
  else return RowQKV{u4p(lt[TBL_WQ]), u4p(lt[TBL_WK]), u4p(lt[TBL_WV])};
}
__device__ __forceinline__ auto src_o(const unsigned long long* lt) {
  if constexpr (S4_O) return s4(lt, TBL_WO, 1);
  else if constexpr (Q3_O) return q3(lt, TBL_WO, 1);
  else if constexpr (Q4_O) return Q4Src{u4p(lt[TBL_WO]), lg_of(lt, 1)};
  else return RowOne{u4p(lt[TBL_WO]), NH * HD / 8};
}
__device__ __forceinline__ auto src_gu(const unsigned long long* lt) {
  if constexpr (S4_GU) return s4(lt, TBL_WG, 2);
  else if constexpr (Q3_GU) return q3(lt, TBL_WG, 2);
  else if constexpr (Q4_GU) return Q4Src{u4p(lt[TBL_WG]), lg_of(lt, 2)};
  else return RowTwo{u4p(lt[TBL_WG]), u4p(lt[TBL_WU]), H / 8};
}
__device__ __forceinline__ auto src_dn(const unsigned long long* lt) {
  if constexpr (S4_DN) return s4(lt, TBL_WD, 3);
  else if constexpr (Q3_DN) return q3(lt, TBL_WD, 3);
  else if constexpr (Q4_DN) return Q4Src{u4p(lt[TBL_WD]), lg_of(lt, 3)};
  else return RowOne{u4p(lt[TBL_WD]), I / 8};
}
__device__ __forceinline__ auto src_lm(const unsigned long long* gl) {
  if constexpr (Q3_LM) return Q3Src{u4p(gl[GL_LM]), (int)(gl[GL_LMLG] & 0xff), (int)((gl[GL_LMLG] >> 8) & 0xff)};
  else if constexpr (Q4_LM) return Q4Src{u4p(gl[GL_LM]), (int)(gl[GL_LMLG] & 0xff)};
  else return RowOne{u4p(gl[GL_LM]), H / 8};
}

// L2 look-ahead of layer l's op `op` (0 qkv, 1 o, 2 gate/up, 3 down; layer L: the LM head), up to the plan's
// L2_AHEAD_BYTES of this block's share. Called where the op before it is prefilled, so that the HBM streams it
// through attention and the grid-wide waits. One op only: anything further would pass through the L2 behind a
// whole op's stream and be evicted before use. A plan option, measured per shape (ab_h100.md runs 26-30): it
// helps where the ring holds little of an op's share (bf16 llama-3.2-1b, 4%); where the ring already holds most
// of it (INT4 plans) or attention's loads queue behind it, the extra traffic only delays the critical path.
__device__ __forceinline__ void l2_ahead(const unsigned long long* tb, int l, int op) {
  if constexpr (L2_AHEAD_BYTES > 0) {
    const unsigned long long* lt = tb + (long long)l * LT;
    if (l == L) Matvec<MvLM, WLM>::l2_ahead(src_lm(lt), L2_AHEAD_BYTES);
    else if (op == 0) Matvec<MvQKV, WQKV>::l2_ahead(src_qkv(lt), L2_AHEAD_BYTES);
    else if (op == 1) Matvec<MvO, WO>::l2_ahead(src_o(lt), L2_AHEAD_BYTES);
    else if (op == 2) Matvec<MvGU, WGU>::l2_ahead(src_gu(lt), L2_AHEAD_BYTES);
    else Matvec<MvDN, WDN>::l2_ahead(src_dn(lt), L2_AHEAD_BYTES);
  }
}

// EARLY_GU (plan option `early_gateup`): gate/up's first stages stream in during attention, when the ring is
// otherwise idle (O's share is small) and the HBM serves only the K/V rows; else they are issued after O, and their
// bytes still in flight at gate/up's wait delay its wake-up poll and activation loads (ab_h100.md runs 34-35).
// O's stages then take the ring's top, gate/up's first GU_EARLY stages the slots below it. Only blocks without
// attention items do this: cp.async groups complete in order, so an item block's O wait, right after its items,
// would wait for them too. Not with bulk copies: two ops in flight would share the slots' mbarriers.
constexpr int O_BASE_VEC = ((RING_BYTES - Matvec<MvO, WO>::FOOT_BYTES) / 16) & ~7;  // 128-byte aligned
constexpr int GU_FIT = O_BASE_VEC / Matvec<MvGU, WGU>::STAGE_VEC;
constexpr int GU_EARLY = (!EARLY_GU || MK_BULK) ? 0 : (GU_FIT < Matvec<MvGU, WGU>::PF ? GU_FIT : Matvec<MvGU, WGU>::PF);

// ---- activation stagers --------------------------------------------------------------------------------------
// L2 -> shared copy of N 16-byte vectors (`at(v)`: vector v's address), all of a thread's loads in flight before
// its stores (up to 6): a long activation (qwen2.5-1.5b down's 8960 columns: 4.4 vectors a thread) then costs one
// L2 round trip, not two, while the loop itself stays rolled in compact code. Vector v is column vector v % VP of
// batch row v / VP, stored at the row's XR stride. xsum (or null): the part's sums per 32 columns (xsum_block).
template <int N, int VP, class AT>
__device__ __forceinline__ void stage_vecs(uint4* dst, const AT& at, float* xsum = nullptr) {
  constexpr int XRV = XR<VP * 8>;
  constexpr int U = (N + NTHR - 1) / NTHR < 6 ? (N + NTHR - 1) / NTHR : 6;
MK_COLD_LOOP
  for (int v0 = threadIdx.x; v0 < N; v0 += U * NTHR) {
    uint4 r[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (v0 + u * NTHR < N) r[u] = __ldcg(at(v0 + u * NTHR));
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + u * NTHR;
      if (v < N) {
        dst[XRV == VP ? v : (v / VP) * XRV + v % VP] = r[u];
        if (xsum) xsum_block<mk_t>(xsum, v / VP, v % VP, VP, r[u]);
      }
    }
  }
}

// RMSNorm fused into the consumer: every block recomputes the row's rms (K elements, from L2) instead of paying a
// grid-wide barrier for a separate norm task.
template <int K, int KS> struct NormStage {
  const mk_t* x;       // [NB, K] or the embedding table when emb
  const int* tok;      // shared: token per row (emb only)
  const mk_t* w;       // norm weight [K]
  float* rstd;         // shared [NB]
  bool emb;
  float* wsum;         // shared [NTHR / 32]: the warps' sums of squares (batch 1)
  uint4 w0 = {};       // weight vector threadIdx.x, loaded by preload() before the dependency wait
  __device__ const mk_t* row(int b) const { return emb ? x + (long long)tok[b] * K : x + (long long)b * K; }
  // The norm weight does not depend on the wait: load this thread's first vector before it, so that staging
  // costs one trip to L2 (the activations), not two.
  __device__ void preload() {
    if (threadIdx.x < K / 8) w0 = __ldg(reinterpret_cast<const uint4*>(w) + threadIdx.x);
  }
  __device__ uint4 wvec(int c) const { return c == (int)threadIdx.x ? w0 : __ldg(reinterpret_cast<const uint4*>(w) + c); }
  // KS > 1: the rms of each row from L2 before the parts are staged, a warp a row. A lane's loads are all issued
  // before its sum (the order of the sum is unchanged): rolled, each load was one more L2 round trip (at batch 16,
  // 12 in a row, ~6 us of gate/up's staging; H200 trace, bench/results/megakernel/session20).
  __device__ void prepare() const {
    if constexpr (KS == 1) return;  // the fused path computes rstd while staging
    constexpr int VP = K / 8, PER = (VP + 31) / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
MK_COLD_LOOP
    for (int b = warp; b < NB; b += NTHR / 32) {
      const uint4* r = reinterpret_cast<const uint4*>(row(b));
      uint4 u[PER];
#pragma unroll
      for (int i = 0; i < PER; ++i)
        if (lane + 32 * i < VP) u[i] = __ldcg(r + lane + 32 * i);
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        if (lane + 32 * i >= VP) break;
        float f[8];
        unpack8<mk_t>(u[i], f);
#pragma unroll
        for (int e = 0; e < 8; ++e) ss = fmaf(f[e], f[e], ss);
      }
      ss = warp_sum(ss);
      if (lane == 0) rstd[b] = rsqrtf(ss / (float)K + EPS);
    }
    __syncthreads();
  }
  // KS == 1: stage raw x, reduce the squares from shared memory (fixed order), normalise in place; one trip to L2.
  // Batch 1 (one vector a thread at most): the squares are summed in registers, a warp sum, then the NTHR / 32 warp
  // sums in warp order from `wsum`, and each thread normalises its own vector: two block barriers instead of three
  // (four with the 32-column sums' own pass), and no warp summing the row alone.
  __device__ void fused(uint4* xs, float* xsum) const {
    constexpr int VP = K / 8, XRV = XR<K>;
    if constexpr (NB == 1 && VP <= NTHR) {
      const int c = threadIdx.x;
      uint4 raw = {};
      if (c < VP) raw = __ldcg(reinterpret_cast<const uint4*>(row(0)) + c);
      float xf[8];
      unpack8<mk_t>(raw, xf);
      float ss = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) ss = fmaf(xf[e], xf[e], ss);
      ss = warp_sum(ss);
      if ((threadIdx.x & 31) == 0) wsum[threadIdx.x >> 5] = ss;
      __syncthreads();
      float tot = 0.f;
#pragma unroll
      for (int w = 0; w < NTHR / 32; ++w) tot += wsum[w];
      const float r = rsqrtf(tot / (float)K + EPS);
      if (c < VP) {
        float wf[8], o[8];
        unpack8<mk_t>(wvec(c), wf);
#pragma unroll
        for (int e = 0; e < 8; ++e) o[e] = wf[e] * rnd<mk_t>(xf[e] * r);
        const uint4 v = pack8(o);
        xs[c] = v;
        if (xsum) xsum_block<mk_t>(xsum, 0, c, VP, v);
      }
      __syncthreads();
      return;
    }
    stage_vecs<NB * VP, VP>(xs, [&](int v) { return reinterpret_cast<const uint4*>(row(v / VP)) + v % VP; });
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
MK_COLD_LOOP
    for (int b = warp; b < NB; b += NTHR / 32) {
      float ss = 0.f;
MK_COLD_LOOP
      for (int c = lane; c < VP; c += 32) {
        float f[8];
        unpack8<mk_t>(xs[b * XRV + c], f);
#pragma unroll
        for (int e = 0; e < 8; ++e) ss = fmaf(f[e], f[e], ss);
      }
      ss = warp_sum(ss);
      if (lane == 0) rstd[b] = rsqrtf(ss / (float)K + EPS);
    }
    __syncthreads();
MK_COLD_LOOP
    for (int v = threadIdx.x; v < NB * VP; v += NTHR) {
      const int b = v / VP, c = v - b * VP, i = XRV == VP ? v : b * XRV + c;
      float xf[8], wf[8], o[8];
      unpack8<mk_t>(xs[i], xf);
      unpack8<mk_t>(wvec(c), wf);
      const float r = rstd[b];
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = wf[e] * rnd<mk_t>(xf[e] * r);
      const uint4 nv = pack8(o);
      xs[i] = nv;
      if (xsum) xsum_block<mk_t>(xsum, b, c, VP, nv);
    }
    __syncthreads();
  }
  // xsum (or null): the part's sums per 32 columns, written with it (xsum_block)
  __device__ void operator()(uint4* xs, int kp, float* xsum) const {
    if constexpr (KS == 1) {
      fused(xs, xsum);
      return;
    }
    // part kp: raw x staged with every load in flight (one L2 trip, with this thread's norm weight vector issued
    // first), then normalised in place, a thread a column vector over the batch rows, so the weight is loaded once
    // (a thread a vector, as `fused` does, loaded it again for each row: one more L2 trip a row). The fused path
    // keeps a thread a vector: a column a thread there was 1.5% slower at batch 8 (H200, session 20 run 5).
    constexpr int KP = K / KS, VP = KP / 8, XRV = XR<KP>;
    static_assert(VP <= NTHR, "a thread per column vector of a part");
    const int c = threadIdx.x;
    uint4 wv = {};
    if (c < VP) wv = wvec(kp * VP + c);
    stage_vecs<NB * VP, VP>(xs, [&](int v) { return reinterpret_cast<const uint4*>(row(v / VP) + kp * KP) + v % VP; });
    __syncthreads();
    if (c < VP) {
      float wf[8];
      unpack8<mk_t>(wv, wf);
MK_COLD_LOOP
      for (int b = 0; b < NB; ++b) {
        float xf[8], o[8];
        unpack8<mk_t>(xs[b * XRV + c], xf);
        const float r = rstd[b];
#pragma unroll
        for (int e = 0; e < 8; ++e) o[e] = wf[e] * rnd<mk_t>(xf[e] * r);
        const uint4 v = pack8(o);
        xs[b * XRV + c] = v;
        if (xsum) xsum_block<mk_t>(xsum, b, c, VP, v);
      }
    }
    __syncthreads();
  }
};

template <int K, int KS> struct PlainStage {
  const mk_t* x;  // [NB, K]
  __device__ void operator()(uint4* xs, int kp, float* xsum) const {
    constexpr int KP = K / KS, VP = KP / 8;
    stage_vecs<NB * VP, VP>(xs, [&](int v) { return reinterpret_cast<const uint4*>(x + (long long)(v / VP) * K + kp * KP) + v % VP; }, xsum);
    __syncthreads();
  }
};

// ---- epilogues ----------------------------------------------------------------------------------------------------
// QKV's output as flagged words (mk_common.cuh): attention waits on the words it reads, not on a grid-wide counter.
struct EpiQKV {
  unsigned* out;  // [NB][NQKV] flagged words
  unsigned flag;
  const mk_t *bq, *bk, *bv;
  __device__ void operator()(int n, int b, const float (&v)[1]) const {
    constexpr int NQ = NH * HD, NK = NKV * HD, NQKV = NQ + 2 * NK;
    float bias = 0.f;
    if constexpr (QKV_BIAS) bias = to_f(n < NQ ? bq[n] : (n < NQ + NK ? bk[n - NQ] : bv[n - NQ - NK]));
    const mk_t o = from_f<mk_t>(v[0] + bias);
    st_flagged(out + (long long)b * NQKV + n, *reinterpret_cast<const unsigned short*>(&o), flag);
  }
};
// x_out = x_in + round(W x): the residual add of the o and down projections, rounded like the reference.
struct EpiResid {
  const mk_t* xin;
  const int* tok;  // non-null: x_in rows are embedding rows
  mk_t* xout;
  mk_t* res;       // shared: this block's residual rows [NB][n1-n0], loaded by begin() beside the x staging
  int n0, n1;
  __device__ void begin(int a, int z) {
    n0 = a;
    n1 = z;
    const int w = z - a;
MK_COLD_LOOP
    for (int i = threadIdx.x; i < NB * w; i += NTHR) {
      const int b = i / w, n = a + (i - b * w);
      const mk_t* r = tok ? xin + (long long)tok[b] * H : xin + (long long)b * H;
      res[i] = __ldcg(r + n);
    }
  }
  __device__ void operator()(int n, int b, const float (&v)[1]) const {
    xout[(long long)b * H + n] = from_f<mk_t>(to_f(res[b * (n1 - n0) + (n - n0)]) + rnd<mk_t>(v[0]));
  }
};
struct EpiGU {
  mk_t* h;
  __device__ void operator()(int n, int b, const float (&v)[2]) const {
    const float g = rnd<mk_t>(v[0]), u = rnd<mk_t>(v[1]);
    const float s = rnd<mk_t>(g / (1.f + expf(-g)));
    h[(long long)b * I + n] = from_f<mk_t>(s * u);
  }
};
struct EpiLM {
  float* logits;
  float bv[NB];
  int bi[NB];
  __device__ void operator()(int n, int b, const float (&v)[1]) {
    const float x = rnd<mk_t>(v[0]);
    if (logits) logits[(long long)b * V + n] = x;
    if (better(x, n, bv[b], bi[b])) {
      bv[b] = x;
      bi[b] = n;
    }
  }
};

}  // namespace egt

using namespace egt;

extern "C" __global__ void __launch_bounds__(NTHR, 1) egt_megakernel(const Params p) {
  // The ring starts on a 128-byte boundary, fixed at compile time. Without it the base followed the static
  // variables' size, and a ring 16-112 bytes off that boundary slowed the step by 2-20% (H100; a run-time
  // adjustment of the pointer cost 2-4% by itself: bench/results/megakernel/ab_h100.md runs 14-20).
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) uint64_t s_bar[MAX_RING];
  Ring ring{reinterpret_cast<uint4*>(smem), s_bar, 0u};
  Ring ring_top{reinterpret_cast<uint4*>(smem) + O_BASE_VEC, s_bar, 0u};
  Ring& ring_o = GU_EARLY > 0 ? ring_top : ring;  // O's stages (see GU_EARLY)
  unsigned char* page = smem + RING_BYTES;
  __shared__ int s_tok[NB];
  __shared__ float s_rstd[NB];
  __shared__ float s_bv[NTHR / 32][NB];  // the argmax's warp maxima; before it, a batch-1 RMSNorm's warp sums
  __shared__ int s_bi[NTHR / 32][NB];
  __shared__ mk_t s_res[RES_ROWS * NB];
  __shared__ unsigned s_e1;
  __shared__ int s_last;
  if (threadIdx.x == 0) {
#ifdef EGT_MK_TRACE
    mk_probe = nullptr;
#endif
    s_e1 = (unsigned)__ldcg(p.ctl) + 1u;
    for (int i = 0; i < MAX_RING; ++i) mbar_init(s_bar + i, 1);  // one producer arrival (with its bytes) a fill
    mbar_init_fence();
  }
  if (threadIdx.x < NB) s_tok[threadIdx.x] = __ldcg(p.tokens_in + threadIdx.x);
  __syncthreads();
  const unsigned E1 = s_e1;
  const unsigned long long* tb = p.table;
  const unsigned long long* gl = tb + L * LT;
  const mk_t* embed = reinterpret_cast<const mk_t*>(gl[GL_EMBED]);
  const float* inv_freq = reinterpret_cast<const float*>(gl[GL_INVF]);
  mk_t* xA = reinterpret_cast<mk_t*>(p.scratch + SCR_XA);
  mk_t* xM = reinterpret_cast<mk_t*>(p.scratch + SCR_XM);
  unsigned* qkv = reinterpret_cast<unsigned*>(p.scratch + SCR_QKV);
  mk_t* att = reinterpret_cast<mk_t*>(p.scratch + SCR_ATT);
  mk_t* hbuf = reinterpret_cast<mk_t*>(p.scratch + SCR_H);
  float* part_o = reinterpret_cast<float*>(p.scratch + SCR_PO);
  float* part_ml = reinterpret_cast<float*>(p.scratch + SCR_PML);
  float* best_v = reinterpret_cast<float*>(p.scratch + SCR_BV);
  int* best_i = reinterpret_cast<int*>(p.scratch + SCR_BI);
  unsigned* c_att = p.counters + CNT_ATT;
  unsigned* c_o = p.counters + CNT_O;
  unsigned* c_gu = p.counters + CNT_GU;
  unsigned* c_dn = p.counters + CNT_DN;
  unsigned* c_lm = p.counters + CNT_LM;
  unsigned* c_arr = p.counters + CNT_ARR;
  const unsigned ALL = E1 * NBLK;
  const unsigned fbase = E1 * (unsigned)L;  // the flag of layer l's QKV words: (fbase + l) & 0xffff
  auto T = [](unsigned long long a) { return reinterpret_cast<const mk_t*>(a); };

  {
    const unsigned long long* lt = tb;
    Matvec<MvQKV, WQKV>::prefill(ring, src_qkv(lt));
    l2_ahead(tb, 0, 1);
  }
#pragma unroll 1
  for (int l = 0; l < L; ++l) {
    const unsigned long long* lt = tb + (long long)l * LT;
    // RMSNorm -> QKV (bias)
    MK_STAMP(0);
    {
      NormStage<H, MvQKV::KS> st{l == 0 ? embed : xA, s_tok, T(lt[TBL_LN1]), s_rstd, l == 0, &s_bv[0][0]};
      st.preload();
      if (l > 0) block_wait(c_dn + l - 1, ALL, p.ctl, p.timeout_ns);
      MK_STAMP(1);
      st.prepare();
      EpiQKV e{qkv, (fbase + l) & 0xffffu, T(lt[TBL_BQ]), T(lt[TBL_BK]), T(lt[TBL_BV])};
      Matvec<MvQKV, WQKV>::run(ring, page, src_qkv(lt), st, e);
    }
    MK_STAMP(2);
    // RoPE + KV append + split attention (+ combine); the o projection's weights start streaming from inside
    MK_STAMP(3);
    bool gu_early = false;
    {
      auto pre_o = [&](bool idle) {
        Matvec<MvO, WO>::prefill(ring_o, src_o(lt));
        if (GU_EARLY > 0 && idle) {
          Matvec<MvGU, WGU>::prefill(ring, src_gu(lt), 0, GU_EARLY);
          gu_early = true;
        }
        l2_ahead(tb, l, 2);
      };
      Attention<AttnC>::run(l, page, p, qkv, (fbase + l) & 0xffffu, att, part_o, part_ml,
                            c_arr + (long long)l * Attention<AttnC>::PAIRS, c_att + l, E1, inv_freq, p.ctl, pre_o);
    }
    MK_STAMP(4);
    // ATT_FOLD: the O staging combines the split partials (its split counts are read here, before the wait)
    const Attention<AttnC>::OStage<MvO::KS> ost(att, part_o, part_ml, p);
    block_wait(c_att + l, E1 * Attention<AttnC>::DONE, p.ctl, p.timeout_ns);
    MK_STAMP(5);
    // O projection + residual
    {
      EpiResid e{l == 0 ? embed : xA, l == 0 ? s_tok : nullptr, xM, s_res, 0, 0};
      if constexpr (AttnC::FOLD) {
        Matvec<MvO, WO>::run(ring_o, page, src_o(lt), ost, e);
      } else {
        PlainStage<NH * HD, MvO::KS> st{att};
        Matvec<MvO, WO>::run(ring_o, page, src_o(lt), st, e);
      }
    }
    MK_STAMP(6);
    block_arrive(c_o + l);
    Matvec<MvGU, WGU>::prefill(ring, src_gu(lt), gu_early ? GU_EARLY : 0);
    l2_ahead(tb, l, 3);
    {
      // RMSNorm -> gate/up -> SiLU * up
      NormStage<H, MvGU::KS> st{xM, s_tok, T(lt[TBL_LN2]), s_rstd, false, &s_bv[0][0]};
      st.preload();
      block_wait(c_o + l, ALL, p.ctl, p.timeout_ns);
      MK_STAMP(7);
#ifdef EGT_MK_TRACE
      if (threadIdx.x == 0) mk_probe = (p.trace && l == EGT_MK_TRACE) ? p.trace + blockIdx.x * 32 : nullptr;
#endif
      st.prepare();
      EpiGU e{hbuf};
      Matvec<MvGU, WGU>::run(ring, page, src_gu(lt), st, e);
    }
    MK_STAMP(8);
#ifdef EGT_MK_TRACE
    if (threadIdx.x == 0) mk_probe = nullptr;
#endif
    block_arrive(c_gu + l);
    Matvec<MvDN, WDN>::prefill(ring, src_dn(lt));
    l2_ahead(tb, l + 1, 0);
    block_wait(c_gu + l, ALL, p.ctl, p.timeout_ns);
    MK_STAMP(9);
    // down projection + residual (its probes land 5 slots after gate/up's)
#ifdef EGT_MK_TRACE
    if (threadIdx.x == 0) mk_probe = (p.trace && l == EGT_MK_TRACE) ? p.trace + blockIdx.x * 32 + 5 : nullptr;
#endif
    {
      PlainStage<I, MvDN::KS> st{hbuf};
      EpiResid e{xM, nullptr, xA, s_res, 0, 0};
      Matvec<MvDN, WDN>::run(ring, page, src_dn(lt), st, e);
    }
    MK_STAMP(10);
#ifdef EGT_MK_TRACE
    if (threadIdx.x == 0) mk_probe = nullptr;
#endif
    block_arrive(c_dn + l);
    if (l + 1 < L) {
      const unsigned long long* nt = lt + LT;
      Matvec<MvQKV, WQKV>::prefill(ring, src_qkv(nt));
      l2_ahead(tb, l + 1, 1);
    } else {
      Matvec<MvLM, WLM>::prefill(ring, src_lm(gl));
    }
  }
  // final RMSNorm -> LM head -> argmax
  EpiLM e{p.logits};
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    e.bv[b] = -INFINITY;
    e.bi[b] = 0x7fffffff;
  }
  {
    NormStage<H, MvLM::KS> st{xA, s_tok, T(gl[GL_NORM]), s_rstd, false, &s_bv[0][0]};
    st.preload();
    block_wait(c_dn + L - 1, ALL, p.ctl, p.timeout_ns);
    st.prepare();
    Matvec<MvLM, WLM>::run(ring, page, src_lm(gl), st, e);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    float v = e.bv[b];
    int i = e.bi[b];
    warp_argmax(v, i);
    if (lane == 0) {
      s_bv[warp][b] = v;
      s_bi[warp][b] = i;
    }
  }
  __syncthreads();
  if (threadIdx.x < NB) {
    const int b = threadIdx.x;
    float v = s_bv[0][b];
    int i = s_bi[0][b];
    for (int w = 1; w < NTHR / 32; ++w)
      if (better(s_bv[w][b], s_bi[w][b], v, i)) { v = s_bv[w][b]; i = s_bi[w][b]; }
    best_v[blockIdx.x * NB + b] = v;
    best_i[blockIdx.x * NB + b] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    s_last = (atom_add_acq_rel(c_lm, 1u) == ALL - 1);
  }
  __syncthreads();
  if (s_last) {
    if (threadIdx.x < NB) {
      const int b = threadIdx.x;
      float v = -INFINITY;
      int i = 0x7fffffff;
      for (int k = 0; k < NBLK; ++k) {
        const float ov = __ldcg(best_v + k * NB + b);
        const int oi = __ldcg(best_i + k * NB + b);
        if (better(ov, oi, v, i)) { v = ov; i = oi; }
      }
      if (i == 0x7fffffff) i = 0;  // every logit NaN: report token 0 rather than an out-of-range id
      p.tokens_out[b] = i;
      if (p.advance) {
        p.tokens_in[b] = i;
        p.rope_pos[b] += 1;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (p.advance) *p.slot += 1;
      __threadfence();
      atomicExch(p.ctl, (int)E1);  // the next launch's epoch
    }
  }
}
