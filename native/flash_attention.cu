// Causal (and segment-masked) attention without the T×T score matrix, on bf16 tensor cores (mma.sync
// m16n8k16, fp32 accumulation): the forward and backward of DistAlign.Kernels.Gpu.GpuAttention for head size 64.
//
// Per batch row b and head h, with q, k, v the hs-wide column blocks of qkv [B, T, 3C] (q at h·hs, k at C + h·hs,
// v at 2C + h·hs), scale = 1/√hs and mask(i, j) = j ≤ i ∧ segment[b, j] = segment[b, i]:
//
//   forward     S = scale·q·kᵀ (masked to −∞), lse_i = log Σ_j exp(S_ij), P = exp(S − lse), out = P·v
//   backward    D_i = Σ_d dout_id·out_id,  dP = dout·vᵀ,  dS = P ∘ (dP − D),
//               dq += scale·dS·k,  dk += scale·dSᵀ·q,  dv += Pᵀ·dout
//
// First, distalign_flash_attention_convert copies q, k, v (and for the backward, dout) once into bf16 scratch
// tensors per head [B, NH, Tp, 64], zero-padded to Tp = T rounded up to 64 rows. Every tile the attention kernels
// read is then 8 KB of contiguous memory, copied into shared memory with 16-byte loads and no bounds checks.
//
// The scores never reach memory: each block streams 64-key (or 64-query) tiles through shared memory and
// keeps a running max and sum per query row (the online softmax), as FlashAttention-2 does. The forward saves
// only lse [B, NH, T] for the backward, which recomputes P tile by tile. The backward is two kernels so that
// every output element has one writer (no atomics, so results are bit-identical run to run): one parallel
// over key tiles (dk, dv: loops over the query tiles at or after it), one over query tiles (dq: loops over the
// key tiles at or before it); both recompute S and P.
//
// Precision: q, k, v, dout, P and dS enter the tensor cores rounded to bf16 (round to nearest even); every
// product is accumulated in fp32, the softmax statistics (max, sum, lse) and D are fp32, outputs are fp32.
// This is the mixed-precision path; DistAlign.Kernels.Gpu.GpuAttention (ILGPU, fp32, scores materialised)
// stays the portable reference and both are checked against the CPU attention.
//
// Launch (all kernels): block = 128 threads (4 warps, each owning 16 rows of a 64-row tile);
//   convert, forward, backward_kv, backward_q: grid = (Tp / 64, NH, B);   backward_delta: grid = (ceil(T·NH / 4), B).
// Shared-memory rows are 72 bf16 (144 bytes) apart, so the 8 row addresses of one ldmatrix hit 8 distinct 4-bank groups.
// Requires hs = 64 and C = NH·64. Compiled at run time by NVRTC for sm_80 or newer (mma.sync with bf16).
// Self-contained: no CUDA headers (bf16 values are handled as bit patterns).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA), lane = 4·g + t (g = lane / 4, t = lane % 4), two 16-bit
// elements per 32-bit register, the lower column (or row, for B) in the low half:
//   A 16×16 (row-major):  a[0] = A[g][2t..2t+1]  a[1] = A[g+8][2t..]  a[2] = A[g][2t+8..]  a[3] = A[g+8][2t+8..]
//   B 16×8  (k × n):      b[0] = B[2t..2t+1][g]  b[1] = B[2t+8..2t+9][g]
//   C 16×8  (fp32):       c[0..1] = C[g][2t..2t+1]  c[2..3] = C[g+8][2t..2t+1]
// So the fp32 accumulator of an S tile (16 rows × 8 columns, n-tiles 2k and 2k+1) is, element for element, the
// A fragment of P for k-step k: P·V needs no shuffles. A B operand whose k index runs along a tile's rows (v in P·v,
// dout in Pᵀ·dout, q in dSᵀ·q, k in dS·k) is read with ldmatrix.trans, which transposes 8×8 blocks on the way
// from shared memory into the fragment; the others are 32-bit pairs of one row.

typedef unsigned short bf16_bits;

#define FA_HEAD 64    // head size hs
#define FA_TILE 64    // rows of a query or key tile
#define FA_THREADS 128
#define FA_PAD 72     // shared-memory row stride in bf16 elements (64 + 8: rows start on different banks)

__device__ __forceinline__ float fa_negative_infinity() { return __uint_as_float(0xFF800000u); }

// fp32 → bf16 bits, round to nearest even (inputs are finite; ±∞ stays ±∞).
__device__ __forceinline__ unsigned int fa_bf16(float x)
{
    unsigned int u = __float_as_uint(x);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return u >> 16;
}

__device__ __forceinline__ unsigned int fa_pack(float low, float high) { return fa_bf16(low) | (fa_bf16(high) << 16); }

__device__ __forceinline__ unsigned int fa_pair(const bf16_bits* p) { return *reinterpret_cast<const unsigned int*>(p); }

// d += A·B for one m16n8k16 tile (bf16 inputs, fp32 accumulation).
__device__ __forceinline__ void fa_mma(float d[4], const unsigned int a[4], const unsigned int b[2])
{
#ifdef DISTALIGN_HOST_EMULATION
    emulated_mma_m16n8k16_bf16(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// B fragments of two adjacent n-tiles (columns col .. col + 15) for a k-step over tile rows row0 .. row0 + 15 of a
// row-major shared tile (B[k][n] = tile[row0 + k][col + n]): ldmatrix.x4.trans, lane l giving the address of row
// row0 + (l mod 16), column col + 8·(l div 16). b[0], b[1]: n-tile at col; b[2], b[3]: n-tile at col + 8.
__device__ __forceinline__ void fa_load_b_transposed(unsigned int b[4], bf16_bits (*tile)[FA_PAD], int row0, int col, int lane)
{
    const bf16_bits* row = &tile[row0 + (lane & 15)][col + 8 * (lane >> 4)];
#ifdef DISTALIGN_HOST_EMULATION
    emulated_ldmatrix_x4_trans(b, row);
#else
    unsigned int address;
    asm volatile("{ .reg .u64 generic; mov.u64 generic, %1; cvta.to.shared.u64 generic, generic; cvt.u32.u64 %0, generic; }"
                 : "=r"(address) : "l"(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(address));
#endif
}

// acc[16 × 64] += P·tile for this warp: P [16 × 64] given as its fp32 accumulator tiles p[0..7] (the C layout, whose
// tiles 2kk and 2kk+1 are exactly the A fragment of k-step kk once rounded to bf16), tile a row-major [64][64] shared
// tile whose rows are P's columns (B operands by ldmatrix.trans). o += P·v, dv += Pᵀ·dout, dk += dSᵀ·q, dq += dS·k.
__device__ __forceinline__ void fa_accumulate_product(float acc[8][4], const float p[8][4], bf16_bits (*tile)[FA_PAD], int lane)
{
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
    {
        unsigned int a[4] = { fa_pack(p[2 * kk][0], p[2 * kk][1]), fa_pack(p[2 * kk][2], p[2 * kk][3]),
                              fa_pack(p[2 * kk + 1][0], p[2 * kk + 1][1]), fa_pack(p[2 * kk + 1][2], p[2 * kk + 1][3]) };
#pragma unroll
        for (int j = 0; j < 8; j += 2)
        {
            unsigned int b[4];
            fa_load_b_transposed(b, tile, 16 * kk, 8 * j, lane);
            fa_mma(acc[j], a, b);
            fa_mma(acc[j + 1], a, b + 2);
        }
    }
}

// The A fragment of rows row0 + g and row0 + g + 8, columns col0 .. col0 + 15, of a bf16 [rows][64] tensor.
__device__ __forceinline__ void fa_load_a(unsigned int a[4], const bf16_bits* m, int row0, int col0, int g, int t)
{
    const bf16_bits* p = m + (long)(row0 + g) * FA_HEAD + col0 + 2 * t;
    a[0] = fa_pair(p);
    a[1] = fa_pair(p + 8 * FA_HEAD);
    a[2] = fa_pair(p + 8);
    a[3] = fa_pair(p + 8 * FA_HEAD + 8);
}

// 64 rows of 64 bf16 (128 bytes each, consecutive rows `stride` elements apart) into shared memory, 16 bytes per
// load; all 128 threads take part.
__device__ __forceinline__ void fa_copy_tile(const bf16_bits* source, long stride, bf16_bits (*tile)[FA_PAD])
{
    for (int i = threadIdx.x; i < FA_TILE * FA_HEAD / 8; i += FA_THREADS)
    {
        int r = i / (FA_HEAD / 8), c = 8 * (i % (FA_HEAD / 8));
        *reinterpret_cast<uint4*>(&tile[r][c]) = *reinterpret_cast<const uint4*>(source + (long)r * stride + c);
    }
}

// Whether query i may attend to key j (both < T): causal and, with segment ids, within one segment.
__device__ __forceinline__ bool fa_visible(int i, int j, int has_segments, int segment_i, int segment_j)
{
    return j <= i && (!has_segments || segment_i == segment_j);
}

// One 64-row tile of one head of a row-major fp32 [B, T, stride] tensor (columns col0 + h·64 ..) as bf16 into
// rows_out [B, NH, Tp, 64]; rows ≥ T are zero.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
distalign_flash_attention_convert(const float* __restrict__ source, long stride, int col0, int T, int Tp, int NH,
                                  bf16_bits* __restrict__ rows_out)
{
    const int t0 = blockIdx.x * FA_TILE, h = blockIdx.y, b = blockIdx.z;
    const long head = (long)b * NH + h;
    for (int i = threadIdx.x; i < FA_TILE * FA_HEAD / 2; i += FA_THREADS)
    {
        int r = i / (FA_HEAD / 2), c = 2 * (i % (FA_HEAD / 2)), t = t0 + r;
        unsigned int pair = 0u;
        if (t < T)
        {
            const float* x = source + ((long)b * T + t) * stride + col0 + h * FA_HEAD + c;
            pair = fa_pack(x[0], x[1]);
        }
        *reinterpret_cast<unsigned int*>(rows_out + (head * Tp + t) * FA_HEAD + c) = pair;
    }
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
distalign_flash_attention_forward(const bf16_bits* __restrict__ q_rows, const bf16_bits* __restrict__ k_rows,
                                  const bf16_bits* __restrict__ v_rows, const int* __restrict__ segments, int has_segments,
                                  int T, int Tp, int C, int NH, float scale, float* __restrict__ out, float* __restrict__ lse)
{
    __shared__ bf16_bits keys[FA_TILE][FA_PAD];      // k tile, [key][dim]
    __shared__ bf16_bits values[FA_TILE][FA_PAD];    // v tile, [key][dim]
    __shared__ int key_segment[FA_TILE];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z;
    const int q_block = (gridDim.x - 1 - blockIdx.x) * FA_TILE, q0 = q_block + 16 * warp;   // the longest rows first
    const long head = (long)b * NH + h;
    const int* row_segments = has_segments ? segments + (long)b * T : segments;

    unsigned int q[4][4];   // this warp's 16 query rows, 4 k-steps of 16 dims
#pragma unroll
    for (int kk = 0; kk < 4; kk++) fa_load_a(q[kk], q_rows + head * Tp * FA_HEAD, q0, 16 * kk, g, t);
    int query_segment[2];
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        int row = q0 + g + 8 * half;
        query_segment[half] = has_segments && row < T ? row_segments[row] : 0;
    }

    float running_max[2] = { fa_negative_infinity(), fa_negative_infinity() }, running_sum[2] = { 0.0f, 0.0f };
    float o[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

    const int key_end = T < q_block + FA_TILE ? T : q_block + FA_TILE;
    for (int k0 = 0; k0 < key_end; k0 += FA_TILE)
    {
        __syncthreads();   // the previous tile is no longer read
        fa_copy_tile(k_rows + (head * Tp + k0) * FA_HEAD, FA_HEAD, keys);
        fa_copy_tile(v_rows + (head * Tp + k0) * FA_HEAD, FA_HEAD, values);
        if (threadIdx.x < FA_TILE) key_segment[threadIdx.x] = has_segments && k0 + (int)threadIdx.x < T ? row_segments[k0 + threadIdx.x] : 0;
        __syncthreads();
        if (k0 > q0 + 15) continue;   // every key of the tile is after every query of this warp (warp-uniform)
        // S = q·kᵀ for 16 queries × 64 keys: 8 n-tiles of 8 keys.
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned int kb[2] = { fa_pair(&keys[8 * j + g][16 * kk + 2 * t]), fa_pair(&keys[8 * j + g][16 * kk + 8 + 2 * t]) };
                fa_mma(s[j], q[kk], kb);
            }
        }

        // Scale and mask, then the online softmax update per row (g: half 0, g + 8: half 1).
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            int row = q0 + g + 8 * half;
            float tile_max = fa_negative_infinity();
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    int key = k0 + 8 * j + 2 * t + e;
                    bool visible = key < T && (row >= T || fa_visible(row, key, has_segments, query_segment[half], key_segment[key - k0]));
                    float x = visible ? s[j][2 * half + e] * scale : fa_negative_infinity();
                    s[j][2 * half + e] = x;
                    tile_max = fmaxf(tile_max, x);
                }
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 2));
            float new_max = fmaxf(running_max[half], tile_max);
            float reference = new_max == fa_negative_infinity() ? 0.0f : new_max;   // a row with nothing visible yet
            float rescale = running_max[half] == fa_negative_infinity() ? 0.0f : __expf(running_max[half] - reference);
            running_max[half] = new_max;
            running_sum[half] *= rescale;
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                o[j][2 * half] *= rescale;
                o[j][2 * half + 1] *= rescale;
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    float p = __expf(s[j][2 * half + e] - reference);   // exp(−∞) = 0 for masked keys
                    s[j][2 * half + e] = p;
                    running_sum[half] += p;
                }
            }
        }

        // o += P·v (keys 16kk .. 16kk+15 are k-step kk)
        fa_accumulate_product(o, s, values, lane);
    }

    // out = o / Σ, lse = max + log Σ (the four lanes of a row group hold partial sums of the same row).
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        float sum = running_sum[half];
        sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
        sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
        int row = q0 + g + 8 * half;
        if (row >= T) continue;
        float inverse = 1.0f / sum;
        float* o_row = out + ((long)b * T + row) * C + h * FA_HEAD;
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            o_row[8 * j + 2 * t] = o[j][2 * half] * inverse;
            o_row[8 * j + 2 * t + 1] = o[j][2 * half + 1] * inverse;
        }
        if (t == 0) lse[((long)b * NH + h) * T + row] = running_max[half] + __logf(sum);
    }
}

// D[b, h, i] = Σ_d dout[b, i, h·hs + d]·out[b, i, h·hs + d], one warp per (i, h), fp32.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
distalign_flash_attention_backward_delta(const float* __restrict__ dout, const float* __restrict__ out, int T, int C, int NH,
                                         float* __restrict__ delta)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, b = blockIdx.y;
    const int index = blockIdx.x * (FA_THREADS / 32) + warp;   // i·NH + h
    if (index >= T * NH) return;   // the whole warp leaves together
    const int i = index / NH, h = index % NH;
    const long at = ((long)b * T + i) * C + h * FA_HEAD;
    float sum = dout[at + lane] * out[at + lane] + dout[at + 32 + lane] * out[at + 32 + lane];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
    if (lane == 0) delta[((long)b * NH + h) * T + i] = sum;
}

// dk, dv for one 64-key tile: loops over the query tiles that can see it (query ≥ key). The bf16 inputs are
// q, k, v and dout from distalign_flash_attention_convert; dqkv [B, T, 3C] is accumulated (k at C + h·64, v at 2C + h·64).
// At most 170 registers, so three blocks (12 warps) share a multiprocessor: Nsight Compute measured 176 registers,
// two blocks and 12 % occupancy without the bound, and the kernel waiting on latency.
extern "C" __global__ void __launch_bounds__(FA_THREADS, 3)
distalign_flash_attention_backward_kv(const bf16_bits* __restrict__ q_rows, const bf16_bits* __restrict__ k_rows,
                                      const bf16_bits* __restrict__ v_rows, const bf16_bits* __restrict__ dout_rows,
                                      const int* __restrict__ segments, int has_segments, const float* __restrict__ lse,
                                      const float* __restrict__ delta, int T, int Tp, int C, int NH, float scale, float* __restrict__ dqkv)
{
    __shared__ bf16_bits queries[FA_TILE][FA_PAD];     // [query][dim]
    __shared__ bf16_bits douts[FA_TILE][FA_PAD];       // [query][dim]
    __shared__ float query_lse[FA_TILE], query_delta[FA_TILE];
    __shared__ int query_segment[FA_TILE];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z;
    const int k_block = blockIdx.x * FA_TILE, k0 = k_block + 16 * warp;   // the longest (first) key tiles start first
    const long stride = 3L * C, head = (long)b * NH + h;
    const float* row_lse = lse + head * T;
    const float* row_delta = delta + head * T;
    const int* row_segments = has_segments ? segments + (long)b * T : segments;

    unsigned int k[4][4], v[4][4];   // this warp's 16 keys as A fragments
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
    {
        fa_load_a(k[kk], k_rows + head * Tp * FA_HEAD, k0, 16 * kk, g, t);
        fa_load_a(v[kk], v_rows + head * Tp * FA_HEAD, k0, 16 * kk, g, t);
    }
    int key_segment[2];
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        int key = k0 + g + 8 * half;
        key_segment[half] = has_segments && key < T ? row_segments[key] : 0;
    }
    float dk[8][4], dv[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++)
        for (int e = 0; e < 4; e++) dk[j][e] = dv[j][e] = 0.0f;

    for (int q_tile = k_block; q_tile < T; q_tile += FA_TILE)
    {
        __syncthreads();
        fa_copy_tile(q_rows + (head * Tp + q_tile) * FA_HEAD, FA_HEAD, queries);
        fa_copy_tile(dout_rows + (head * Tp + q_tile) * FA_HEAD, FA_HEAD, douts);
        if (threadIdx.x < FA_TILE)
        {
            int i = q_tile + (int)threadIdx.x;
            query_lse[threadIdx.x] = i < T ? row_lse[i] : 0.0f;
            query_delta[threadIdx.x] = i < T ? row_delta[i] : 0.0f;
            query_segment[threadIdx.x] = has_segments && i < T ? row_segments[i] : 0;
        }
        __syncthreads();

        // Sᵀ = k·qᵀ (16 keys × 64 queries), then Pᵀ = exp(scale·Sᵀ − lse) where visible, else 0.
        float p[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            p[j][0] = p[j][1] = p[j][2] = p[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned int qb[2] = { fa_pair(&queries[8 * j + g][16 * kk + 2 * t]), fa_pair(&queries[8 * j + g][16 * kk + 8 + 2 * t]) };
                fa_mma(p[j], k[kk], qb);
            }
#pragma unroll
            for (int r = 0; r < 4; r++)
            {
                int key = k0 + g + 8 * (r >> 1), local = 8 * j + 2 * t + (r & 1), i = q_tile + local;
                bool visible = i < T && key < T && fa_visible(i, key, has_segments, query_segment[local], key_segment[r >> 1]);
                p[j][r] = visible ? __expf(p[j][r] * scale - query_lse[local]) : 0.0f;
            }
        }

        // dv += Pᵀ·dout (k-steps over the 64 queries).
        fa_accumulate_product(dv, p, douts, lane);

        // dPᵀ = v·doutᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ − D) in place of Pᵀ.
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            float dp[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned int db[2] = { fa_pair(&douts[8 * j + g][16 * kk + 2 * t]), fa_pair(&douts[8 * j + g][16 * kk + 8 + 2 * t]) };
                fa_mma(dp, v[kk], db);
            }
#pragma unroll
            for (int r = 0; r < 4; r++) p[j][r] *= dp[r] - query_delta[8 * j + 2 * t + (r & 1)];
        }

        // dk += dSᵀ·q (scaled at the end).
        fa_accumulate_product(dk, p, queries, lane);
    }

#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        int key = k0 + g + 8 * half;
        if (key >= T) continue;
        float* d_row = dqkv + ((long)b * T + key) * stride + h * FA_HEAD;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                d_row[C + 8 * j + 2 * t + e] += scale * dk[j][2 * half + e];
                d_row[2 * C + 8 * j + 2 * t + e] += dv[j][2 * half + e];
            }
    }
}

// dq for one 64-query tile: loops over the key tiles it can see (key ≤ query); dqkv's q columns are accumulated.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
distalign_flash_attention_backward_q(const bf16_bits* __restrict__ q_rows, const bf16_bits* __restrict__ k_rows,
                                     const bf16_bits* __restrict__ v_rows,
                                     const bf16_bits* __restrict__ dout_rows, const int* __restrict__ segments, int has_segments,
                                     const float* __restrict__ lse, const float* __restrict__ delta, int T, int Tp, int C, int NH,
                                     float scale, float* __restrict__ dqkv)
{
    __shared__ bf16_bits keys[FA_TILE][FA_PAD];     // [key][dim]
    __shared__ bf16_bits values[FA_TILE][FA_PAD];   // [key][dim]
    __shared__ int key_segment[FA_TILE];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z;
    const int q_block = (gridDim.x - 1 - blockIdx.x) * FA_TILE, q0 = q_block + 16 * warp;   // the longest rows first
    const long stride = 3L * C, head = (long)b * NH + h;
    const int* row_segments = has_segments ? segments + (long)b * T : segments;

    unsigned int q[4][4], d_out[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
    {
        fa_load_a(q[kk], q_rows + head * Tp * FA_HEAD, q0, 16 * kk, g, t);
        fa_load_a(d_out[kk], dout_rows + head * Tp * FA_HEAD, q0, 16 * kk, g, t);
    }
    float row_lse[2], row_delta[2];
    int query_segment[2];
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        int row = q0 + g + 8 * half;
        bool inside = row < T;
        row_lse[half] = inside ? lse[head * T + row] : 0.0f;
        row_delta[half] = inside ? delta[head * T + row] : 0.0f;
        query_segment[half] = has_segments && inside ? row_segments[row] : 0;
    }
    float dq[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;

    const int key_end = T < q_block + FA_TILE ? T : q_block + FA_TILE;
    for (int k0 = 0; k0 < key_end; k0 += FA_TILE)
    {
        __syncthreads();
        fa_copy_tile(k_rows + (head * Tp + k0) * FA_HEAD, FA_HEAD, keys);
        fa_copy_tile(v_rows + (head * Tp + k0) * FA_HEAD, FA_HEAD, values);
        if (threadIdx.x < FA_TILE) key_segment[threadIdx.x] = has_segments && k0 + (int)threadIdx.x < T ? row_segments[k0 + threadIdx.x] : 0;
        __syncthreads();
        if (k0 > q0 + 15) continue;   // warp-uniform: nothing visible

        // P = exp(scale·q·kᵀ − lse) where visible; dP = dout·vᵀ; dS = P ∘ (dP − D).
        float ds[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            float s[4] = { 0.0f, 0.0f, 0.0f, 0.0f }, dp[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
            {
                unsigned int kb[2] = { fa_pair(&keys[8 * j + g][16 * kk + 2 * t]), fa_pair(&keys[8 * j + g][16 * kk + 8 + 2 * t]) };
                fa_mma(s, q[kk], kb);
                unsigned int vb[2] = { fa_pair(&values[8 * j + g][16 * kk + 2 * t]), fa_pair(&values[8 * j + g][16 * kk + 8 + 2 * t]) };
                fa_mma(dp, d_out[kk], vb);
            }
#pragma unroll
            for (int r = 0; r < 4; r++)
            {
                int half = r >> 1, row = q0 + g + 8 * half, key = k0 + 8 * j + 2 * t + (r & 1);
                bool visible = row < T && key < T && fa_visible(row, key, has_segments, query_segment[half], key_segment[key - k0]);
                float p = visible ? __expf(s[r] * scale - row_lse[half]) : 0.0f;
                ds[j][r] = p * (dp[r] - row_delta[half]);
            }
        }

        // dq += dS·k (k-steps over the 64 keys; scaled at the end).
        fa_accumulate_product(dq, ds, keys, lane);
    }

#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        int row = q0 + g + 8 * half;
        if (row >= T) continue;
        float* d_row = dqkv + ((long)b * T + row) * stride + h * FA_HEAD;
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            d_row[8 * j + 2 * t] += scale * dq[j][2 * half];
            d_row[8 * j + 2 * t + 1] += scale * dq[j][2 * half + 1];
        }
    }
}
