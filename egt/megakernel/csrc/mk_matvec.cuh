// egt MegaKernel opcode: y[b, n] = sum_k W[n, k] * x[b, k] for a block's statically assigned row tiles.
//
// Contract:
// - The row tiles of one op are split over the grid in contiguous, balanced ranges (rotated by ROT so that the
//   blocks that carry one extra tile differ from op to op); every block knows its range at compile time.
// - Weights stream through a ring of ST shared-memory stages (TR rows x TK columns each) filled by cp.async.
//   `prefill` issues the first ST-1 stages and touches no activation, so the generated schedule calls it for the
//   next op *before* waiting on that op's dependency: the weight stream never stops for a grid-wide sync.
// - The activation x (B x K) is staged in shared memory KS parts at a time ("K-split"): KS>1 cuts the
//   activation footprint by KS at the cost of keeping per-row partial sums in shared memory.
// - Reductions run in a fixed order, so the result does not depend on timing (bit-identical reruns).
// - The weight format is the policy `WF` (an operand kind); dense bf16/fp16 is `DenseW`. A compressed format
//   (issue 9) is one more policy with its own stage layout and dot product, not a rewrite of the schedule.
#pragma once
#include "mk_common.cuh"

namespace egt {

template <typename T> struct DenseW {
  static constexpr int ELEMS_PER_VEC = 8;  // one 16-byte vector holds 8 weights
  __device__ static __forceinline__ void unpack(const uint4& v, float (&f)[8]) { unpack8<T>(v, f); }
};

template <class T, class = void> struct HasBegin { static constexpr bool value = false; };
template <class T> struct HasBegin<T, decltype(void(&T::begin))> { static constexpr bool value = true; };

template <int N_, int K_, int NMAT_, int TR_, int TK_, int ST_, int KS_, int WPR_, int ROT_>
struct MvCfg {
  static constexpr int N = N_, K = K_, NMAT = NMAT_, TR = TR_, TK = TK_, ST = ST_, KS = KS_, WPR = WPR_, ROT = ROT_;
};

template <class C, class WF> struct Matvec {
  static constexpr int NW = NTHR / 32;
  static constexpr int KP = C::K / C::KS;     // columns per K part
  static constexpr int CP = KP / C::TK;       // stages per tile per part
  static constexpr int NT = (C::N + C::TR - 1) / C::TR;
  static constexpr int VPR = C::TK / 8;       // 16-byte vectors per row per stage
  static constexpr int SLOTS = NW / C::WPR;   // row slots in a block
  static constexpr int RPW = C::TR / SLOTS;   // rows per warp
  static constexpr int TPR = 32 * C::WPR;     // threads per row
  static constexpr int VPT = (VPR + TPR - 1) / TPR;
  static constexpr int STAGE_VEC = C::NMAT * C::TR * VPR;
  static constexpr int MAXT = (NT + NBLK - 1) / NBLK;
  static constexpr int XVEC = NB * KP / 8;
  static constexpr int RING_BYTES = C::ST * STAGE_VEC * 16;
  // Stages issued ahead of the dependency wait: enough to cover a grid sync, no more, because a deep prefill
  // queues behind the poll of the counter and delays the wake-up itself (seen in traces on the H100).
  static constexpr int PF_WANT = (PREFETCH_BYTES + STAGE_VEC * 16 - 1) / (STAGE_VEC * 16);
  static constexpr int PF = PF_WANT < 1 ? 1 : (PF_WANT > C::ST - 1 ? C::ST - 1 : PF_WANT);
  static constexpr int XS_BYTES = XVEC * 16;
  static constexpr int RED_FLOATS = (C::WPR > 1) ? NW * RPW * C::NMAT * NB : 0;
  static constexpr int ACC_FLOATS = (C::KS > 1) ? MAXT * C::TR * NB * C::NMAT : 0;
  static constexpr int REGION_BYTES = XS_BYTES + 4 * (RED_FLOATS + ACC_FLOATS);
  static_assert(C::K % C::KS == 0 && KP % C::TK == 0 && C::TK % 8 == 0, "K, KS, TK must tile");
  static_assert(NW % C::WPR == 0 && C::TR % SLOTS == 0 && RPW >= 1, "TR must be a multiple of warps/WPR");
  static_assert(C::ST >= 2, "at least two stages");

  __device__ static __forceinline__ void tiles(int& t0, int& t1) {
    const int b = (blockIdx.x + C::ROT) % NBLK;
    t0 = (int)(((long long)NT * b) / NBLK);
    t1 = (int)(((long long)NT * (b + 1)) / NBLK);
  }
  __device__ static __forceinline__ void decode(int s, int nt, int& kp, int& tl, int& ch) {
    ch = s % CP;
    const int r = s / CP;
    tl = r % nt;
    kp = r / nt;
  }
  // first: threads below it issue nothing (warp 0 stays free to poll the dependency counter during a prefill)
  template <class RP>
  __device__ static __forceinline__ void issue(uint4* ring, int s, int t0, int nt, const RP& rp, int first = 0) {
    if (s < nt * C::KS * CP && (int)threadIdx.x >= first) {
      int kp, tl, ch;
      decode(s, nt, kp, tl, ch);
      uint4* buf = ring + (s % C::ST) * STAGE_VEC;
      const int col0 = (kp * KP + ch * C::TK) / 8;
      for (int v = threadIdx.x - first; v < STAGE_VEC; v += NTHR - first) {
        const int m = v / (C::TR * VPR);
        const int rem = v - m * (C::TR * VPR);
        const int r = rem / VPR;
        const int c = rem - r * VPR;
        const int n = (t0 + tl) * C::TR + r;
        if (n < C::N) cp_async16(buf + v, rp(m, n) + col0 + c);
      }
    }
    cp_commit();
  }
  template <class RP> __device__ static __forceinline__ void prefill(uint4* ring, const RP& rp) {
    int t0, t1;
    tiles(t0, t1);
#pragma unroll 1
    for (int s = 0; s < PF; ++s) issue(ring, s, t0, t1 - t0, rp, NTHR > 32 ? 32 : 0);
  }

  // rp(m, n): first 16-byte vector of row n of matrix m. stage(xs, kp): writes activation part kp and syncs.
  // epi(n, b, v[NMAT]): consumes a finished output element (called by exactly one thread per (n, b)).
  template <class RP, class XS, class EPI>
  __device__ static __forceinline__ void run(uint4* ring, unsigned char* region, const RP& rp, const XS& stage, EPI& epi) {
    int t0, t1;
    tiles(t0, t1);
    const int nt = t1 - t0;
    const int ns = nt * C::KS * CP;
    uint4* xs = reinterpret_cast<uint4*>(region);
    float* red = reinterpret_cast<float*>(region + XS_BYTES);
    float* accs = red + RED_FLOATS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int slot = warp / C::WPR, wi = warp % C::WPR;
    float acc[RPW][C::NMAT][NB];
#pragma unroll
    for (int j = 0; j < RPW; ++j)
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
        for (int b = 0; b < NB; ++b) acc[j][m][b] = 0.f;
    if constexpr (HasBegin<EPI>::value) {
      const int n0 = t0 * C::TR;
      epi.begin(n0, min(t1 * C::TR, C::N) > n0 ? min(t1 * C::TR, C::N) : n0);
    }
#pragma unroll 1
    for (int s = PF; s < C::ST - 1; ++s) issue(ring, s, t0, nt, rp);  // the stages prefill left out
    if (ns > 0) stage(xs, 0);
#pragma unroll 1
    for (int s = 0; s < ns; ++s) {
      cp_wait<C::ST - 2>();
      __syncthreads();
      issue(ring, s + C::ST - 1, t0, nt, rp);  // refills the stage everyone finished last iteration
      int kp, tl, ch;
      decode(s, nt, kp, tl, ch);
      if (kp > 0 && tl == 0 && ch == 0) stage(xs, kp);
      const uint4* buf = ring + (s % C::ST) * STAGE_VEC;
#pragma unroll
      for (int v = 0; v < VPT; ++v) {
        const int c = wi * 32 + lane + v * TPR;
        if (VPT * TPR == VPR || c < VPR) {
          float xf[NB][8];
#pragma unroll
          for (int b = 0; b < NB; ++b) unpack8<mk_t>(xs[b * (KP / 8) + ch * VPR + c], xf[b]);
#pragma unroll
          for (int j = 0; j < RPW; ++j) {
            const int r = slot * RPW + j;
#pragma unroll
            for (int m = 0; m < C::NMAT; ++m) {
              float wf[8];
              WF::unpack(buf[(m * C::TR + r) * VPR + c], wf);
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
      if (ch == CP - 1) finish_tile(acc, t0 + tl, tl, kp, red, accs, warp, lane, slot, epi);
    }
    cp_wait<0>();
    __syncthreads();
  }

  template <class EPI>
  __device__ static __forceinline__ void finish_tile(float (&acc)[RPW][C::NMAT][NB], int tile, int tl, int kp, float* red,
                                                     float* accs, int warp, int lane, int slot, EPI& epi) {
#pragma unroll
    for (int j = 0; j < RPW; ++j)
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
        for (int b = 0; b < NB; ++b) acc[j][m][b] = warp_sum(acc[j][m][b]);
    if constexpr (C::WPR == 1) {
      // The warp owns its rows: lanes share out the (row, batch) outputs, no block barrier needed.
#pragma unroll
      for (int j = 0; j < RPW; ++j)
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          if (((j * NB + b) & 31) == lane) {
            const int r = slot * RPW + j;
            const int n = tile * C::TR + r;
            float v[C::NMAT];
#pragma unroll
            for (int m = 0; m < C::NMAT; ++m) v[m] = acc[j][m][b];
            if constexpr (C::KS > 1) {
              float* a = accs + ((tl * C::TR + r) * NB + b) * C::NMAT;
#pragma unroll
              for (int m = 0; m < C::NMAT; ++m) {
                if (kp > 0) v[m] += a[m];
                a[m] = v[m];
              }
            }
            if (kp == C::KS - 1 && n < C::N) epi(n, b, v);
          }
        }
    } else {
      if (lane == 0) {
#pragma unroll
        for (int j = 0; j < RPW; ++j)
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
            for (int b = 0; b < NB; ++b) red[((warp * RPW + j) * C::NMAT + m) * NB + b] = acc[j][m][b];
      }
      __syncthreads();
      for (int it = threadIdx.x; it < C::TR * NB; it += NTHR) {
        const int r = it / NB, b = it % NB;
        const int sl = r / RPW, j = r % RPW;
        const int n = tile * C::TR + r;
        float v[C::NMAT];
#pragma unroll
        for (int m = 0; m < C::NMAT; ++m) {
          float t = 0.f;
#pragma unroll
          for (int w = 0; w < C::WPR; ++w) t += red[(((sl * C::WPR + w) * RPW + j) * C::NMAT + m) * NB + b];
          v[m] = t;
        }
        if constexpr (C::KS > 1) {
          float* a = accs + ((tl * C::TR + r) * NB + b) * C::NMAT;
#pragma unroll
          for (int m = 0; m < C::NMAT; ++m) {
            if (kp > 0) v[m] += a[m];
            a[m] = v[m];
          }
        }
        if (kp == C::KS - 1 && n < C::N) epi(n, b, v);
      }
    }
#pragma unroll
    for (int j = 0; j < RPW; ++j)
#pragma unroll
      for (int m = 0; m < C::NMAT; ++m)
#pragma unroll
        for (int b = 0; b < NB; ++b) acc[j][m][b] = 0.f;
  }
};

}  // namespace egt
