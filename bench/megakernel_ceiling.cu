// Compute ceiling of the MegaKernel's matvec weight policies (bench/megakernel_ceiling.py builds and runs this).
// One stage of weights sits in shared memory and every block of a full grid runs the policy's accumulate() over it
// R times, with the __syncthreads the stage loop pays: no global traffic, so the rate is what the SM can compute.
// Below the per-SM share of the copy bandwidth, an op with that policy is compute-bound inside the MegaKernel.
// Shapes: qwen2.5-1.5b's projections with the tiles of its stored H100 plan (bench/results/plans), batch 1.
// Output: one line per case, `CASE name|stage bytes|us per stage|dense weights per stage`.
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
typedef __nv_bfloat16 mk_t;
namespace egt {
constexpr int NB = 1, NBLK = CEIL_BLOCKS, NTHR = CEIL_THREADS;
constexpr int PREFETCH_BYTES = 0;
}  // namespace egt
#define EGT_MK_COMPACT 1
#include "mk_common.cuh"
#include "mk_matvec.cuh"
using namespace egt;

struct NoRows {};  // DenseW reads its rows through the row map only when issuing copies

template <class WF, class C, class SRC>
__global__ void __launch_bounds__(NTHR, 1) ceiling(SRC src, int reps, const uint4* fill, int fill_vecs, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int SV = WF::template stage_vec<C>();
  uint4* buf = reinterpret_cast<uint4*>(smem);
  uint4* xs = buf + SV;
  float* extra = reinterpret_cast<float*>(xs + NB * C::KP / 8);
  for (int i = threadIdx.x; i < SV + NB * C::KP / 8; i += NTHR) buf[i] = fill[i % fill_vecs];
  __syncthreads();
  if (float* xsum = WF::template xsum_part<C>(extra, src))  // the kernel's stagers write these with x
    for (int v = threadIdx.x; v < NB * C::KP / 8; v += NTHR) xsum_block<mk_t>(xsum, 0, v, C::KP / 8, xs[v]);
  __syncthreads();
  WF::template after_stage<C>(xs, extra, src);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  typename WF::template Acc<C> st;
  st.clear();
  for (int r = 0; r < reps; ++r) {
    WF::template accumulate<C>(buf, xs, r % C::CP, warp / C::WPR, warp % C::WPR, lane, src, st);
    __syncthreads();
  }
  float s = 0.f;
  if constexpr (WF::template Acc<C>::OWNED) {
    st.each(lane, [&](int, int, float (&v)[C::NMAT]) {
      for (int m = 0; m < C::NMAT; ++m) s += v[m];
    });
  } else {
    float acc[C::RPW][C::NMAT][NB];
    st.rows(acc, lane);
    for (int j = 0; j < C::RPW; ++j)
      for (int m = 0; m < C::NMAT; ++m) s += acc[j][m][0];
  }
  out[blockIdx.x * NTHR + threadIdx.x] = s;  // keeps the work alive
}

template <class C> constexpr int q4_bytes(int lg) { return C::NMAT * C::TR * C::TK / 2 + C::NMAT * C::TR * (C::TK >> lg) * 4; }
template <class C> constexpr int s4_bytes(int n, int lg) {
  return ((6 * C::NMAT * C::TR * (C::TK * n / 32) + 3) & ~3) + C::NMAT * C::TR * ((C::TK * n / 4) >> lg) * 4;
}
template <class C> constexpr int s4tc_bytes(int n, int lg) {
  return 6 * n * C::NMAT * (C::TR / 16) * (C::TK / 64) * 32 + C::NMAT * C::TR * ((C::TK * n / 4) >> lg) * 4;
}
template <class C> constexpr int q3_bytes(int lg) { return C::NMAT * C::TR * C::TK * 3 / 8 + C::NMAT * C::TR * (C::TK >> lg) * 4; }

static const char* only = nullptr;  // argv[1]: run only the cases whose name contains it, one launch each (ncu)

template <class WF, class C, class SRC>
void run(const char* name, SRC src, int bytes, const uint4* fill, float* out) {
  if (only && !strstr(name, only)) return;
  constexpr int SV = WF::template stage_vec<C>();
  const int smem = (SV + NB * C::KP / 8) * 16 + 4 * WF::template extra_floats<C>();
  auto k = ceiling<WF, C, SRC>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  const int reps = 400;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float best = 1e30f;
  for (int t = 0; t < (only ? 1 : 7); ++t) {
    cudaEventRecord(a);
    k<<<NBLK, NTHR, smem>>>(src, reps, fill, 4096, out);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    best = ms < best ? ms : best;
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    fprintf(stderr, "%s: %s\n", name, cudaGetErrorString(e));
    exit(1);
  }
  printf("CASE %s|%d|%.5f|%d\n", name, bytes, best * 1e3 / reps, C::NMAT * C::TR * C::TK);
}

int main(int argc, char** argv) {
  if (argc > 1) only = argv[1];
  uint4* fill;
  float* out;
  cudaMalloc(&fill, 4096 * 16);
  cudaMalloc(&out, NBLK * NTHR * 4);
  // random codes (nibbles 3, 4, 12), small finite scales, offsets and activations (bytes 0x34, 0x3C), and valid
  // mma.sp metadata anywhere it is read (nibbles 0x3, 0x4, 0xC: index pairs (3, 0), (0, 1), (0, 3))
  static uint4 h[4096];
  uint32_t s = 12345u;
  for (auto& v : h) {
    uint32_t w[4];
    for (auto& x : w) {
      s = s * 1664525u + 1013904223u;
      x = (s & 0x08080808u) | 0x34343434u;
    }
    v = make_uint4(w[0], w[1], w[2], w[3]);
  }
  cudaMemcpy(fill, h, sizeof h, cudaMemcpyHostToDevice);
  constexpr int W = NTHR / 32;
  //                 N     K     NMAT TR  TK   ST KS WPR ROT
  using GU = MvCfg<8960, 1536, 2, 16, 1536, 4, 1, W, 0>;  // gate/up (tensor-core tiles of the stored plan)
  using DN = MvCfg<1536, 8960, 1, 16, 1280, 8, 1, W, 0>;  // down
  using QK = MvCfg<2048, 1536, 1, 16, 1536, 4, 1, W, 0>;  // qkv (o: the same K and tiles)
  using GUc = MvCfg<8960, 1536, 2, 16, 1536, 4, 1, 2, 0>;  // CUDA-core policies: two warps a row
  using DNc = MvCfg<1536, 8960, 1, 16, 1280, 8, 1, 2, 0>;
  using GUb = MvCfg<8960, 1536, 2, 16, 512, 4, 1, 2, 0>;   // bf16 rows
  const Q4Src g128{nullptr, 7}, g32{nullptr, 5};
  run<Q4TC<mk_t>, GU>("gate/up int4-tc g128", g128, q4_bytes<GU>(7), fill, out);
  run<Q4TC<mk_t>, DN>("down int4-tc g128", g128, q4_bytes<DN>(7), fill, out);
  run<Q4TC<mk_t>, DN>("down int4-tc g32", g32, q4_bytes<DN>(5), fill, out);
  run<Q4TC<mk_t>, QK>("qkv int4-tc g128", g128, q4_bytes<QK>(7), fill, out);
  run<Q4W<mk_t>, GUc>("gate/up int4 cuda-core g128", g128, q4_bytes<GUc>(7), fill, out);
  run<Q4W<mk_t>, DNc>("down int4 cuda-core g128", g128, q4_bytes<DNc>(7), fill, out);
  for (int n : {2, 1}) {
    const S4Src sp{nullptr, 7, n};
    run<S4W<mk_t>, GUc>(n == 2 ? "gate/up 2:4 int4 g128" : "gate/up 1:4 int4 g128", sp, s4_bytes<GUc>(n, 7), fill, out);
    run<S4W<mk_t>, DNc>(n == 2 ? "down 2:4 int4 g128" : "down 1:4 int4 g128", sp, s4_bytes<DNc>(n, 7), fill, out);
  }
  for (int n : {2, 1}) {
    const S4Src sp{nullptr, 7, n};
    run<S4TC<mk_t>, GU>(n == 2 ? "gate/up 2:4 int4-nm-tc g128" : "gate/up 1:4 int4-nm-tc g128", sp, s4tc_bytes<GU>(n, 7), fill, out);
    run<S4TC<mk_t>, DN>(n == 2 ? "down 2:4 int4-nm-tc g128" : "down 1:4 int4-nm-tc g128", sp, s4tc_bytes<DN>(n, 7), fill, out);
  }
  const Q3Src q3{nullptr, 7, 3};
  run<Q3W<mk_t>, GUc>("gate/up int3 g128", q3, q3_bytes<GUc>(7), fill, out);
  run<Q3W<mk_t>, DNc>("down int3 g128", q3, q3_bytes<DNc>(7), fill, out);
  run<DenseW<mk_t>, GUb>("gate/up bf16", NoRows{}, 2 * 16 * 512 * 2, fill, out);
  return 0;
}
