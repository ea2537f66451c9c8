// Fused target log-probabilities from logits, one pass over the logits:
//
//   lse[r]      = log Σ_v exp(x[r, v])                      (fp32, online max/sum)
//   log_prob[r] = x[r, t_r] − lse[r]        (0 when t_r = −1: an ignored position)
//
// and its backward for the LM head's bf16 GEMMs (distalign_target_logprobs_backward_bf16):
//
//   d(logits)[r, v] = bf16(g_r·(1[v = t_r] − exp(x[r, v] − lse[r])))   for v < V,  0 for V ≤ v < row stride and rows with t_r = −1
//
// Rows are row_stride apart (≥ V: the LM head pads its logits rows to a multiple of 64; columns V … stride − 1 are not
// read by the forward).
// Same contract as DistAlign.Kernels.Cpu.TargetLogProbs.Forward and the ILGPU GpuTargetLogProbs.ForwardKernel
// (the portable path); all three are checked against the same CPU reference. This version exists for speed:
// it reads bf16 logits (half the bytes of fp32) with 16-byte vector loads, two per thread in flight, adds each pair
// of vectors with one max, one (rare) rescale and independent exps (add_values), and merges partial (max, sum)
// pairs with warp shuffles, so one row costs one read of its logits. Statistics are fp32 throughout.
//
// Launch: grid = rows blocks, block = a multiple of 32 threads (≤ 1024); no dynamic shared memory. The backward needs
// row_stride % 4 == 0 and 16-byte aligned logits (it reads four fp32 and writes four bf16 per access).
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

// Adds N values held in registers: their maximum first (a max tree, no exp), one rescale of the running sum when it
// rises (rare once a row's large values have been seen), then N exps that do not depend on each other, summed as a
// tree. Compared with N online_add calls, the N exps are independent (the online form chains each one on the last
// (max, sum)) and no branch depends on the data, so a warp does not diverge on its values.
template <int N>
__device__ __forceinline__ void add_values(float& m, float& s, const float (&x)[N])
{
    float group_max = x[0];
#pragma unroll
    for (int i = 1; i < N; i++) group_max = fmaxf(group_max, x[i]);
    if (group_max > m) { s *= __expf(m - group_max); m = group_max; }   // m = −∞ at first: s = 0·0 = 0
    float e[N];
#pragma unroll
    for (int i = 0; i < N; i++) e[i] = __expf(x[i] - m);
#pragma unroll
    for (int width = N / 2; width > 0; width /= 2)
#pragma unroll
        for (int i = 0; i < width; i++) e[i] += e[i + width];
    s += e[0];
}

// Loads of one element, and the values of one 16-byte vector into registers, per element type.
__device__ __forceinline__ float load_one(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load_one(const bf16_bits* p, long i) { return bf16_to_float(p[i]); }

template <typename T> struct vector_of { static const int size = 16 / (int)sizeof(T); };

__device__ __forceinline__ void load_vector(const float* p, long vector_index, float* x)
{
    float4 v = reinterpret_cast<const float4*>(p)[vector_index];
    x[0] = v.x; x[1] = v.y; x[2] = v.z; x[3] = v.w;
}

__device__ __forceinline__ void load_vector(const bf16_bits* p, long vector_index, float* x)
{
    uint4 v = reinterpret_cast<const uint4*>(p)[vector_index];
    unsigned int words[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
    for (int w = 0; w < 4; w++)
    {
        x[2 * w] = __uint_as_float(words[w] << 16);              // element 2w   (low half)
        x[2 * w + 1] = __uint_as_float(words[w] & 0xFFFF0000u);  // element 2w+1 (high half)
    }
}

template <typename T>
__device__ void target_logprobs_row(const T* __restrict__ logits, const int* __restrict__ targets, int vocab, int row_stride,
                                    float* __restrict__ log_probs, float* __restrict__ log_sum_exp)
{
    const int per_vector = vector_of<T>::size;
    const int row = blockIdx.x, tid = threadIdx.x, threads = blockDim.x;
    const T* p = logits + (long)row * row_stride;

    // Elements before the first 16-byte boundary, whole vectors, then the tail.
    int head = (int)(((16 - ((unsigned long long)p & 15)) & 15) / sizeof(T));
    if (head > vocab) head = vocab;
    const int vectors = (vocab - head) / per_vector;
    const int tail_start = head + vectors * per_vector;

    // Whole vectors two at a time (two 16-byte loads in flight, 2·per_vector values per add_values), then the odd one.
    float m = negative_infinity(), s = 0.0f;
    for (int v = tid; v < head; v += threads) online_add(m, s, load_one(p, v));
    const T* aligned = p + head;
    int v = tid;
    for (; v + threads < vectors; v += 2 * threads)
    {
        float x[2 * vector_of<T>::size];
        load_vector(aligned, v, x);
        load_vector(aligned, v + threads, x + vector_of<T>::size);
        add_values(m, s, x);
    }
    if (v < vectors)
    {
        float x[vector_of<T>::size];
        load_vector(aligned, v, x);
        add_values(m, s, x);
    }
    for (int i = tail_start + tid; i < vocab; i += threads) online_add(m, s, load_one(p, i));

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
                                                          int row_stride, float* __restrict__ log_probs, float* __restrict__ log_sum_exp)
{
    target_logprobs_row(logits, targets, vocab, row_stride, log_probs, log_sum_exp);
}

extern "C" __global__ void distalign_target_logprobs_f32(const float* __restrict__ logits, const int* __restrict__ targets, int vocab,
                                                         int row_stride, float* __restrict__ log_probs, float* __restrict__ log_sum_exp)
{
    target_logprobs_row(logits, targets, vocab, row_stride, log_probs, log_sum_exp);
}

// fp32 → bf16 bits, to nearest with ties to even; NaN stays a quiet NaN of the same sign (as GpuBFloat16.Round).
__device__ __forceinline__ unsigned int float_to_bf16_bits(float x)
{
    unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return ((bits >> 16) | 0x0040u) & 0xFFFFu;
    return (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
}

// One block per row; each thread takes four columns at a time: one 16-byte read of fp32 logits, one 8-byte write of
// bf16 gradients (the columns past V, in the last vector of the row and in the padding, are written as 0 and their
// logits are not used). Same arithmetic as GpuTargetLogProbs.BackwardToBFloat16Kernel: d = −g·exp(x − lse), + g at the target.
extern "C" __global__ void distalign_target_logprobs_backward_bf16(const float* __restrict__ logits, const int* __restrict__ targets,
                                                                   int vocab, int row_stride, const float* __restrict__ log_sum_exp,
                                                                   const float* __restrict__ d_log_probs, uint2* __restrict__ d_logits)
{
    const int row = blockIdx.x;
    const int target = targets[row];
    const float g = target < 0 ? 0.0f : d_log_probs[row], lse = log_sum_exp[row];
    const int vectors = row_stride / 4, real = target < 0 ? 0 : vocab;   // an ignored row is all zeros
    const float4* x = reinterpret_cast<const float4*>(logits + (long)row * row_stride);
    uint2* out = d_logits + (long)row * vectors;                          // four bf16 per 8-byte store
    for (int i = threadIdx.x; i < vectors; i += blockDim.x)
    {
        const int v = 4 * i;
        float d[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
        if (v < real)
        {
            float4 value = x[i];
            float values[4] = { value.x, value.y, value.z, value.w };
#pragma unroll
            for (int k = 0; k < 4; k++)
                if (v + k < real)
                {
                    d[k] = -g * __expf(values[k] - lse);
                    if (v + k == target) d[k] += g;
                }
        }
        uint2 packed;
        packed.x = float_to_bf16_bits(d[0]) | (float_to_bf16_bits(d[1]) << 16);   // the lower address holds the lower column
        packed.y = float_to_bf16_bits(d[2]) | (float_to_bf16_bits(d[3]) << 16);
        out[i] = packed;
    }
}
