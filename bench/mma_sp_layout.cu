// Probe of the sparse tensor-core operand layout the MegaKernel's `int4-nm-tc` kind relies on
// (egt/megakernel/operands.py `_sp_fragments`, csrc S4TC): mma.sp.m16n8k32 with bf16 A/B and float32 C, on random
// operands, for sparsity selectors 0 and 1, with and without ::ordered_metadata. Trials: the baseline metadata
// (every nibble 0x4 = indices (0, 1)); the same with one nibble of one lane set to 0xE (indices (2, 3)), for every
// lane and nibble; and four uniform patterns, three of them unordered pairs. It writes the operands and every trial's
// D fragments as raw binaries; bench/mma_sp_layout.py builds it, runs it and names the (row, group) each metadata
// nibble drives, and checks the A/B fragment convention and the unordered pairs against a float64 reference.
//   nvcc -O2 -arch=sm_90 -o mma_sp_layout bench/mma_sp_layout.cu && ./mma_sp_layout OUTDIR
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_bf16.h>

struct Trial { uint32_t e[32]; int sel; int ord; };

template <int SEL, int ORD>
__device__ void run(const uint32_t* a, const uint32_t* b, const uint32_t* e, float* d) {
  const int lane = threadIdx.x & 31;
  float c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  if (ORD) asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;"
               : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
               : "r"(a[lane * 4 + 0]), "r"(a[lane * 4 + 1]), "r"(a[lane * 4 + 2]), "r"(a[lane * 4 + 3]),
                 "r"(b[lane * 4 + 0]), "r"(b[lane * 4 + 1]), "r"(b[lane * 4 + 2]), "r"(b[lane * 4 + 3]),
                 "r"(e[lane]), "n"(SEL));
  else asm volatile("mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;"
               : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
               : "r"(a[lane * 4 + 0]), "r"(a[lane * 4 + 1]), "r"(a[lane * 4 + 2]), "r"(a[lane * 4 + 3]),
                 "r"(b[lane * 4 + 0]), "r"(b[lane * 4 + 1]), "r"(b[lane * 4 + 2]), "r"(b[lane * 4 + 3]),
                 "r"(e[lane]), "n"(SEL));
  d[lane * 4 + 0] = c0; d[lane * 4 + 1] = c1; d[lane * 4 + 2] = c2; d[lane * 4 + 3] = c3;
}

__global__ void probe(const uint32_t* a, const uint32_t* b, const Trial* trials, float* d, int n) {
  const int w = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (w >= n) return;
  const Trial& x = trials[w];
  if (x.sel == 0) { if (x.ord) run<0, 1>(a, b, x.e, d + w * 128); else run<0, 0>(a, b, x.e, d + w * 128); }
  else { if (x.ord) run<1, 1>(a, b, x.e, d + w * 128); else run<1, 0>(a, b, x.e, d + w * 128); }
}

int main(int argc, char** argv) {
  const char* dir = argc > 1 ? argv[1] : ".";
  std::vector<uint32_t> a(128), b(128);
  srand(1234);
  auto rb = []() { float f = (float)((rand() % 15) - 7) / 4.f; __nv_bfloat16 h = __float2bfloat16(f); return *(uint16_t*)&h; };
  for (auto& v : a) v = rb() | ((uint32_t)rb() << 16);
  for (auto& v : b) v = rb() | ((uint32_t)rb() << 16);
  std::vector<Trial> t;
  for (int ord = 0; ord < 2; ++ord)
  for (int sel = 0; sel < 2; ++sel) {
    Trial base; base.sel = sel; base.ord = ord;
    for (int l = 0; l < 32; ++l) base.e[l] = 0x44444444u;
    t.push_back(base);
    for (int l = 0; l < 32; ++l)
      for (int p = 0; p < 8; ++p) {
        Trial x = base;
        x.e[l] = (x.e[l] & ~(0xFu << (4 * p))) | (0xEu << (4 * p));
        t.push_back(x);
      }
    const uint32_t pats[4] = {0x11111111u, 0xBBBBBBBBu, 0x33333333u, 0x88888888u};
    for (uint32_t pat : pats) {
      Trial x; x.sel = sel; x.ord = ord;
      for (int l = 0; l < 32; ++l) x.e[l] = pat;
      t.push_back(x);
    }
  }
  const int n = (int)t.size();
  uint32_t *da, *db; Trial* dt; float* dd;
  cudaMalloc(&da, 512); cudaMalloc(&db, 512); cudaMalloc(&dt, n * sizeof(Trial)); cudaMalloc(&dd, n * 512);
  cudaMemcpy(da, a.data(), 512, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), 512, cudaMemcpyHostToDevice);
  cudaMemcpy(dt, t.data(), n * sizeof(Trial), cudaMemcpyHostToDevice);
  probe<<<(n + 3) / 4, 128>>>(da, db, dt, dd, n);
  cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) { printf("error %s\n", cudaGetErrorString(err)); return 1; }
  std::vector<float> d(n * 128);
  cudaMemcpy(d.data(), dd, n * 512, cudaMemcpyDeviceToHost);
  auto dump = [&](const char* name, const void* p, size_t bytes) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE* f = fopen(path, "wb");
    fwrite(p, 1, bytes, f);
    fclose(f);
  };
  dump("a.bin", a.data(), 512);
  dump("b.bin", b.data(), 512);
  dump("trials.bin", t.data(), n * sizeof(Trial));
  dump("d.bin", d.data(), n * 512);
  printf("%d trials ok\n", n);
  return 0;
}
