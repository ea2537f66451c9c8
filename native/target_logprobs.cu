// Fused target log-probabilities from logits, one pass over the logits:
//
//   lse[r]      = log Σ_v exp(x[r, v])                      (fp32, online max/sum)
//   log_prob[r] = x[r, t_r] − lse[r]        (0 when t_r = −1: an ignored position)
//
// Same contract as DistAlign.Kernels.Cpu.TargetLogProbs.Forward and the ILGPU GpuTargetLogProbs.ForwardKernel
// (the portable path); all three are checked against the same CPU reference. This version exists for speed:
// it reads bf16 logits (half the bytes of fp32) with 16-byte vector loads and merges partial (max, sum)
// pairs with warp shuffles, so one row costs one read of its logits. Statistics are fp32 throughout.
//
// Launch: grid = rows blocks, block = a multiple of 32 threads (≤ 1024); no dynamic shared memory.
// Compiled at run time by NVRTC (DistAlign.Kernels.Gpu.NvrtcKernelCache) for the device's architecture.
// Self-contained: no CUDA headers (bf16 is handled as its bit pattern, which widens to fp32 exactly).

typedef unsigned short bf16_bits;

__device__ __forceinline__ float bf16_to_float(bf16_bits x) { return __uint_as_float(((unsigned int)x) << 16); }

// −∞ without <math.h>: NVRTC compiles this file with no headers, and INFINITY is a math.h macro.
__device__ __forceinline__ float negative_infinity() { return __uint_as_float(0xFF800000u); }

// Adds one value to a running (max, Σ exp(x − max)).
__device__ __forceinline__ void online_add(float& m, float& s, float x)
{
    if (x > m) { s = s * __expf(m - x) + 1.0f; m = x; }
    else       { s += __expf(x - m); }
}

// (m1, s1) ⊕ (m2, s2) = (m, s1·e^(m1−m) + s2·e^(m2−m)); an empty pair (−∞, 0) is the identity.
__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2)
{
    if (m2 == negative_infinity()) return;
    if (m == negative_infinity()) { m = m2; s = s2; return; }
    float mm = fmaxf(m, m2);
    s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
    m = mm;
}

// Loads of one element and of one 16-byte vector, per element type.
__device__ __forceinline__ float load_one(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load_one(const bf16_bits* p, long i) { return bf16_to_float(p[i]); }

__device__ __forceinline__ void add_vector(const float* p, long vector_index, float& m, float& s)
{
    float4 v = reinterpret_cast<const float4*>(p)[vector_index];
    online_add(m, s, v.x); online_add(m, s, v.y); online_add(m, s, v.z); online_add(m, s, v.w);
}

__device__ __forceinline__ void add_vector(const bf16_bits* p, long vector_index, float& m, float& s)
{
    uint4 v = reinterpret_cast<const uint4*>(p)[vector_index];
    unsigned int words[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
    for (int w = 0; w < 4; w++)
    {
        online_add(m, s, __uint_as_float(words[w] << 16));          // element 2w   (low half)
        online_add(m, s, __uint_as_float(words[w] & 0xFFFF0000u));  // element 2w+1 (high half)
    }
}

template <typename T>
__device__ void target_logprobs_row(const T* __restrict__ logits, const int* __restrict__ targets, int vocab,
                                    float* __restrict__ log_probs, float* __restrict__ log_sum_exp)
{
    const int per_vector = 16 / (int)sizeof(T);
    const int row = blockIdx.x, tid = threadIdx.x, threads = blockDim.x;
    const T* p = logits + (long)row * vocab;

    // Elements before the first 16-byte boundary, whole vectors, then the tail.
    int head = (int)(((16 - ((unsigned long long)p & 15)) & 15) / sizeof(T));
    if (head > vocab) head = vocab;
    const int vectors = (vocab - head) / per_vector;
    const int tail_start = head + vectors * per_vector;

    float m = negative_infinity(), s = 0.0f;
    for (int v = tid; v < head; v += threads) online_add(m, s, load_one(p, v));
    const T* aligned = p + head;
    for (int v = tid; v < vectors; v += threads) add_vector(aligned, v, m, s);
    for (int v = tail_start + tid; v < vocab; v += threads) online_add(m, s, load_one(p, v));

    // Warp, then block: lane 0 of each warp parks its pair in shared memory, warp 0 merges them.
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        online_merge(m, s, __shfl_xor_sync(0xFFFFFFFFu, m, offset), __shfl_xor_sync(0xFFFFFFFFu, s, offset));
    __shared__ float warp_max[32], warp_sum[32];
    const int warp = tid >> 5, lane = tid & 31, warps = (threads + 31) >> 5;
    if (lane == 0) { warp_max[warp] = m; warp_sum[warp] = s; }
    __syncthreads();
    if (warp == 0)
    {
        m = lane < warps ? warp_max[lane] : negative_infinity();
        s = lane < warps ? warp_sum[lane] : 0.0f;
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1)
            online_merge(m, s, __shfl_xor_sync(0xFFFFFFFFu, m, offset), __shfl_xor_sync(0xFFFFFFFFu, s, offset));
        if (lane == 0)
        {
            float lse = m + logf(s);
            int target = targets[row];
            log_sum_exp[row] = lse;
            log_probs[row] = target < 0 ? 0.0f : load_one(p, target) - lse;
        }
    }
}

extern "C" __global__ void distalign_target_logprobs_bf16(const bf16_bits* __restrict__ logits, const int* __restrict__ targets, int vocab,
                                                          float* __restrict__ log_probs, float* __restrict__ log_sum_exp)
{
    target_logprobs_row(logits, targets, vocab, log_probs, log_sum_exp);
}

extern "C" __global__ void distalign_target_logprobs_f32(const float* __restrict__ logits, const int* __restrict__ targets, int vocab,
                                                         float* __restrict__ log_probs, float* __restrict__ log_sum_exp)
{
    target_logprobs_row(logits, targets, vocab, log_probs, log_sum_exp);
}
