// A small CUDA execution emulator for checking native/*.cu kernels on the host, WITHOUT a GPU:
//   g++ -std=c++20 -O1 -pthread -include cuda_emulator.h -x c++ driver.cpp
// Every CUDA thread of a block is a host thread; blocks run one after another, so a __shared__ variable (a
// function-local static here) belongs to the running block. __syncthreads is a barrier over the block's
// threads; warp shuffles and mma.sync are exchanges through per-warp slots between two barriers over the 32
// threads of the warp, so they behave as the .sync instructions do when the whole warp takes part (the only
// way the kernels use them). mma.m16n8k16 (bf16 inputs, fp32 accumulation) is computed from the fragments
// the 32 lanes hold, with the layouts of the PTX ISA, so a kernel's fragment bookkeeping is checked exactly;
// ldmatrix.x4.trans likewise gathers from the 32 row addresses the lanes give.
// It checks the kernel's arithmetic and indexing, not its speed, memory-model subtleties or register limits.
#pragma once
#define DISTALIGN_HOST_EMULATION 1
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct dim3
{
    unsigned int x = 1, y = 1, z = 1;
};
struct uint2 { unsigned int x, y; };
struct uint4 { unsigned int x, y, z, w; };
struct float4 { float x, y, z, w; };

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline float __uint_as_float(unsigned int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int x; std::memcpy(&x, &f, 4); return x; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }

namespace cuda_emulator
{
    struct Warp
    {
        std::barrier<> barrier{32};
        float values[32];
        unsigned int a[32][4];
        unsigned int b[32][2];
        const unsigned short* rows[32];
    };

    struct Block
    {
        explicit Block(unsigned int threads) : barrier(threads), warps((threads + 31) / 32) {}
        std::barrier<> barrier;
        std::vector<Warp> warps;
    };

    inline Block* current_block = nullptr;

    inline Warp& my_warp() { return current_block->warps[threadIdx.x / 32]; }

    inline float bf16_value(unsigned int bits16) { return __uint_as_float((bits16 & 0xFFFFu) << 16); }

    // Runs kernel() on every thread of every block of grid × block (blocks in order, the threads of a block concurrently).
    inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel)
    {
        if (block.x % 32 != 0 || block.y != 1 || block.z != 1) throw "the emulator runs 1-D blocks of whole warps";
        gridDim = grid;
        blockDim = block;
        for (unsigned int z = 0; z < grid.z; z++)
            for (unsigned int y = 0; y < grid.y; y++)
                for (unsigned int x = 0; x < grid.x; x++)
                {
                    auto state = std::make_unique<Block>(block.x);
                    current_block = state.get();
                    std::vector<std::thread> threads;
                    for (unsigned int i = 0; i < block.x; i++)
                        threads.emplace_back([=, &kernel] {
                            threadIdx = dim3{ i, 0, 0 };
                            blockIdx = dim3{ x, y, z };
                            kernel();
                        });
                    for (auto& thread : threads) thread.join();
                    current_block = nullptr;
                }
    }
}

inline void __syncthreads() { cuda_emulator::current_block->barrier.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned int, float value, int lane_mask, int = 32)
{
    auto& warp = cuda_emulator::my_warp();
    unsigned int lane = threadIdx.x % 32;
    warp.values[lane] = value;
    warp.barrier.arrive_and_wait();
    float other = warp.values[lane ^ (unsigned int)lane_mask];
    warp.barrier.arrive_and_wait();
    return other;
}

// d += A·B, A 16×16 and B 16×8 in bf16 spread over the warp's lanes as mma.m16n8k16 expects (see native/flash_attention.cu).
inline void emulated_mma_m16n8k16_bf16(float d[4], const unsigned int a[4], const unsigned int b[2])
{
    using cuda_emulator::bf16_value;
    auto& warp = cuda_emulator::my_warp();
    unsigned int lane = threadIdx.x % 32;
    std::memcpy(warp.a[lane], a, sizeof(warp.a[lane]));
    std::memcpy(warp.b[lane], b, sizeof(warp.b[lane]));
    warp.barrier.arrive_and_wait();
    auto element_a = [&](int row, int k) {
        int group = row % 8, upper = row / 8, quad = (k % 8) / 2, high = k % 2;
        unsigned int word = warp.a[4 * group + quad][(k / 8) * 2 + upper];
        return bf16_value(high ? word >> 16 : word);
    };
    auto element_b = [&](int k, int n) {
        int quad = (k % 8) / 2, high = k % 2;
        unsigned int word = warp.b[4 * n + quad][k / 8];
        return bf16_value(high ? word >> 16 : word);
    };
    int g = (int)lane / 4, t = (int)lane % 4;
    for (int r = 0; r < 4; r++)
    {
        int row = g + 8 * (r / 2), column = 2 * t + r % 2;
        float sum = d[r];
        for (int k = 0; k < 16; k++) sum += element_a(row, k) * element_b(k, column);
        d[r] = sum;
    }
    warp.barrier.arrive_and_wait();
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lanes 8m .. 8m+7 give the addresses of rows 0..7 of 8×8 matrix m
// (8 consecutive bf16 each); with .trans, lane 4g + t receives r[m] = (M_m[2t][g], M_m[2t+1][g]), low half first.
inline void emulated_ldmatrix_x4_trans(unsigned int r[4], const unsigned short* row)
{
    auto& warp = cuda_emulator::my_warp();
    unsigned int lane = threadIdx.x % 32;
    warp.rows[lane] = row;
    warp.barrier.arrive_and_wait();
    unsigned int g = lane / 4, t = lane % 4;
    for (int m = 0; m < 4; m++)
    {
        unsigned int low = warp.rows[8 * m + 2 * t][g], high = warp.rows[8 * m + 2 * t + 1][g];
        r[m] = low | (high << 16);
    }
    warp.barrier.arrive_and_wait();
}
