// egt MegaKernel opcode: decode attention over the KV cache, split across blocks, with RoPE and the KV append.
//
// Contract:
// - Work items are (batch row b, kv head g, head slice h, split s). A head slice is HPI of the G query heads that
//   share kv head g (a plan option: more blocks on a short context, each slice reading the group's K/V rows;
//   measured slower on an H100, so plans default to one slice, HPI = G).
//   Split s covers an equal share of the row's valid cache rows [attn_start[b], slot]. The number of splits S is
//   fixed by the plan; the share is computed from the run-time context length, so the schedule is static while
//   the context grows.
// - An item loads its first sub-block of cached K/V rows (cp.async or bulk) *before* waiting for the QKV projection:
//   past keys and values do not depend on this step (Ada-MK's "earlier KV loads"). It then waits for its q/k/v
//   rows themselves: QKV writes them as flagged words (mk_common.cuh) and the item spins on the words it reads, with
//   no grid-wide wait (at batch 1, 4 item blocks wait on 132 QKV blocks: 1.01-1.03x faster steps than the
//   counter, H200, bench/results/megakernel/session22). What the items write (output, partials) the previous
//   layer's O staging read; the words' producers are past the grid-wide wait on down, which every block reaches
//   after that staging. The words are relaxed, so this order rests on each step depending on the value read before
//   it (as NCCL's LL protocol does), not on a release/acquire pair.
// - Every item that covers the new row `slot` rotates the new key and uses key and value from shared memory (the
//   cache row is never read back in the same launch); the one of head slice 0 writes them into the cache.
// - With S > 1, the last item of (b, g, h) to finish (arrival counter) combines the S partial softmax states in
//   fixed split order, so the combine is deterministic. FOLD (a plan option) drops that step: every item arrives
//   on att_done as soon as its partial (m, l, o) is written, and each O-projection block combines the partials of
//   the columns it stages (`OStage`, same split order and arithmetic, so the same bf16 input), which takes one
//   atomic, one wait and two dependent L2 round trips off the critical path. Measured faster on every shape
//   (H100/H200, bench/results/megakernel/ab_h100.md runs 4-6); the search's default.
// - q.k: with QL = 1 (what plans use) on tensor cores where 4-8 query heads share a kv head (QK_TC), else QJ threads
//   share a cache row, each G / QJ of the item's heads. QL > 1 (a plan option) has QL lanes share a cache row, each
//   a 1/QL slice of the head dimension, summed with a butterfly of shuffles; measured equal or slower (run 4).
// - Numerics follow the torch reference: q and k are rotated with bf16/fp16-rounded cos/sin and rounded after
//   each product and the sum; softmax and the weighted sum of V run in float32.
#pragma once
#include "mk_common.cuh"
#include <type_traits>

namespace egt {

template <int NH_, int NKV_, int HD_, int S_, int SUB_, int ROT_, int MINC_, int HPI_, int QL_ = 1, int FOLD_ = 0>
struct AttnCfg {
  static constexpr int NH = NH_, NKV = NKV_, HD = HD_, S = S_, SUB = SUB_, ROT = ROT_, MINC = MINC_, HPI = HPI_;
  static constexpr int QL = QL_;        // lanes per cache row in q.k
  static constexpr bool FOLD = FOLD_;   // the split combine runs in the O projection's staging
};

template <class C> struct Attention {
  static constexpr int GQ = C::NH / C::NKV;      // query heads per kv head
  static constexpr int G = C::HPI;              // query heads per item (one head slice)
  static constexpr int HS = GQ / G;             // head slices per kv head
  static constexpr int PAIRS = NB * C::NKV * HS;  // (b, g, h): one attention output each, combined over splits
  static constexpr int HD = C::HD;
  static constexpr int HP = HD / 2;             // dimension pairs handled by one thread in P.V
  static constexpr int TG = NTHR / HP;          // position groups in P.V
  static constexpr int KROW = HD + 8;           // padded row (16 bytes) keeps per-thread row reads conflict-free
  static constexpr int ITEMS = PAIRS * C::S;
  // q.k threads a cache row, each G / QJ heads: the largest divisor of G that takes a full sub-block of rows in one
  // pass of the block. More threads a row (up to two passes) was slower on smollm2 and no faster elsewhere: each
  // thread converts the row's K again (H100, bench/results/megakernel/ab_h100.md run 48).
  static constexpr int qk_groups() {
    int j = 1;
    for (int d = 1; d <= G; ++d)
      if (G % d == 0 && d * C::SUB <= NTHR) j = d;
    return j;
  }
  static constexpr int QJ = qk_groups(), GJ = G / QJ;
  // q.k on tensor cores (QL = 1): one m16n8k16 MMA per 8 cache rows and 16 dimensions, A = the item's query heads
  // (rows 0..G-1 of 16, T-rounded by the rotation, so exact in T; the 1/sqrt(HD) scale goes on the scores),
  // B = the cache rows straight from the page with ldmatrix. Not the bits of the CUDA-core loop (MMA summation).
  // From 4 heads a KV head: with 3 (smollm2) 13 of the 16 A rows are zero and the step was 1.8-2.3% slower, with
  // 4-7 0-1.6% faster (H100, bench/results/megakernel/ab_h100.md run 51).
  static constexpr bool QK_TC = C::QL == 1 && G >= 4 && G <= 8 && HD % 32 == 0;
  __device__ static __forceinline__ uint32_t pack_t2(float a, float b) {
    const mk_t lo = from_f<mk_t>(a), hi = from_f<mk_t>(b);
    return (uint32_t)(*reinterpret_cast<const unsigned short*>(&lo)) |
           ((uint32_t)(*reinterpret_cast<const unsigned short*>(&hi)) << 16);
  }
  __device__ static __forceinline__ void mma_t(float (&c)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same<mk_t, __half>::value)
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                   "{%0,%1,%2,%3};\n"
                   : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                   : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
    else
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                   "{%0,%1,%2,%3};\n"
                   : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                   : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
  }
  // scores of the sub-block's cs rows (t = sb + q; the new row `slot` from kn) for the item's G heads, into sc
  __device__ static __forceinline__ void qk_tc(const float* qs, const mk_t* ks, const mk_t* kn, float* sc, int sb,
                                               int cs, int slot, float qscale) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    constexpr int KSTEPS = HD / 16;
    uint32_t qa[KSTEPS][2];  // A registers a0 (row g, k 2t..2t+1) and a2 (row g, k 2t+8..); rows g + 8 are zero
#pragma unroll
    for (int k = 0; k < KSTEPS; ++k) {
      qa[k][0] = qa[k][1] = 0u;
      if (g < G) {
        const float2 lo = *reinterpret_cast<const float2*>(qs + g * HD + k * 16 + 2 * t);
        const float2 hi = *reinterpret_cast<const float2*>(qs + g * HD + k * 16 + 8 + 2 * t);
        qa[k][0] = pack_t2(lo.x, lo.y);
        qa[k][1] = pack_t2(hi.x, hi.y);
      }
    }
    const int ntiles = (cs + 7) / 8;
    for (int nt = warp; nt < ntiles; nt += NTHR / 32) {
      const int n0 = nt * 8;
      // ldmatrix x4: lane L gives row n0 + (L & 7) (past cs: the last row; its scores are dropped) at dimension
      // chunk (L >> 3) of a 32-dimension window: registers 0, 1 = k-step 2i, registers 2, 3 = k-step 2i + 1
      const int rr = min(n0 + (lane & 7), cs - 1);
      const mk_t* rowp = (sb + rr == slot ? kn : ks + rr * KROW) + (lane >> 3) * 8;
      float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int kk = 0; kk < HD; kk += 32) {
        uint32_t b[4];
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                     : "r"(smem_u32(rowp + kk)));
        mma_t(c, qa[kk / 16][0], qa[kk / 16][1], b[0], b[1]);
        mma_t(c, qa[kk / 16 + 1][0], qa[kk / 16 + 1][1], b[2], b[3]);
      }
      const int q0 = n0 + 2 * t;  // C fragment: c0, c1 = (head g, rows q0, q0 + 1)
      if (g < G) {
        if (q0 < cs) sc[g * C::SUB + q0] = c[0] * qscale;
        if (q0 + 1 < cs) sc[g * C::SUB + q0 + 1] = c[1] * qscale;
      }
    }
  }
  static constexpr int DONE = C::FOLD ? ITEMS : PAIRS;  // att_done arrivals per launch: items, or combined pairs
  static constexpr int NQKV = (C::NH + 2 * C::NKV) * HD;
  // shared-memory layout of the attention page (aliases the matvec activation page)
  static constexpr int OFF_Q = 0;                                  // float [G][HD]
  static constexpr int OFF_KN = OFF_Q + 4 * G * HD;                // T [HD] (in a float [HD] slot)
  static constexpr int OFF_VN = OFF_KN + 4 * HD;                   // T [HD] (in a float [HD] slot)
  static constexpr int OFF_SC = OFF_VN + 4 * HD;                   // float [G][SUB]
  static constexpr int OFF_ST = OFF_SC + 4 * G * C::SUB;           // float m[G], l[G], alpha[G], int flag
  static constexpr int OFF_RED = OFF_ST + ((4 * (3 * G + 1) + 15) / 16) * 16;  // float [TG][G][HD]
  static constexpr int OFF_K = OFF_RED + 4 * TG * G * HD;          // T [SUB][KROW]
  static constexpr int OFF_V = OFF_K + 2 * C::SUB * KROW;          // T [SUB][KROW]
  static constexpr int REGION_BYTES = OFF_V + 2 * C::SUB * KROW;
  static_assert(NTHR % HP == 0 && C::NH % C::NKV == 0 && GQ % G == 0 && HD % 8 == 0 && G <= NTHR / 32,
                "attention layout");
  static_assert(C::SUB <= NTHR, "one thread per position in a sub-block");
  static_assert(C::QL >= 1 && C::QL <= 32 && (C::QL & (C::QL - 1)) == 0 && (HD / 8) % C::QL == 0,
                "q.k lanes: a power of two dividing the row's 16-byte chunks");
  static_assert(4 * TG * G * HD >= 2 * (G + 2) * HD, "the reduction area holds the raw q/k/v rows");

  // K/V rows [t0, t0 + cnt) but the new row `slot` into the page: every thread 16 bytes with cp.async, one group,
  // waited on once by wait_kv. Always cp.async, also where the weights stream with bulk copies: a bulk copy per
  // 128-256-byte row queued behind the TMA unit and delayed the attention blocks by microseconds (traced, H100).
  __device__ static __forceinline__ void issue_kv(unsigned char* pg, const mk_t* kc, const mk_t* vc, int t0, int cnt,
                                                  int slot) {
    mk_t* ks = reinterpret_cast<mk_t*>(pg + OFF_K);
    mk_t* vs = reinterpret_cast<mk_t*>(pg + OFF_V);
    constexpr int VR = HD / 8;
MK_COLD_LOOP
    for (int v = threadIdx.x; v < cnt * VR; v += NTHR) {
      const int q = v / VR, c = v - q * VR;
      const int t = t0 + q;
      if (t != slot) {
        cp_async16(ks + q * KROW + c * 8, kc + (long long)t * HD + c * 8);
        cp_async16(vs + q * KROW + c * 8, vc + (long long)t * HD + c * 8);
      }
    }
    cp_commit();
  }
  // The K/V group is the newest cp.async group in flight: no cp.async weight prefill is issued between issue and wait.
  __device__ static __forceinline__ void wait_kv() { cp_wait<0>(); }

  // Rotate element d of a head whose raw values (in shared memory) start at `src` (HF rotate-half convention).
  __device__ static __forceinline__ float rope(const mk_t* src, int d, float pos, const float* inv_freq, float scale) {
    const int i = d % HP;
    const float theta = pos * __ldg(inv_freq + i);
    float sn, cs;
    sincosf(theta, &sn, &cs);  // one argument reduction for both (the same results as sinf and cosf, less code)
    const float c = rnd<mk_t>(cs * scale), s = rnd<mk_t>(sn * scale);
    const float x = to_f(src[d]);
    const float y = (d < HP) ? -to_f(src[d + HP]) : to_f(src[d - HP]);
    return rnd<mk_t>(rnd<mk_t>(x * c) + rnd<mk_t>(y * s));
  }

  // The last split of (b, g, h) to finish merges the `se` partial softmax states in split order (deterministic).
  // pr: the (b, g, h) pair; its G heads are query heads h0 .. h0 + G - 1.
  __device__ static void combine(int b, int pr, int h0, int se, const float* part_o, const float* part_ml,
                                 mk_t* attn_out) {
    const long long cbase = (long long)pr * C::S * G;
MK_COLD_LOOP
    for (int i = threadIdx.x; i < G * HD; i += NTHR) {
      const int gh = i / HD, d = i - gh * HD;
      float M = -INFINITY;
      for (int j = 0; j < se; ++j) M = fmaxf(M, __ldcg(part_ml + (cbase + j * G + gh) * 2));
      float L = 0.f, O = 0.f;
      for (int j = 0; j < se; ++j) {
        const float m = __ldcg(part_ml + (cbase + j * G + gh) * 2);
        const float w = (m == -INFINITY) ? 0.f : expf(m - M);
        L += w * __ldcg(part_ml + (cbase + j * G + gh) * 2 + 1);
        O += w * __ldcg(part_o + (cbase + j * G + gh) * HD + d);
      }
      attn_out[(long long)b * C::NH * HD + (h0 + gh) * HD + d] = from_f<mk_t>(O / L);
    }
  }

  // The O projection's activation stager (Matvec's stage(xs, kp)): part kp of the K = NH * HD attention output of
  // every batch row. FOLD: rows whose context ran in one split read the written output; the others combine their
  // se partial states here, in split order with the arithmetic of combine(), so each O block gets the same bf16
  // input the last-arriver path would have written. Without FOLD it only copies the written output. The split
  // count of each row is read at construction, before the caller waits on att_done, to keep that load off the
  // critical path.
  template <int KS> struct OStage {
    static constexpr int K = C::NH * HD, KP = K / KS, VP = KP / 8;
    // up to RJ splits: all loads in registers at once (10 floats a split; 2 under the 128-register cap of 512
    // threads, where 4 spilled)
    static constexpr int RJ = NTHR > 256 ? 2 : 4;
    // split j's share of the combine, the arithmetic of combine() (so fold on and off give the same bits)
    __device__ static __forceinline__ void accumulate(float2 ml, float4 oa, float4 ob, float M, float& L,
                                                      float (&O)[8]) {
      const float w = (ml.x == -INFINITY) ? 0.f : expf(ml.x - M);
      L += w * ml.y;
      O[0] += w * oa.x;
      O[1] += w * oa.y;
      O[2] += w * oa.z;
      O[3] += w * oa.w;
      O[4] += w * ob.x;
      O[5] += w * ob.y;
      O[6] += w * ob.z;
      O[7] += w * ob.w;
    }
    static_assert(K % KS == 0 && KP % 8 == 0 && HD % 8 == 0, "O staging parts");
    const mk_t* att;
    const float* part_o;
    const float* part_ml;
    int se[NB];
    __device__ OStage(const mk_t* a, const float* po, const float* pml, const Params& p)
        : att(a), part_o(po), part_ml(pml) {
#pragma unroll
      for (int b = 0; b < NB; ++b) se[b] = 1;
      if constexpr (C::FOLD && C::S > 1) {
        const int len = __ldcg(p.slot) + 1;
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          const int n = len - __ldcg(p.attn_start + b);
          se[b] = max(1, min(C::S, (n + C::MINC - 1) / C::MINC));
        }
      }
    }
    // xsum (or null): the part's sums per 32 columns, written with it (xsum_block)
    __device__ void operator()(uint4* xs, int kp, float* xsum) const {
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        if (se[b] == 1) {
          const uint4* src = reinterpret_cast<const uint4*>(att + (long long)b * K + kp * KP);
MK_COLD_LOOP
          for (int c = threadIdx.x; c < VP; c += NTHR) {
            const uint4 v = __ldcg(src + c);
            xs[b * XR<KP> + c] = v;
            if (xsum) xsum_block<mk_t>(xsum, b, c, VP, v);
          }
          continue;
        }
        const int nse = se[b];
MK_COLD_LOOP
        for (int c = threadIdx.x; c < VP; c += NTHR) {
          const int e0 = kp * KP + c * 8;  // first of 8 columns: query head h, dimensions d0 .. d0 + 7
          const int h = e0 / HD, d0 = e0 - h * HD;
          const int g = h / GQ, r = h - g * GQ, hsl = r / G, gh = r - hsl * G;
          const long long cb = (((long long)b * C::NKV + g) * HS + hsl) * C::S * G + gh;  // + j * G: split j
          float M = -INFINITY, L = 0.f, O[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) O[e] = 0.f;
          if (nse <= RJ) {
            // every load of the combine issued at once: one L2 round trip (this runs on the critical path)
            float2 ml[RJ];
            float4 oa[RJ], ob[RJ];
#pragma unroll
            for (int j = 0; j < RJ; ++j) {
              if (j < nse) {
                ml[j] = __ldcg(reinterpret_cast<const float2*>(part_ml + (cb + j * G) * 2));
                const float4* po = reinterpret_cast<const float4*>(part_o + (cb + j * G) * HD + d0);
                oa[j] = __ldcg(po);
                ob[j] = __ldcg(po + 1);
              }
            }
#pragma unroll
            for (int j = 0; j < RJ; ++j)
              if (j < nse) M = fmaxf(M, ml[j].x);
#pragma unroll
            for (int j = 0; j < RJ; ++j)
              if (j < nse) accumulate(ml[j], oa[j], ob[j], M, L, O);
          } else {
#pragma unroll 8
            for (int j = 0; j < nse; ++j) M = fmaxf(M, __ldcg(part_ml + (cb + j * G) * 2));
#pragma unroll 4
            for (int j = 0; j < nse; ++j) {
              const float2 ml = __ldcg(reinterpret_cast<const float2*>(part_ml + (cb + j * G) * 2));
              const float4* po = reinterpret_cast<const float4*>(part_o + (cb + j * G) * HD + d0);
              accumulate(ml, __ldcg(po), __ldcg(po + 1), M, L, O);
            }
          }
          uint32_t wd[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const mk_t lo = from_f<mk_t>(O[2 * i] / L), hi = from_f<mk_t>(O[2 * i + 1] / L);
            wd[i] = (uint32_t)(*reinterpret_cast<const unsigned short*>(&lo)) |
                    ((uint32_t)(*reinterpret_cast<const unsigned short*>(&hi)) << 16);
          }
          const uint4 v = make_uint4(wd[0], wd[1], wd[2], wd[3]);
          xs[b * XR<KP> + c] = v;
          if (xsum) xsum_block<mk_t>(xsum, b, c, VP, v);
        }
      }
      __syncthreads();
    }
  };

  // Without FOLD, every split of (b, g, h) arrives on arrive[pr] (S a launch); the last to arrive merges the se
  // partials in use and counts the pair done (with se == 1 the single item wrote its output itself). wrote: this
  // split stored partials, which the fence publishes before its arrival.
  __device__ static void arrive_combine(int b, int pr, int h0, int se, bool wrote, unsigned* arrive, unsigned E1,
                                        int* flag, const float* part_o, const float* part_ml, mk_t* attn_out,
                                        unsigned* att_done) {
    __syncthreads();
    if (threadIdx.x == 0) {
      if (wrote) __threadfence();
      const unsigned old = atom_add_acq_rel(arrive + pr, 1u);
      *flag = (se > 1 && old == E1 * C::S - 1);
    }
    __syncthreads();
    if (*flag) {
      combine(b, pr, h0, se, part_o, part_ml, attn_out);
      block_arrive(att_done);
    }
  }

  // Runs this block's items for layer l. Returns after the block's last item; the caller waits on att_done.
  // pre(idle): the next ops' weight prefill, issued once this block's items are done (at once, idle = true, by a
  // block without items), so no prefill group is ever committed between an item's K/V issue and its wait, which
  // drains every group. Issuing it before the QKV wait measured no faster (bench/results/megakernel/ab_h100.md,
  // run 10).
  // qkv: QKV's output as flagged words [NB][NQKV] carrying qflag.
  template <class PRE>
  __device__ static void run(int l, unsigned char* pg, const Params& p, const unsigned* qkv, unsigned qflag,
                             mk_t* attn_out, float* part_o, float* part_ml, unsigned* arrive, unsigned* att_done,
                             unsigned E1, const float* inv_freq, int* ctl, const PRE& pre) {
    int first = (int)((blockIdx.x + NBLK - (C::ROT % NBLK)) % NBLK);
    if (first >= ITEMS) {
      pre(true);
      return;
    }
    bool first_wait = true;
    float* qs = reinterpret_cast<float*>(pg + OFF_Q);
    // the new row's rotated key and value, already rounded to T: the q.k and P.V loops read them like a cache row
    mk_t* kn = reinterpret_cast<mk_t*>(pg + OFF_KN);
    mk_t* vn = reinterpret_cast<mk_t*>(pg + OFF_VN);
    float* sc = reinterpret_cast<float*>(pg + OFF_SC);
    float* mrun = reinterpret_cast<float*>(pg + OFF_ST);
    float* lrun = mrun + G;
    float* alpha = lrun + G;
    int* flag = reinterpret_cast<int*>(alpha + G);
    float* red = reinterpret_cast<float*>(pg + OFF_RED);
    const mk_t* ks = reinterpret_cast<const mk_t*>(pg + OFF_K);
    const mk_t* vs = reinterpret_cast<const mk_t*>(pg + OFF_V);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int slot = __ldcg(p.slot);
    const float qscale = rsqrtf((float)HD);
#pragma unroll 1
    for (int item = first; item < ITEMS; item += NBLK) {
      const int pr = item / C::S;  // (b, g, h) pair
      const int b = pr / (C::NKV * HS);
      const int g = (pr / HS) % C::NKV;
      const int hsl = pr % HS;
      const int h0 = g * GQ + hsl * G;  // first query head of the item
      const int s = item % C::S;
      const int len = slot + 1;
      const int st = __ldcg(p.attn_start + b);
      const int n = len - st;
      // Splits in use at this context: short contexts run in one item per (b, g, h) and skip the combine.
      const int se = max(1, min(C::S, (n + C::MINC - 1) / C::MINC));
      const int chunk = (n + se - 1) / se;
      const int t0 = st + s * chunk;
      const int t1 = min(len, t0 + chunk);
      const int cnt = max(0, t1 - t0);
      if (s >= se) {  // idle split: only keeps the arrival count of (b, g, h) consistent; may run the combine
        if constexpr (C::FOLD) {
          block_arrive(att_done);  // every item counts once; the O staging reads only the se splits in use
        } else if constexpr (C::S > 1) {
          arrive_combine(b, pr, h0, se, false, arrive, E1, flag, part_o, part_ml, attn_out, att_done);
          __syncthreads();
        }
        continue;
      }
      const long long base = ((((long long)l * NB + b) * C::NKV + g) * p.maxlen) * HD;
      mk_t* kc = p.kc + base;
      mk_t* vc = p.vc + base;
      issue_kv(pg, kc, vc, t0, min(cnt, C::SUB), slot);
      const float pos = (float)__ldcg(p.rope_pos + b);
      const unsigned* qrow = qkv + (long long)b * NQKV;
      const bool has_new = (slot >= t0 && slot < t1);
      // The item's q heads (and, for the item holding the new row, k and v) come to shared memory 8 values a
      // thread, every thread spinning until its words carry this layer's flag: the wait for QKV and the load are one
      // L2 round trip, and the rotation below reads shared memory.
      const int rows = has_new ? G + 2 : G;
      mk_t* raw = reinterpret_cast<mk_t*>(pg + OFF_RED);  // free until the P.V reduction
MK_COLD_LOOP
      for (int v = tid; v < rows * (HD / 8); v += NTHR) {
        const int r = v / (HD / 8), c = v - r * (HD / 8);
        const int e = (r < G ? (h0 + r) * HD : (C::NH + (r - G) * C::NKV + g) * HD) + c * 8;
        reinterpret_cast<uint4*>(raw)[v] = ld_flagged8(qrow + e, qflag, ctl, p.timeout_ns);
      }
      __syncthreads();
      if (item == first) MK_STAMP(11);
MK_COLD_LOOP
      for (int i = tid; i < rows * HD; i += NTHR) {
        const int gh = i / HD, d = i - gh * HD;
        if (gh < G) {
          const float q = rope(raw + gh * HD, d, pos, inv_freq, (float)p.rope_scale);
          qs[i] = QK_TC ? q : q * qscale;  // tensor-core q.k scales the scores instead
        } else if (gh == G) {
          const float k = rope(raw + gh * HD, d, pos, inv_freq, (float)p.rope_scale);
          kn[d] = from_f<mk_t>(k);
          if (hsl == 0) kc[(long long)slot * HD + d] = from_f<mk_t>(k);
        } else {
          const mk_t vv = raw[gh * HD + d];
          vn[d] = vv;
          if (hsl == 0) vc[(long long)slot * HD + d] = vv;
        }
      }
      if (tid < G) {
        mrun[tid] = -INFINITY;
        lrun[tid] = 0.f;
      }
      if (item == first) MK_STAMP(12);
      const int dp = tid % HP, tg = tid / HP;
      float acc[G][2];
#pragma unroll
      for (int gh = 0; gh < G; ++gh) acc[gh][0] = acc[gh][1] = 0.f;
#pragma unroll 1
      for (int sb = t0; sb < t1; sb += C::SUB) {
        const int cs = min(C::SUB, t1 - sb);
        if (sb != t0) issue_kv(pg, kc, vc, sb, cs, slot);
        wait_kv();
        __syncthreads();
        if (first_wait) MK_STAMP(13);
        first_wait = false;
        if constexpr (QK_TC) {
          qk_tc(qs, ks, kn, sc, sb, cs, slot, qscale);
        } else if constexpr (C::QL == 1) {
          // QJ threads a cache row, each GJ of the item's G heads (one thread a row for all G heads kept 3 of 8
          // warps busy on a 70-row split). Every dot keeps its order (chunk, then element): the same bits.
          for (int pq = tid; pq < QJ * cs; pq += NTHR) {
            const int j = QJ == 1 ? 0 : pq / cs, q = pq - j * cs;
            const mk_t* krow = sb + q == slot ? kn : ks + q * KROW;
            float dot[GJ];
#pragma unroll
            for (int gh = 0; gh < GJ; ++gh) dot[gh] = 0.f;
#pragma unroll 4
            for (int c = 0; c < HD / 8; ++c) {
              float kf[8];
              unpack8<mk_t>(*reinterpret_cast<const uint4*>(krow + c * 8), kf);
#pragma unroll
              for (int gh = 0; gh < GJ; ++gh)
#pragma unroll
                for (int e = 0; e < 8; ++e) dot[gh] = fmaf(qs[(j * GJ + gh) * HD + c * 8 + e], kf[e], dot[gh]);
            }
#pragma unroll
            for (int gh = 0; gh < GJ; ++gh) sc[(j * GJ + gh) * C::SUB + q] = dot[gh];
          }
        } else {
          // QL lanes a row: lane ql takes chunks ql, ql + QL, ... so the QL lanes of a row read adjacent 16-byte
          // chunks; the pass loop is uniform over the block, so every lane of a warp reaches the shuffles.
          constexpr int QL = C::QL, RPP = NTHR / QL, CPL = HD / 8 / QL;
          const int ql = tid % QL, qr = tid / QL;
#pragma unroll 1
          for (int q0 = 0; q0 < cs; q0 += RPP) {
            const int q = q0 + qr;
            const int t = sb + q;
            float dot[G];
#pragma unroll
            for (int gh = 0; gh < G; ++gh) dot[gh] = 0.f;
            if (q < cs) {
#pragma unroll
              for (int c = 0; c < CPL; ++c) {
                const int ch = c * QL + ql;
                float kf[8];
                unpack8<mk_t>(*reinterpret_cast<const uint4*>((t == slot ? kn : ks + q * KROW) + ch * 8), kf);
#pragma unroll
                for (int gh = 0; gh < G; ++gh) {
                  const float4 qa = *reinterpret_cast<const float4*>(qs + gh * HD + ch * 8);
                  const float4 qb = *reinterpret_cast<const float4*>(qs + gh * HD + ch * 8 + 4);
                  dot[gh] = fmaf(qa.x, kf[0], dot[gh]);
                  dot[gh] = fmaf(qa.y, kf[1], dot[gh]);
                  dot[gh] = fmaf(qa.z, kf[2], dot[gh]);
                  dot[gh] = fmaf(qa.w, kf[3], dot[gh]);
                  dot[gh] = fmaf(qb.x, kf[4], dot[gh]);
                  dot[gh] = fmaf(qb.y, kf[5], dot[gh]);
                  dot[gh] = fmaf(qb.z, kf[6], dot[gh]);
                  dot[gh] = fmaf(qb.w, kf[7], dot[gh]);
                }
              }
            }
#pragma unroll
            for (int gh = 0; gh < G; ++gh)
#pragma unroll
              for (int o = QL / 2; o > 0; o >>= 1) dot[gh] += __shfl_xor_sync(0xffffffffu, dot[gh], o);
            if (q < cs && ql == 0) {
#pragma unroll
              for (int gh = 0; gh < G; ++gh) sc[gh * C::SUB + q] = dot[gh];
            }
          }
        }
        __syncthreads();
        if (item == first && sb == t0) MK_STAMP(16);
        if (warp < G) {
          const int gh = warp;
          float mx = -INFINITY;
          for (int q = lane; q < cs; q += 32) mx = fmaxf(mx, sc[gh * C::SUB + q]);
          mx = warp_max(mx);
          const float mold = mrun[gh];
          const float mnew = fmaxf(mold, mx);
          float sum = 0.f;
          for (int q = lane; q < cs; q += 32) {
            const float e = expf(sc[gh * C::SUB + q] - mnew);
            sc[gh * C::SUB + q] = e;
            sum += e;
          }
          sum = warp_sum(sum);
          __syncwarp();
          if (lane == 0) {
            const float a = expf(mold - mnew);
            alpha[gh] = a;
            lrun[gh] = lrun[gh] * a + sum;
            mrun[gh] = mnew;
          }
        }
        __syncthreads();
        if (item == first && sb == t0) MK_STAMP(17);
#pragma unroll
        for (int gh = 0; gh < G; ++gh) {
          const float a = alpha[gh];
          acc[gh][0] *= a;
          acc[gh][1] *= a;
        }
        for (int q = tg; q < cs; q += TG) {
          const int t = sb + q;
          const mk_t* vp = (t == slot ? vn : vs + q * KROW) + 2 * dp;
          const float v0 = to_f(vp[0]), v1 = to_f(vp[1]);
#pragma unroll
          for (int gh = 0; gh < G; ++gh) {
            const float w = sc[gh * C::SUB + q];
            acc[gh][0] = fmaf(w, v0, acc[gh][0]);
            acc[gh][1] = fmaf(w, v1, acc[gh][1]);
          }
        }
        __syncthreads();
      }
      if (item == first) MK_STAMP(14);
#pragma unroll
      for (int gh = 0; gh < G; ++gh) {
        red[(tg * G + gh) * HD + 2 * dp] = acc[gh][0];
        red[(tg * G + gh) * HD + 2 * dp + 1] = acc[gh][1];
      }
      __syncthreads();
      const long long pbase = ((long long)pr * C::S + s) * G;
      for (int i = tid; i < G * HD; i += NTHR) {
        const int gh = i / HD, d = i - gh * HD;
        float o = 0.f;
#pragma unroll 4
        for (int w = 0; w < TG; ++w) o += red[(w * G + gh) * HD + d];
        if (se == 1) {
          attn_out[(long long)b * C::NH * HD + (h0 + gh) * HD + d] = from_f<mk_t>(o / lrun[gh]);
        } else {
          part_o[(pbase + gh) * HD + d] = o;
          if (d == 0) {
            part_ml[(pbase + gh) * 2] = mrun[gh];
            part_ml[(pbase + gh) * 2 + 1] = lrun[gh];
          }
        }
      }
      if (se == 1 || C::FOLD) {
        block_arrive(att_done);  // FOLD: the partial is written; the O staging combines
        if constexpr (C::S > 1 && !C::FOLD) {
          if (tid == 0) atomicAdd(arrive + pr, 1u);  // keep the pair's arrival count per launch at S
        }
      } else {
        arrive_combine(b, pr, h0, se, true, arrive, E1, flag, part_o, part_ml, attn_out, att_done);
      }
      __syncthreads();
      if (item == first) MK_STAMP(15);
    }
    pre(false);
  }
};

}  // namespace egt
