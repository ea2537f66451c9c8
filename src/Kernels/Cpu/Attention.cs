using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Causal multi-head self-attention (llm.c layout), with optional packed-sequence segments.
/// Shapes: qkv [B, T, 3C] (per token: q, then k, then v; head h uses channels h·hs … (h+1)·hs − 1 of each,
/// hs = C/NH), att [B, NH, T, T], out [B, T, C], segmentIds empty or [B, T].
/// Forward, for each batch row b, head h and query t:
///   allowed(t, s) = s ≤ t  and (no segments or segment[b, s] = segment[b, t])
///   a[t, s] = softmax_s( q_t·k_s / √hs  over allowed s )    (max subtracted; 0 where not allowed)
///   out[b, t, h] = Σ_s a[t, s]·v_s
/// The probabilities a are saved in att (disallowed entries are exactly 0).
/// Backward, with g = dout[b, t, h]:
///   da[t, s] = g·v_s,  dv_s += a[t, s]·g,
///   dz[t, s] = a[t, s]·(da[t, s] − Σ_r a[t, r]·da[t, r])  where Σ_r a·da = g·out_t  (so no T-long scratch),
///   dq_t += Σ_s dz[t, s]·k_s/√hs,  dk_s += dz[t, s]·q_t/√hs.   All into dqkv, accumulating.
/// Parallel over (b, h): each pair owns disjoint channels of q, k, v, att and out, so there are no races
/// and results are bit-identical for any thread count. For hs = 64 (every GPT-2 size) a pair runs as small
/// matrix products over blocks of 4 queries (<see cref="ForwardHead64"/>, <see cref="BackwardHead64"/>: K or V
/// transposed once, so scores need no horizontal sums, and each key/value row loaded serves 4 queries); other
/// head sizes go one query at a time with short dot/axpy helpers. Every loop runs at the widest accelerated vector width
/// (<see cref="CpuVectors"/>), written once over <see cref="IFloatVector{TSelf}"/>.
/// </summary>
public static class Attention
{
    /// <summary>The head size with a register-blocked fast path (GPT-2's, at every model size).</summary>
    private const int HeadSize64 = 64;

    /// <summary>Computes att (the softmax probabilities) and out.</summary>
    /// <param name="qkv">[B, T, 3C].</param>
    /// <param name="segmentIds">Empty, or [B, T]: tokens attend only within their own segment.</param>
    /// <param name="batch">B.</param>
    /// <param name="seqLen">T.</param>
    /// <param name="heads">NH; C must be a multiple of it.</param>
    /// <param name="attention">[B, NH, T, T], written.</param>
    /// <param name="output">[B, T, C], written.</param>
    public static unsafe void Forward(ReadOnlySpan<float> qkv, ReadOnlySpan<int> segmentIds, int batch, int seqLen, int heads,
                                      Span<float> attention, Span<float> output)
    {
        int c = Validate(qkv.Length, segmentIds.Length, batch, seqLen, heads, attention.Length);
        ShapeCheck.Length(output.Length, (long)batch * seqLen * c, nameof(output), "[B, T, C]");
        if (batch == 0 || seqLen == 0) return;
        int t = seqLen, hs = c / heads, c3 = 3 * c;
        float scale = 1f / MathF.Sqrt(hs);
        bool segmented = !segmentIds.IsEmpty;
        fixed (float* pq = qkv, pa = attention, po = output)
        fixed (int* ps = segmentIds)
        {
            float* xq = pq, xa = pa, xo = po;
            int* xs = ps;
            if (hs == HeadSize64)
            {
                ForEachHead64(batch * heads, t, (bh, transposed, blockRows, paddedT) =>
                {
                    int b = bh / heads, h = bh % heads;
                    ForwardHead64(xq + (long)b * t * c3 + h * hs, c, t, segmented ? xs + (long)b * t : null,
                                  xa + (long)bh * t * t, xo + (long)b * t * c + h * hs, scale, transposed, blockRows, paddedT);
                });
                return;
            }
            CpuParallel.For(batch * heads, 1, (start, end) =>
            {
                for (int bh = start; bh < end; bh++)
                {
                    int b = bh / heads, h = bh % heads;
                    ForwardHead(xq + (long)b * t * c3 + h * hs, c, hs, t, segmented ? xs + (long)b * t : null,
                                xa + (long)bh * t * t, xo + (long)b * t * c + h * hs, scale);
                }
            });
        }
    }

    /// <summary>One (b, h) of the forward for any head size, one query at a time: token0 is q of token 0, att the pair's [T, T]
    /// probabilities, out0 the pair's output of token 0, seg the row's segment ids or null.</summary>
    private static unsafe void ForwardHead(float* token0, int c, int hs, int t, int* seg, float* att, float* out0, float scale)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: ForwardHead<Vector512Lanes>(token0, c, hs, t, seg, att, out0, scale); break;
            case VectorWidth.Vector256: ForwardHead<Vector256Lanes>(token0, c, hs, t, seg, att, out0, scale); break;
            case VectorWidth.Vector128: ForwardHead<Vector128Lanes>(token0, c, hs, t, seg, att, out0, scale); break;
            default: ForwardHead<ScalarLanes>(token0, c, hs, t, seg, att, out0, scale); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void ForwardHead<TVector>(float* token0, int c, int hs, int t, int* seg, float* att, float* out0, float scale)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int c3 = 3 * c;
        for (int tq = 0; tq < t; tq++)
        {
            float* qp = token0 + (long)tq * c3;
            var row = new Span<float>(att + (long)tq * t, t);
            for (int s = 0; s <= tq; s++)
                row[s] = seg is not null && seg[s] != seg[tq]
                    ? float.NegativeInfinity
                    : Dot<TVector>(qp, token0 + (long)s * c3 + c, hs) * scale;
            var live = row[..(tq + 1)];
            SoftmaxInPlace(live);
            row[(tq + 1)..].Clear();

            float* o = out0 + (long)tq * c;
            new Span<float>(o, hs).Clear();
            for (int s = 0; s <= tq; s++)
            {
                float a = live[s];
                if (a != 0f) Axpy<TVector>(a, token0 + (long)s * c3 + 2 * c, o, hs);
            }
        }
    }

    /// <summary>Queries per block of the hs = 64 forward: each key vector loaded is used by this many queries.</summary>
    private const int QueryBlock = 4;

    /// <summary>a = softmax(row) in place; the row's maximum is finite (the diagonal is always allowed), −∞ entries give 0.</summary>
    private static void SoftmaxInPlace(Span<float> live)
    {
        float max = TensorPrimitives.Max(live);
        TensorPrimitives.Subtract(live, max, live);
        TensorPrimitives.Exp(live, live);                // disallowed: exp(−∞) = 0
        TensorPrimitives.Multiply(live, 1f / TensorPrimitives.Sum(live), live);
    }

    /// <summary>The work of one (b, h) pair of the hs = 64 path, given its scratch: Kᵀ or Vᵀ [64, paddedT] and [4, paddedT] block rows.</summary>
    private unsafe delegate void Head64Work(int bh, float* transposed, float* blockRows, int paddedT);

    /// <summary>
    /// Runs <paramref name="work"/> for every (b, h) pair, split over the threads as <see cref="CpuParallel.For"/> does,
    /// each range with its own line-aligned scratch (pooled): T rounded up to 16 keys, 64 transposed rows plus
    /// <see cref="QueryBlock"/> rows of scores.
    /// </summary>
    private static unsafe void ForEachHead64(int pairs, int t, Head64Work work) =>
        CpuParallel.For(pairs, 1, (start, end) =>
        {
            int paddedT = (t + 15) & ~15;
            float[] scratch = ArrayPool<float>.Shared.Rent((HeadSize64 + QueryBlock) * paddedT + 16);
            try
            {
                fixed (float* p = scratch)
                {
                    float* transposed = (float*)(((nint)p + 63) & ~(nint)63);
                    for (int bh = start; bh < end; bh++) work(bh, transposed, transposed + HeadSize64 * paddedT, paddedT);
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(scratch);
            }
        });

    /// <summary>transposed[d, s] = row_s[d] for s &lt; t (row_s at rows + s·stride), and 0 for t ≤ s &lt; paddedT.</summary>
    private static unsafe void TransposeHead64(float* rows, int stride, int t, float* transposed, int paddedT)
    {
        for (int s = 0; s < t; s++)
        {
            float* row = rows + (long)s * stride;
            for (int d = 0; d < HeadSize64; d++) transposed[d * paddedT + s] = row[d];
        }
        for (int d = 0; d < HeadSize64; d++)
            for (int s = t; s < paddedT; s++) transposed[d * paddedT + s] = 0f;
    }

    /// <summary>
    /// Vectors of one 64-float row that the hs = 64 kernels hold per row in registers at a time: 4 at Vector512 (the whole
    /// row; 16 accumulators for 4 rows, of 32 zmm registers), 2 at the narrower widths (16 registers: 4 rows × 2 accumulators
    /// plus operands fit). A row of 64 floats is then 64/(Count·this) column chunks, each its own pass over the keys.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int VectorsPerChunk<TVector>() where TVector : unmanaged, IFloatVector<TVector> => TVector.Count == 16 ? 4 : 2;

    /// <summary>
    /// result[r, s] = scale·Σ_d x_r[d]·transposed[d, s] for the four rows x_r and s &lt; keys rounded up to 16 (4 rows ×
    /// 16 keys per step: one vector of the transposed matrix serves four FMAs, no horizontal sums; below Vector512 each step
    /// is two vectors of keys, so 8 independent accumulators hide the FMA latency). result is [4, paddedT].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void RowsTimesTransposed64<TVector>(float* x0, float* x1, float* x2, float* x3, float* transposed, int paddedT, int keys,
                                                              float scale, float* result) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        bool pair = width < 16;   // JIT-time constant
        int step = pair ? 2 * width : width;   // divides 16, so a step never passes paddedT
        var vScale = TVector.Create(scale);
        for (int s0 = 0; s0 < keys; s0 += step)
        {
            TVector acc0 = TVector.Zero, acc1 = acc0, acc2 = acc0, acc3 = acc0, acc4 = acc0, acc5 = acc0, acc6 = acc0, acc7 = acc0;
            float* column = transposed + s0;
            for (int d = 0; d < HeadSize64; d++, column += paddedT)
            {
                var y = TVector.Load(column);
                TVector b0 = TVector.Create(x0[d]), b1 = TVector.Create(x1[d]), b2 = TVector.Create(x2[d]), b3 = TVector.Create(x3[d]);
                acc0 = TVector.MultiplyAdd(b0, y, acc0);
                acc1 = TVector.MultiplyAdd(b1, y, acc1);
                acc2 = TVector.MultiplyAdd(b2, y, acc2);
                acc3 = TVector.MultiplyAdd(b3, y, acc3);
                if (pair)
                {
                    var z = TVector.Load(column + width);
                    acc4 = TVector.MultiplyAdd(b0, z, acc4);
                    acc5 = TVector.MultiplyAdd(b1, z, acc5);
                    acc6 = TVector.MultiplyAdd(b2, z, acc6);
                    acc7 = TVector.MultiplyAdd(b3, z, acc7);
                }
            }
            (acc0 * vScale).Store(result + s0);
            (acc1 * vScale).Store(result + paddedT + s0);
            (acc2 * vScale).Store(result + 2 * paddedT + s0);
            (acc3 * vScale).Store(result + 3 * paddedT + s0);
            if (pair)
            {
                (acc4 * vScale).Store(result + s0 + width);
                (acc5 * vScale).Store(result + paddedT + s0 + width);
                (acc6 * vScale).Store(result + 2 * paddedT + s0 + width);
                (acc7 * vScale).Store(result + 3 * paddedT + s0 + width);
            }
        }
    }

    /// <summary>
    /// y_r = Σ_{s &lt; keys} w_r[s]·row_s for the four weight rows (row_s at rows + s·stride; s with all four weights 0
    /// skipped; sums in s order; per column chunk (<see cref="VectorsPerChunk{TVector}"/>) 4 rows of accumulators and one
    /// load of row_s per four rows). Then for each r &lt; count: dest_r = y_r (store) or dest_r += y_r (accumulate), dest_r at
    /// dest + r·destStride.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void WeightedRowSums64<TVector>(float* w0, float* w1, float* w2, float* w3, float* rows, int stride, int keys,
                                                          float* dest, int destStride, int count, bool accumulate)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        bool four = VectorsPerChunk<TVector>() == 4;   // JIT-time constant
        int chunkLength = VectorsPerChunk<TVector>() * width;
        for (int chunk = 0; chunk < HeadSize64; chunk += chunkLength)
        {
            TVector y00 = TVector.Zero, y01 = y00, y02 = y00, y03 = y00;
            TVector y10 = y00, y11 = y00, y12 = y00, y13 = y00;
            TVector y20 = y00, y21 = y00, y22 = y00, y23 = y00;
            TVector y30 = y00, y31 = y00, y32 = y00, y33 = y00;
            for (int s = 0; s < keys; s++)
            {
                float a = w0[s], b = w1[s], c = w2[s], d = w3[s];
                if (a == 0f && b == 0f && c == 0f && d == 0f) continue;   // another segment for all four rows
                float* row = rows + (long)s * stride + chunk;
                var r0 = TVector.Load(row); var r1 = TVector.Load(row + width);
                TVector r2 = default, r3 = default;
                if (four)
                {
                    r2 = TVector.Load(row + 2 * width); r3 = TVector.Load(row + 3 * width);
                }
                var va = TVector.Create(a);
                y00 = TVector.MultiplyAdd(va, r0, y00); y01 = TVector.MultiplyAdd(va, r1, y01);
                if (four) { y02 = TVector.MultiplyAdd(va, r2, y02); y03 = TVector.MultiplyAdd(va, r3, y03); }
                var vb = TVector.Create(b);
                y10 = TVector.MultiplyAdd(vb, r0, y10); y11 = TVector.MultiplyAdd(vb, r1, y11);
                if (four) { y12 = TVector.MultiplyAdd(vb, r2, y12); y13 = TVector.MultiplyAdd(vb, r3, y13); }
                var vc = TVector.Create(c);
                y20 = TVector.MultiplyAdd(vc, r0, y20); y21 = TVector.MultiplyAdd(vc, r1, y21);
                if (four) { y22 = TVector.MultiplyAdd(vc, r2, y22); y23 = TVector.MultiplyAdd(vc, r3, y23); }
                var vd = TVector.Create(d);
                y30 = TVector.MultiplyAdd(vd, r0, y30); y31 = TVector.MultiplyAdd(vd, r1, y31);
                if (four) { y32 = TVector.MultiplyAdd(vd, r2, y32); y33 = TVector.MultiplyAdd(vd, r3, y33); }
            }
            float* target = dest + chunk;
            WriteChunk(target, y00, y01, y02, y03, accumulate);
            if (count > 1) WriteChunk(target + destStride, y10, y11, y12, y13, accumulate);
            if (count > 2) WriteChunk(target + 2L * destStride, y20, y21, y22, y23, accumulate);
            if (count > 3) WriteChunk(target + 3L * destStride, y30, y31, y32, y33, accumulate);
        }
    }

    /// <summary>One column chunk of a row (<see cref="VectorsPerChunk{TVector}"/> vectors: r0, r1, and r2, r3 at Vector512) = the vectors, or += when <paramref name="accumulate"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void WriteChunk<TVector>(float* row, TVector r0, TVector r1, TVector r2, TVector r3, bool accumulate)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        bool four = VectorsPerChunk<TVector>() == 4;
        if (accumulate)
        {
            r0 += TVector.Load(row); r1 += TVector.Load(row + width);
            if (four)
            {
                r2 += TVector.Load(row + 2 * width); r3 += TVector.Load(row + 3 * width);
            }
        }
        r0.Store(row); r1.Store(row + width);
        if (four)
        {
            r2.Store(row + 2 * width); r3.Store(row + 3 * width);
        }
    }

    /// <summary>
    /// One (b, h) of the forward for hs = 64, as small matrix products instead of one dot product per score:
    /// <code>
    /// Kᵀ[d, s] = k_s[d]                            (transposed once into scratch, zero-padded to a multiple of 16 keys)
    /// S[r, s] = scale·Σ_d q_r[d]·Kᵀ[d, s]          (<see cref="RowsTimesTransposed64"/>, 4 queries at a time)
    /// a_r = softmax(S[r, 0..t_r], masked)          (saved into att; 0 past the diagonal and across segments)
    /// out_r = Σ_s a_r[s]·v_s                       (<see cref="WeightedRowSums64"/>: 4 queries share each v_s load)
    /// </code>
    /// The sums over d and over s run in a fixed order, so results do not depend on the thread count.
    /// </summary>
    private static unsafe void ForwardHead64(float* token0, int c, int t, int* seg, float* att, float* out0, float scale,
                                             float* keysTransposed, float* scores, int paddedT)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: ForwardHead64<Vector512Lanes>(token0, c, t, seg, att, out0, scale, keysTransposed, scores, paddedT); break;
            case VectorWidth.Vector256: ForwardHead64<Vector256Lanes>(token0, c, t, seg, att, out0, scale, keysTransposed, scores, paddedT); break;
            case VectorWidth.Vector128: ForwardHead64<Vector128Lanes>(token0, c, t, seg, att, out0, scale, keysTransposed, scores, paddedT); break;
            default: ForwardHead64<ScalarLanes>(token0, c, t, seg, att, out0, scale, keysTransposed, scores, paddedT); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void ForwardHead64<TVector>(float* token0, int c, int t, int* seg, float* att, float* out0, float scale,
                                                      float* keysTransposed, float* scores, int paddedT) where TVector : unmanaged, IFloatVector<TVector>
    {
        int c3 = 3 * c;
        TransposeHead64(token0 + c, c3, t, keysTransposed, paddedT);
        for (int tq0 = 0; tq0 < t; tq0 += QueryBlock)
        {
            int rows = Math.Min(QueryBlock, t - tq0), keys = tq0 + rows;
            // Missing rows of a short last block repeat the last query; their results are never stored.
            RowsTimesTransposed64<TVector>(token0 + (long)tq0 * c3, token0 + (long)(tq0 + Math.Min(1, rows - 1)) * c3,
                                  token0 + (long)(tq0 + Math.Min(2, rows - 1)) * c3, token0 + (long)(tq0 + Math.Min(3, rows - 1)) * c3,
                                  keysTransposed, paddedT, keys, scale, scores);
            for (int r = 0; r < QueryBlock; r++)
            {
                float* scoreRow = scores + r * paddedT;
                if (r >= rows)
                {
                    new Span<float>(scoreRow, keys).Clear();   // a zero weight row for the product below
                    continue;
                }
                int tq = tq0 + r;
                if (seg is not null)
                    for (int s = 0; s <= tq; s++)
                        if (seg[s] != seg[tq]) scoreRow[s] = float.NegativeInfinity;
                var row = new Span<float>(att + (long)tq * t, t);
                var live = row[..(tq + 1)];
                new ReadOnlySpan<float>(scoreRow, tq + 1).CopyTo(live);
                SoftmaxInPlace(live);
                row[(tq + 1)..].Clear();
            }
            // out_r = Σ_s a_r[s]·v_s over s < keys (a_r[s] = 0 past row r's diagonal; missing rows weigh 0).
            float* a0 = att + (long)tq0 * t, zero = scores + 3 * paddedT;
            WeightedRowSums64<TVector>(a0, rows > 1 ? a0 + t : zero, rows > 2 ? a0 + 2 * t : zero, rows > 3 ? a0 + 3 * t : zero,
                              token0 + 2 * c, c3, keys, out0 + (long)tq0 * c, c, rows, accumulate: false);
        }
    }

    /// <summary>
    /// Accumulates d(qkv) from d(out), using the forward's qkv, att and out (out must be exactly what the
    /// forward wrote: it supplies Σ_r a·da = dout·out). Segment ids are not needed again: the saved att is
    /// exactly 0 wherever attention was not allowed, and those entries are skipped.
    /// </summary>
    /// <param name="dOutput">[B, T, C].</param>
    /// <param name="qkv">[B, T, 3C], the forward's input.</param>
    /// <param name="attention">[B, NH, T, T], the forward's saved probabilities.</param>
    /// <param name="output">[B, T, C], the forward's output.</param>
    /// <param name="batch">B.</param>
    /// <param name="seqLen">T.</param>
    /// <param name="heads">NH.</param>
    /// <param name="dQkv">[B, T, 3C], accumulated into.</param>
    public static unsafe void Backward(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> qkv, ReadOnlySpan<float> attention,
                                       ReadOnlySpan<float> output, int batch, int seqLen, int heads, Span<float> dQkv)
    {
        int c = Validate(qkv.Length, 0, batch, seqLen, heads, attention.Length);
        ShapeCheck.Length(output.Length, (long)batch * seqLen * c, nameof(output), "[B, T, C]");
        ShapeCheck.Length(dOutput.Length, (long)batch * seqLen * c, nameof(dOutput), "[B, T, C]");
        ShapeCheck.Length(dQkv.Length, qkv.Length, nameof(dQkv), "[B, T, 3C]");
        if (batch == 0 || seqLen == 0) return;
        int t = seqLen, hs = c / heads, c3 = 3 * c;
        float scale = 1f / MathF.Sqrt(hs);
        fixed (float* pd = dOutput, pq = qkv, pa = attention, po = output, pdq = dQkv)
        {
            float* xd = pd, xq = pq, xa = pa, xo = po, xdq = pdq;
            if (hs == HeadSize64)
            {
                ForEachHead64(batch * heads, t, (bh, transposed, blockRows, paddedT) =>
                {
                    int b = bh / heads, h = bh % heads;
                    long token0 = (long)b * t * c3 + h * hs, out0 = (long)b * t * c + h * hs;
                    BackwardHead64(xd + out0, xo + out0, xq + token0, xdq + token0, xa + (long)bh * t * t, c, t, scale, transposed, blockRows, paddedT);
                });
                return;
            }
            CpuParallel.For(batch * heads, 1, (start, end) =>
            {
                for (int bh = start; bh < end; bh++)
                {
                    int b = bh / heads, h = bh % heads;
                    long token0 = (long)b * t * c3 + h * hs, out0 = (long)b * t * c + h * hs;
                    BackwardHead(xd + out0, xo + out0, xq + token0, xdq + token0, xa + (long)bh * t * t, c, hs, t, scale);
                }
            });
        }
    }

    /// <summary>One (b, h) of the backward for any head size, one query at a time (pointers as in <see cref="BackwardHead64"/>).</summary>
    private static unsafe void BackwardHead(float* dOut0, float* out0, float* token0, float* dToken0, float* att, int c, int hs, int t, float scale)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: BackwardHead<Vector512Lanes>(dOut0, out0, token0, dToken0, att, c, hs, t, scale); break;
            case VectorWidth.Vector256: BackwardHead<Vector256Lanes>(dOut0, out0, token0, dToken0, att, c, hs, t, scale); break;
            case VectorWidth.Vector128: BackwardHead<Vector128Lanes>(dOut0, out0, token0, dToken0, att, c, hs, t, scale); break;
            default: BackwardHead<ScalarLanes>(dOut0, out0, token0, dToken0, att, c, hs, t, scale); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void BackwardHead<TVector>(float* dOut0, float* out0, float* token0, float* dToken0, float* att, int c, int hs, int t, float scale)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int c3 = 3 * c;
        for (int tq = 0; tq < t; tq++)
        {
            float* g = dOut0 + (long)tq * c;
            float weighted = Dot<TVector>(g, out0 + (long)tq * c, hs);   // Σ_r a·da = dout·out
            float* q = token0 + (long)tq * c3;
            float* dq = dToken0 + (long)tq * c3;
            float* row = att + (long)tq * t;
            for (int s = 0; s <= tq; s++)
            {
                float a = row[s];
                if (a == 0f) continue;   // disallowed (or underflowed): contributes exactly nothing
                long ks = (long)s * c3 + c, vs = ks + c;
                float da = Dot<TVector>(g, token0 + vs, hs);
                Axpy<TVector>(a, g, dToken0 + vs, hs);                 // dv_s += a·g
                float dz = a * (da - weighted) * scale;
                Axpy<TVector>(dz, token0 + ks, dq, hs);                // dq_t += dz·k_s
                Axpy<TVector>(dz, q, dToken0 + ks, hs);                // dk_s += dz·q_t
            }
        }
    }

    /// <summary>
    /// One (b, h) of the backward for hs = 64, blocks of 4 queries, as small matrix products:
    /// <code>
    /// Vᵀ[d, s] = v_s[d]                                   (transposed once, zero-padded to a multiple of 16 keys)
    /// dA[r, s] = Σ_d g_r[d]·Vᵀ[d, s]                      (g = dout; <see cref="RowsTimesTransposed64"/>)
    /// dz[r, s] = a_r[s]·(dA[r, s] − g_r·out_r)·scale        (in place over dA; 0 wherever a is 0)
    /// dq_r += Σ_s dz[r, s]·k_s                             (<see cref="WeightedRowSums64"/>)
    /// dk_s += Σ_r dz[r, s]·q_r,   dv_s += Σ_r a_r[s]·g_r    (<see cref="AccumulateOuter64"/>: rows in registers)
    /// </code>
    /// Every sum runs in a fixed order (for a given dk_s or dv_s: queries in increasing order, as the
    /// one-query-at-a-time loop did), so results do not depend on the thread count.
    /// </summary>
    private static unsafe void BackwardHead64(float* dOut0, float* out0, float* token0, float* dToken0, float* att, int c, int t, float scale,
                                              float* valuesTransposed, float* dScores, int paddedT)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: BackwardHead64<Vector512Lanes>(dOut0, out0, token0, dToken0, att, c, t, scale, valuesTransposed, dScores, paddedT); break;
            case VectorWidth.Vector256: BackwardHead64<Vector256Lanes>(dOut0, out0, token0, dToken0, att, c, t, scale, valuesTransposed, dScores, paddedT); break;
            case VectorWidth.Vector128: BackwardHead64<Vector128Lanes>(dOut0, out0, token0, dToken0, att, c, t, scale, valuesTransposed, dScores, paddedT); break;
            default: BackwardHead64<ScalarLanes>(dOut0, out0, token0, dToken0, att, c, t, scale, valuesTransposed, dScores, paddedT); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void BackwardHead64<TVector>(float* dOut0, float* out0, float* token0, float* dToken0, float* att, int c, int t, float scale,
                                                       float* valuesTransposed, float* dScores, int paddedT) where TVector : unmanaged, IFloatVector<TVector>
    {
        int c3 = 3 * c;
        TransposeHead64(token0 + 2 * c, c3, t, valuesTransposed, paddedT);
        for (int tq0 = 0; tq0 < t; tq0 += QueryBlock)
        {
            int rows = Math.Min(QueryBlock, t - tq0), keys = tq0 + rows;
            // Missing rows of a short last block repeat the last query; their dz is set to 0, so they add nothing.
            int last = rows - 1;
            float* g0 = dOut0 + (long)tq0 * c, g1 = dOut0 + (long)(tq0 + Math.Min(1, last)) * c;
            float* g2 = dOut0 + (long)(tq0 + Math.Min(2, last)) * c, g3 = dOut0 + (long)(tq0 + Math.Min(3, last)) * c;
            RowsTimesTransposed64<TVector>(g0, g1, g2, g3, valuesTransposed, paddedT, keys, 1f, dScores);
            for (int r = 0; r < QueryBlock; r++)
            {
                float* dz = dScores + r * paddedT;
                if (r >= rows)
                {
                    new Span<float>(dz, keys).Clear();
                    continue;
                }
                int tq = tq0 + r;
                float weighted = Dot<TVector>(dOut0 + (long)tq * c, out0 + (long)tq * c, HeadSize64);   // Σ_s a·dA = dout·out
                float* a = att + (long)tq * t;
                for (int s = 0; s <= tq; s++) dz[s] = a[s] == 0f ? 0f : a[s] * (dz[s] - weighted) * scale;
                for (int s = tq + 1; s < keys; s++) dz[s] = 0f;
            }
            float* dz0 = dScores, dz1 = dScores + paddedT, dz2 = dScores + 2 * paddedT, dz3 = dScores + 3 * paddedT;
            WeightedRowSums64<TVector>(dz0, dz1, dz2, dz3, token0 + c, c3, keys, dToken0 + (long)tq0 * c3, c3, rows, accumulate: true);
            float* q0 = token0 + (long)tq0 * c3, q1 = token0 + (long)(tq0 + Math.Min(1, last)) * c3;
            float* q2 = token0 + (long)(tq0 + Math.Min(2, last)) * c3, q3 = token0 + (long)(tq0 + Math.Min(3, last)) * c3;
            AccumulateOuter64<TVector>(dz0, dz1, dz2, dz3, q0, q1, q2, q3, dToken0 + c, c3, keys);
            // Missing rows weigh 0: dz3 is all 0 whenever rows < 4.
            float* a0 = att + (long)tq0 * t;
            AccumulateOuter64<TVector>(a0, rows > 1 ? a0 + t : dz3, rows > 2 ? a0 + 2 * t : dz3, rows > 3 ? a0 + 3 * t : dz3, g0, g1, g2, g3,
                              dToken0 + 2 * c, c3, keys);
        }
    }

    /// <summary>
    /// For s &lt; keys: target_s += w0[s]·x0 + w1[s]·x1 + w2[s]·x2 + w3[s]·x3 (in that order), where target_s is 64 floats at
    /// target + s·stride and x0..x3 are 64-float rows held in registers, one column chunk (<see cref="VectorsPerChunk{TVector}"/>)
    /// at a time; s with all four weights 0 is skipped.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void AccumulateOuter64<TVector>(float* w0, float* w1, float* w2, float* w3, float* x0, float* x1, float* x2, float* x3,
                                                          float* target, int stride, int keys) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        bool four = VectorsPerChunk<TVector>() == 4;   // JIT-time constant
        int chunkLength = VectorsPerChunk<TVector>() * width;
        for (int chunk = 0; chunk < HeadSize64; chunk += chunkLength)
        {
            float* p0 = x0 + chunk, p1 = x1 + chunk, p2 = x2 + chunk, p3 = x3 + chunk;
            var x00 = TVector.Load(p0); var x01 = TVector.Load(p0 + width);
            var x10 = TVector.Load(p1); var x11 = TVector.Load(p1 + width);
            var x20 = TVector.Load(p2); var x21 = TVector.Load(p2 + width);
            var x30 = TVector.Load(p3); var x31 = TVector.Load(p3 + width);
            TVector x02 = default, x03 = default, x12 = default, x13 = default, x22 = default, x23 = default, x32 = default, x33 = default;
            if (four)
            {
                x02 = TVector.Load(p0 + 2 * width); x03 = TVector.Load(p0 + 3 * width);
                x12 = TVector.Load(p1 + 2 * width); x13 = TVector.Load(p1 + 3 * width);
                x22 = TVector.Load(p2 + 2 * width); x23 = TVector.Load(p2 + 3 * width);
                x32 = TVector.Load(p3 + 2 * width); x33 = TVector.Load(p3 + 3 * width);
            }
            for (int s = 0; s < keys; s++)
            {
                float a = w0[s], b = w1[s], c = w2[s], d = w3[s];
                if (a == 0f && b == 0f && c == 0f && d == 0f) continue;
                float* y = target + (long)s * stride + chunk;
                TVector va = TVector.Create(a), vb = TVector.Create(b), vc = TVector.Create(c), vd = TVector.Create(d);
                TVector.MultiplyAdd(vd, x30, TVector.MultiplyAdd(vc, x20, TVector.MultiplyAdd(vb, x10, TVector.MultiplyAdd(va, x00, TVector.Load(y))))).Store(y);
                TVector.MultiplyAdd(vd, x31, TVector.MultiplyAdd(vc, x21, TVector.MultiplyAdd(vb, x11, TVector.MultiplyAdd(va, x01, TVector.Load(y + width))))).Store(y + width);
                if (four)
                {
                    float* y2 = y + 2 * width, y3 = y + 3 * width;
                    TVector.MultiplyAdd(vd, x32, TVector.MultiplyAdd(vc, x22, TVector.MultiplyAdd(vb, x12, TVector.MultiplyAdd(va, x02, TVector.Load(y2))))).Store(y2);
                    TVector.MultiplyAdd(vd, x33, TVector.MultiplyAdd(vc, x23, TVector.MultiplyAdd(vb, x13, TVector.MultiplyAdd(va, x03, TVector.Load(y3))))).Store(y3);
                }
            }
        }
    }

    /// <summary>Σ a[i]·b[i] over one head (hs is small, typically 64: an inline vector loop beats a library call per pair).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe float Dot<TVector>(float* a, float* b, int length) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count, i = 0;
        float sum = 0f;
        if (length >= width)
        {
            var acc = TVector.Zero;
            for (; i <= length - width; i += width) acc = TVector.MultiplyAdd(TVector.Load(a + i), TVector.Load(b + i), acc);
            sum = TVector.Sum(acc);
        }
        for (; i < length; i++) sum = MathF.FusedMultiplyAdd(a[i], b[i], sum);
        return sum;
    }

    /// <summary>y[i] += alpha·x[i] over one head.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void Axpy<TVector>(float alpha, float* x, float* y, int length) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count, i = 0;
        var va = TVector.Create(alpha);
        for (; i <= length - width; i += width) TVector.MultiplyAdd(va, TVector.Load(x + i), TVector.Load(y + i)).Store(y + i);
        for (; i < length; i++) y[i] = MathF.FusedMultiplyAdd(alpha, x[i], y[i]);
    }

    private static int Validate(int qkvLength, int segmentLength, int batch, int seqLen, int heads, int attentionLength)
    {
        ShapeCheck.NonNegative(batch, nameof(batch));
        ShapeCheck.NonNegative(seqLen, nameof(seqLen));
        ShapeCheck.Positive(heads, nameof(heads));
        long tokens = (long)batch * seqLen;
        if (tokens == 0)
        {
            if (qkvLength != 0) throw new ArgumentException("qkv must be empty when B·T = 0.", "qkv");
            return 0;
        }
        if (qkvLength % (3 * tokens) != 0)
            throw new ArgumentException($"qkv has {qkvLength} elements, not 3·C per token for {tokens} tokens.", "qkv");
        int c = (int)(qkvLength / (3 * tokens));
        if (c == 0 || c % heads != 0)
            throw new ArgumentException($"C = {c} (from qkv [B, T, 3C]) must be a positive multiple of NH = {heads}.", nameof(heads));
        if (segmentLength != 0) ShapeCheck.Length(segmentLength, tokens, "segmentIds", "empty or [B, T]");
        ShapeCheck.Length(attentionLength, (long)batch * heads * seqLen * seqLen, "attention", "[B, NH, T, T]");
        return c;
    }
}
