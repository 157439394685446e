// Grid-wide synchronisation microbenchmark (bench/results/megakernel/ab_h100.md, runs 22 and 41-42): what one round of
// "every block writes, then every block waits for all" costs with the MegaKernel's counter barrier (red.release,
// relaxed polls, one acquire load), when the writes are plain stores to a block's own row, or vector / scalar float
// atomics into one shared row (a split-K reduction). One block per SM, 200 timed rounds, best of 5 launches.
// "spread K": the barrier's arrivals are spread over K counters 128 bytes apart (block b arrives on counter b % K),
// and lane i < K of warp 0 polls counter i until it holds its own blocks' arrivals: K atomics queues of NB / K
// arrivals instead of one queue of NB at one L2 address. "poll P": P staggered pollers per block (see staggered_wait).
//   nvcc -O3 -arch=sm_90 -o sync_microbench bench/megakernel_sync_microbench.cu && ./sync_microbench
#include <cstdio>
#include <cuda_runtime.h>

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned ld_relaxed(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release(unsigned* p) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(p) : "memory");
}
__device__ __forceinline__ void red_add_v4(float* p, float4 v) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}
__device__ void block_wait(const unsigned* c, unsigned target) {
  if (threadIdx.x == 0) {
    while (ld_relaxed(c) < target) {
    }
    (void)ld_acquire(c);
  }
  __syncthreads();
}
__device__ void block_arrive(unsigned* c) {
  __syncthreads();
  if (threadIdx.x == 0) red_release(c);
}
constexpr int STRIDE = 32;  // counters 128 bytes apart: separate L2 lines
__device__ void spread_wait(const unsigned* c, int k, unsigned round) {
  if (threadIdx.x < 32) {
    const int i = threadIdx.x;
    // arrivals per round on counter i: the blocks b < NB with b % k == i
    const unsigned want = i < k ? round * ((gridDim.x - i + k - 1) / k) : 0u;
    const unsigned* ci = c + (i < k ? i : 0) * STRIDE;
    while (!__all_sync(0xffffffffu, i >= k || ld_relaxed(ci) >= want)) {
    }
    if (i < k) (void)ld_acquire(ci);
  }
  __syncthreads();
}

// "poll P": P warps poll the one counter, warp w starting w * POLL_GAP cycles late, so a poll load reaches L2 every
// round trip / P instead of once a round trip; the first to see the target tells the others through shared memory.
constexpr long long POLL_GAP = 128;
__shared__ volatile unsigned seen;  // the last round some poller saw complete (set to 0 at the kernel's start)
__device__ void staggered_wait(const unsigned* c, unsigned target, int pollers, unsigned round) {
  const int w = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0 && w < pollers) {
    const long long t0 = clock64();
    while (clock64() - t0 < w * POLL_GAP) {
    }
    while (seen < round && ld_relaxed(c) < target) {
    }
    seen = round;
    (void)ld_acquire(c);
  }
  __syncthreads();
}

enum { BARRIER, STORE_OWN_ROW, RED_V4_SHARED_ROW, RED_SCALAR_SHARED_ROW, SPREAD4, SPREAD8, SPREAD16, SPREAD32, POLL2,
       POLL4, POLL8, MODES };
const char* kNames[MODES] = {"barrier only", "store own row + barrier", "red.v4.f32 shared row + barrier",
                             "red.f32 scalar + barrier", "store own row + spread 4 barrier",
                             "store own row + spread 8 barrier", "store own row + spread 16 barrier",
                             "store own row + spread 32 barrier", "store own row + poll 2 barrier",
                             "store own row + poll 4 barrier", "store own row + poll 8 barrier"};

// out[b] / out[nb + b]: block b's clock after round 1 and after the last round
__global__ void rounds(int mode, int h, int reps, float* buf, unsigned* counter, unsigned long long* out) {
  const unsigned nb = gridDim.x;
  const int k = mode >= SPREAD4 && mode <= SPREAD32 ? 4 << (mode - SPREAD4) : 0;  // counters of a spread barrier
  const int pollers = mode >= POLL2 ? 2 << (mode - POLL2) : 0;
  if (threadIdx.x == 0) seen = 0;
  __syncthreads();
  for (int r = 0; r < reps; ++r) {
    if (mode == STORE_OWN_ROW || k || pollers) {
      for (int i = threadIdx.x * 4; i < h; i += blockDim.x * 4)
        *reinterpret_cast<float4*>(buf + (size_t)blockIdx.x * h + i) = make_float4(1.f, 2.f, 3.f, (float)r);
    } else if (mode == RED_V4_SHARED_ROW) {
      for (int i = threadIdx.x * 4; i < h; i += blockDim.x * 4) red_add_v4(buf + (size_t)(r & 1) * h + i, make_float4(1, 2, 3, 4));
    } else if (mode == RED_SCALAR_SHARED_ROW) {
      for (int i = threadIdx.x; i < h; i += blockDim.x) atomicAdd(buf + (size_t)(r & 1) * h + i, 1.f);
    }
    if (k) {
      block_arrive(counter + (blockIdx.x % k) * STRIDE);
      spread_wait(counter, k, r + 1);
    } else if (pollers) {
      block_arrive(counter);
      staggered_wait(counter, (unsigned)(r + 1) * nb, pollers, r + 1);
    } else {
      block_arrive(counter);
      block_wait(counter, (unsigned)(r + 1) * nb);
    }
    if (r == 1 && threadIdx.x == 0) out[blockIdx.x] = global_ns();
    if (r == reps - 1 && threadIdx.x == 0) out[nb + blockIdx.x] = global_ns();
  }
}

int main() {
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  const int nb = prop.multiProcessorCount;
  printf("%s SMs %d\n", prop.name, nb);
  float* buf;
  unsigned* counter;
  unsigned long long* out;
  cudaMalloc(&buf, (size_t)nb * 8192 * 4);
  cudaMalloc(&counter, 32 * STRIDE * 4);
  cudaMalloc(&out, 2 * nb * 8);
  const int reps = 202;
  static unsigned long long host[2 * 1024];
  for (int threads : {256, 512})
    for (int h : {576, 1536, 2048, 4096})
      for (int mode = 0; mode < MODES; ++mode) {
        if (mode == BARRIER && h != 576) continue;
        double best = 1e30;
        for (int t = 0; t < 5; ++t) {
          cudaMemset(counter, 0, 32 * STRIDE * 4);
          cudaMemset(buf, 0, (size_t)nb * 8192 * 4);
          rounds<<<nb, threads>>>(mode, h, reps, buf, counter, out);
          if (cudaError_t e = cudaDeviceSynchronize()) {
            printf("error: %s\n", cudaGetErrorString(e));
            return 1;
          }
          cudaMemcpy(host, out, 2 * nb * 8, cudaMemcpyDeviceToHost);
          unsigned long long first = ~0ull, last = 0;
          for (int i = 0; i < nb; ++i) {
            first = host[i] < first ? host[i] : first;
            last = host[nb + i] > last ? host[nb + i] : last;
          }
          const double ns = (double)(last - first) / (reps - 2);
          best = ns < best ? ns : best;
        }
        printf("threads %d H %5d %-34s %8.0f ns/round\n", threads, h, kNames[mode], best);
      }
  return 0;
}
