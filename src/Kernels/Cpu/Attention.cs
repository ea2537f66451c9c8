using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

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
/// head sizes go one query at a time with short Vector512 dot/axpy helpers.
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
                CpuParallel.For(batch * heads, 1, (start, end) =>
                {
                    int paddedT = (t + 15) & ~15;
                    float[] scratch = ArrayPool<float>.Shared.Rent((HeadSize64 + QueryBlock) * paddedT + 16);
                    try
                    {
                        fixed (float* pScratch = scratch)
                        {
                            float* keysTransposed = (float*)(((nint)pScratch + 63) & ~(nint)63);   // [64, paddedT], line-aligned
                            float* scores = keysTransposed + HeadSize64 * paddedT;                  // [QueryBlock, paddedT]
                            for (int bh = start; bh < end; bh++)
                            {
                                int b = bh / heads, h = bh % heads;
                                ForwardHead64(xq + (long)b * t * c3 + h * hs, c, t, segmented ? xs + (long)b * t : null,
                                              xa + (long)bh * t * t, xo + (long)b * t * c + h * hs, scale, keysTransposed, scores, paddedT);
                            }
                        }
                    }
                    finally
                    {
                        ArrayPool<float>.Shared.Return(scratch);
                    }
                });
                return;
            }
            CpuParallel.For(batch * heads, 1, (start, end) =>
            {
                for (int bh = start; bh < end; bh++)
                {
                    int b = bh / heads, h = bh % heads;
                    float* token0 = xq + (long)b * t * c3 + h * hs;   // q of token 0 for this (b, h)
                    int* seg = xs + (long)b * t;
                    for (int tq = 0; tq < t; tq++)
                    {
                        float* qp = token0 + (long)tq * c3;
                        var row = new Span<float>(xa + ((long)bh * t + tq) * t, t);
                        for (int s = 0; s <= tq; s++)
                            row[s] = segmented && seg[s] != seg[tq]
                                ? float.NegativeInfinity
                                : Dot(qp, token0 + (long)s * c3 + c, hs) * scale;
                        var live = row[..(tq + 1)];
                        SoftmaxInPlace(live);
                        row[(tq + 1)..].Clear();

                        float* o = xo + ((long)b * t + tq) * c + h * hs;
                        new Span<float>(o, hs).Clear();
                        for (int s = 0; s <= tq; s++)
                        {
                            float a = live[s];
                            if (a != 0f) Axpy(a, token0 + (long)s * c3 + 2 * c, o, hs);
                        }
                    }
                }
            });
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

    /// <summary>
    /// One (b, h) of the forward for hs = 64, as small matrix products instead of one dot product per score:
    /// <code>
    /// Kᵀ[d, s] = k_s[d]                          (transposed once into scratch, zero-padded to a multiple of 16 keys)
    /// S[r, s0:s0+16] = Σ_d q_r[d]·Kᵀ[d, s0:s0+16] (4 queries × 16 keys per step: one key-vector load serves 4 FMAs, no horizontal sums)
    /// a_r = softmax(S[r, 0..t_r]·scale, masked)   (saved into att; 0 past the diagonal and across segments)
    /// out_r = Σ_s a_r[s]·v_s                     (4 queries share each v_s load; 16 accumulators)
    /// </code>
    /// The sums over d and over s run in a fixed order, so results do not depend on the thread count.
    /// </summary>
    private static unsafe void ForwardHead64(float* token0, int c, int t, int* seg, float* att, float* out0, float scale,
                                             float* keysTransposed, float* scores, int paddedT)
    {
        int c3 = 3 * c;
        for (int s = 0; s < t; s++)
        {
            float* k = token0 + (long)s * c3 + c;
            for (int d = 0; d < HeadSize64; d++) keysTransposed[d * paddedT + s] = k[d];
        }
        for (int d = 0; d < HeadSize64; d++)
            for (int s = t; s < paddedT; s++) keysTransposed[d * paddedT + s] = 0f;

        for (int tq0 = 0; tq0 < t; tq0 += QueryBlock)
        {
            int rows = Math.Min(QueryBlock, t - tq0), keys = tq0 + rows;
            // Missing rows of a short last block repeat the last query; their results are never stored.
            float* q0 = token0 + (long)tq0 * c3;
            float* q1 = token0 + (long)(tq0 + Math.Min(1, rows - 1)) * c3;
            float* q2 = token0 + (long)(tq0 + Math.Min(2, rows - 1)) * c3;
            float* q3 = token0 + (long)(tq0 + Math.Min(3, rows - 1)) * c3;
            var vScale = Vector512.Create(scale);
            for (int s0 = 0; s0 < keys; s0 += 16)
            {
                Vector512<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
                float* kt = keysTransposed + s0;
                for (int d = 0; d < HeadSize64; d++, kt += paddedT)
                {
                    var kv = Vector512.Load(kt);
                    acc0 = Vector512.FusedMultiplyAdd(Vector512.Create(q0[d]), kv, acc0);
                    acc1 = Vector512.FusedMultiplyAdd(Vector512.Create(q1[d]), kv, acc1);
                    acc2 = Vector512.FusedMultiplyAdd(Vector512.Create(q2[d]), kv, acc2);
                    acc3 = Vector512.FusedMultiplyAdd(Vector512.Create(q3[d]), kv, acc3);
                }
                (acc0 * vScale).Store(scores + s0);
                (acc1 * vScale).Store(scores + paddedT + s0);
                (acc2 * vScale).Store(scores + 2 * paddedT + s0);
                (acc3 * vScale).Store(scores + 3 * paddedT + s0);
            }
            for (int r = 0; r < rows; r++)
            {
                int tq = tq0 + r;
                float* scoreRow = scores + r * paddedT;
                if (seg is not null)
                    for (int s = 0; s <= tq; s++)
                        if (seg[s] != seg[tq]) scoreRow[s] = float.NegativeInfinity;
                var row = new Span<float>(att + (long)tq * t, t);
                var live = row[..(tq + 1)];
                new ReadOnlySpan<float>(scoreRow, tq + 1).CopyTo(live);
                SoftmaxInPlace(live);
                row[(tq + 1)..].Clear();
            }

            // out_r = Σ_s a_r[s]·v_s over s < keys (a_r[s] = 0 past row r's diagonal); rows past the end read a zero weight.
            float* a0 = att + (long)tq0 * t;
            float* a1 = rows > 1 ? a0 + t : null, a2 = rows > 2 ? a0 + 2 * t : null, a3 = rows > 3 ? a0 + 3 * t : null;
            Vector512<float> o00 = default, o01 = default, o02 = default, o03 = default;
            Vector512<float> o10 = default, o11 = default, o12 = default, o13 = default;
            Vector512<float> o20 = default, o21 = default, o22 = default, o23 = default;
            Vector512<float> o30 = default, o31 = default, o32 = default, o33 = default;
            for (int s = 0; s < keys; s++)
            {
                float w0 = a0[s], w1 = a1 is null ? 0f : a1[s], w2 = a2 is null ? 0f : a2[s], w3 = a3 is null ? 0f : a3[s];
                if (w0 == 0f && w1 == 0f && w2 == 0f && w3 == 0f) continue;   // another segment for all four rows
                float* v = token0 + (long)s * c3 + 2 * c;
                var v0 = Vector512.Load(v); var v1 = Vector512.Load(v + 16); var v2 = Vector512.Load(v + 32); var v3 = Vector512.Load(v + 48);
                var b0 = Vector512.Create(w0);
                o00 = Vector512.FusedMultiplyAdd(b0, v0, o00); o01 = Vector512.FusedMultiplyAdd(b0, v1, o01);
                o02 = Vector512.FusedMultiplyAdd(b0, v2, o02); o03 = Vector512.FusedMultiplyAdd(b0, v3, o03);
                var b1 = Vector512.Create(w1);
                o10 = Vector512.FusedMultiplyAdd(b1, v0, o10); o11 = Vector512.FusedMultiplyAdd(b1, v1, o11);
                o12 = Vector512.FusedMultiplyAdd(b1, v2, o12); o13 = Vector512.FusedMultiplyAdd(b1, v3, o13);
                var b2 = Vector512.Create(w2);
                o20 = Vector512.FusedMultiplyAdd(b2, v0, o20); o21 = Vector512.FusedMultiplyAdd(b2, v1, o21);
                o22 = Vector512.FusedMultiplyAdd(b2, v2, o22); o23 = Vector512.FusedMultiplyAdd(b2, v3, o23);
                var b3 = Vector512.Create(w3);
                o30 = Vector512.FusedMultiplyAdd(b3, v0, o30); o31 = Vector512.FusedMultiplyAdd(b3, v1, o31);
                o32 = Vector512.FusedMultiplyAdd(b3, v2, o32); o33 = Vector512.FusedMultiplyAdd(b3, v3, o33);
            }
            float* o = out0 + (long)tq0 * c;
            o00.Store(o); o01.Store(o + 16); o02.Store(o + 32); o03.Store(o + 48);
            if (rows > 1) { o += c; o10.Store(o); o11.Store(o + 16); o12.Store(o + 32); o13.Store(o + 48); }
            if (rows > 2) { o += c; o20.Store(o); o21.Store(o + 16); o22.Store(o + 32); o23.Store(o + 48); }
            if (rows > 3) { o += c; o30.Store(o); o31.Store(o + 16); o32.Store(o + 32); o33.Store(o + 48); }
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
                CpuParallel.For(batch * heads, 1, (start, end) =>
                {
                    int paddedT = (t + 15) & ~15;
                    float[] scratch = ArrayPool<float>.Shared.Rent((HeadSize64 + QueryBlock) * paddedT + 16);
                    try
                    {
                        fixed (float* pScratch = scratch)
                        {
                            float* valuesTransposed = (float*)(((nint)pScratch + 63) & ~(nint)63);   // [64, paddedT], line-aligned
                            float* dScores = valuesTransposed + HeadSize64 * paddedT;                 // [QueryBlock, paddedT]
                            for (int bh = start; bh < end; bh++)
                            {
                                int b = bh / heads, h = bh % heads;
                                long token0 = (long)b * t * c3 + h * hs, out0 = (long)b * t * c + h * hs;
                                BackwardHead64(xd + out0, xo + out0, xq + token0, xdq + token0, xa + (long)bh * t * t, c, t, scale,
                                               valuesTransposed, dScores, paddedT);
                            }
                        }
                    }
                    finally
                    {
                        ArrayPool<float>.Shared.Return(scratch);
                    }
                });
                return;
            }
            CpuParallel.For(batch * heads, 1, (start, end) =>
            {
                for (int bh = start; bh < end; bh++)
                {
                    int b = bh / heads, h = bh % heads;
                    long token0 = (long)b * t * c3 + h * hs;
                    for (int tq = 0; tq < t; tq++)
                    {
                        long outOffset = ((long)b * t + tq) * c + h * hs;
                        float* g = xd + outOffset;
                        float weighted = Dot(g, xo + outOffset, hs);   // Σ_r a·da = dout·out
                        float* q = xq + token0 + (long)tq * c3;
                        float* dq = xdq + token0 + (long)tq * c3;
                        float* row = xa + ((long)bh * t + tq) * t;
                        for (int s = 0; s <= tq; s++)
                        {
                            float a = row[s];
                            if (a == 0f) continue;   // disallowed (or underflowed): contributes exactly nothing
                            long ks = token0 + (long)s * c3 + c, vs = ks + c;
                            float da = Dot(g, xq + vs, hs);
                            Axpy(a, g, xdq + vs, hs);                  // dv_s += a·g
                            float dz = a * (da - weighted) * scale;
                            Axpy(dz, xq + ks, dq, hs);                 // dq_t += dz·k_s
                            Axpy(dz, q, xdq + ks, hs);                 // dk_s += dz·q_t
                        }
                    }
                }
            });
        }
    }

    /// <summary>
    /// One (b, h) of the backward for hs = 64, blocks of 4 queries, as small matrix products:
    /// <code>
    /// Vᵀ[d, s] = v_s[d]                                   (transposed once, zero-padded to a multiple of 16 keys)
    /// dA[r, s0:s0+16] = Σ_d g_r[d]·Vᵀ[d, s0:s0+16]          (g = dout; 4 queries × 16 keys per step)
    /// dz[r, s] = a_r[s]·(dA[r, s] − g_r·out_r)·scale        (in place over dA; 0 wherever a is 0)
    /// dq_r += Σ_s dz[r, s]·k_s                             (4 queries share each k_s load; 16 accumulators)
    /// dk_s += Σ_r dz[r, s]·q_r,   dv_s += Σ_r a_r[s]·g_r    (q_r, then g_r, held in 16 registers; rows in order)
    /// </code>
    /// Every sum runs in a fixed order (for a given dk_s or dv_s: queries in increasing order, as the
    /// one-query-at-a-time loop did), so results do not depend on the thread count.
    /// </summary>
    private static unsafe void BackwardHead64(float* dOut0, float* out0, float* token0, float* dToken0, float* att, int c, int t, float scale,
                                              float* valuesTransposed, float* dScores, int paddedT)
    {
        int c3 = 3 * c;
        for (int s = 0; s < t; s++)
        {
            float* v = token0 + (long)s * c3 + 2 * c;
            for (int d = 0; d < HeadSize64; d++) valuesTransposed[d * paddedT + s] = v[d];
        }
        for (int d = 0; d < HeadSize64; d++)
            for (int s = t; s < paddedT; s++) valuesTransposed[d * paddedT + s] = 0f;

        Span<long> rowOffset = stackalloc long[QueryBlock];
        for (int tq0 = 0; tq0 < t; tq0 += QueryBlock)
        {
            int rows = Math.Min(QueryBlock, t - tq0), keys = tq0 + rows;
            // Missing rows of a short last block repeat the last query; their dz is set to 0, so they add nothing.
            for (int r = 0; r < QueryBlock; r++) rowOffset[r] = tq0 + Math.Min(r, rows - 1);
            float* g0 = dOut0 + rowOffset[0] * c, g1 = dOut0 + rowOffset[1] * c, g2 = dOut0 + rowOffset[2] * c, g3 = dOut0 + rowOffset[3] * c;

            // dA for the block, then dz in place.
            for (int s0 = 0; s0 < keys; s0 += 16)
            {
                Vector512<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
                float* vt = valuesTransposed + s0;
                for (int d = 0; d < HeadSize64; d++, vt += paddedT)
                {
                    var vv = Vector512.Load(vt);
                    acc0 = Vector512.FusedMultiplyAdd(Vector512.Create(g0[d]), vv, acc0);
                    acc1 = Vector512.FusedMultiplyAdd(Vector512.Create(g1[d]), vv, acc1);
                    acc2 = Vector512.FusedMultiplyAdd(Vector512.Create(g2[d]), vv, acc2);
                    acc3 = Vector512.FusedMultiplyAdd(Vector512.Create(g3[d]), vv, acc3);
                }
                acc0.Store(dScores + s0);
                acc1.Store(dScores + paddedT + s0);
                acc2.Store(dScores + 2 * paddedT + s0);
                acc3.Store(dScores + 3 * paddedT + s0);
            }
            for (int r = 0; r < QueryBlock; r++)
            {
                float* dz = dScores + r * paddedT;
                if (r >= rows)
                {
                    new Span<float>(dz, keys).Clear();
                    continue;
                }
                int tq = tq0 + r;
                float weighted = Dot(dOut0 + (long)tq * c, out0 + (long)tq * c, HeadSize64);   // Σ_s a·dA = dout·out
                float* a = att + (long)tq * t;
                for (int s = 0; s <= tq; s++) dz[s] = a[s] == 0f ? 0f : a[s] * (dz[s] - weighted) * scale;
                for (int s = tq + 1; s < keys; s++) dz[s] = 0f;
            }
            float* dz0 = dScores, dz1 = dScores + paddedT, dz2 = dScores + 2 * paddedT, dz3 = dScores + 3 * paddedT;

            // dq_r += Σ_s dz[r, s]·k_s.
            {
                Vector512<float> d00 = default, d01 = default, d02 = default, d03 = default;
                Vector512<float> d10 = default, d11 = default, d12 = default, d13 = default;
                Vector512<float> d20 = default, d21 = default, d22 = default, d23 = default;
                Vector512<float> d30 = default, d31 = default, d32 = default, d33 = default;
                for (int s = 0; s < keys; s++)
                {
                    float w0 = dz0[s], w1 = dz1[s], w2 = dz2[s], w3 = dz3[s];
                    if (w0 == 0f && w1 == 0f && w2 == 0f && w3 == 0f) continue;
                    float* k = token0 + (long)s * c3 + c;
                    var k0 = Vector512.Load(k); var k1 = Vector512.Load(k + 16); var k2 = Vector512.Load(k + 32); var k3 = Vector512.Load(k + 48);
                    var b0 = Vector512.Create(w0);
                    d00 = Vector512.FusedMultiplyAdd(b0, k0, d00); d01 = Vector512.FusedMultiplyAdd(b0, k1, d01);
                    d02 = Vector512.FusedMultiplyAdd(b0, k2, d02); d03 = Vector512.FusedMultiplyAdd(b0, k3, d03);
                    var b1 = Vector512.Create(w1);
                    d10 = Vector512.FusedMultiplyAdd(b1, k0, d10); d11 = Vector512.FusedMultiplyAdd(b1, k1, d11);
                    d12 = Vector512.FusedMultiplyAdd(b1, k2, d12); d13 = Vector512.FusedMultiplyAdd(b1, k3, d13);
                    var b2 = Vector512.Create(w2);
                    d20 = Vector512.FusedMultiplyAdd(b2, k0, d20); d21 = Vector512.FusedMultiplyAdd(b2, k1, d21);
                    d22 = Vector512.FusedMultiplyAdd(b2, k2, d22); d23 = Vector512.FusedMultiplyAdd(b2, k3, d23);
                    var b3 = Vector512.Create(w3);
                    d30 = Vector512.FusedMultiplyAdd(b3, k0, d30); d31 = Vector512.FusedMultiplyAdd(b3, k1, d31);
                    d32 = Vector512.FusedMultiplyAdd(b3, k2, d32); d33 = Vector512.FusedMultiplyAdd(b3, k3, d33);
                }
                AddRow64(dToken0 + (long)tq0 * c3, d00, d01, d02, d03);
                if (rows > 1) AddRow64(dToken0 + (long)(tq0 + 1) * c3, d10, d11, d12, d13);
                if (rows > 2) AddRow64(dToken0 + (long)(tq0 + 2) * c3, d20, d21, d22, d23);
                if (rows > 3) AddRow64(dToken0 + (long)(tq0 + 3) * c3, d30, d31, d32, d33);
            }

            // dk_s += Σ_r dz[r, s]·q_r with the four queries in registers.
            AccumulateOuter64(dz0, dz1, dz2, dz3, token0 + rowOffset[0] * c3, token0 + rowOffset[1] * c3, token0 + rowOffset[2] * c3,
                              token0 + rowOffset[3] * c3, dToken0 + c, c3, keys);
            // dv_s += Σ_r a_r[s]·g_r with the four output gradients in registers (missing rows: weight 0).
            float* a0 = att + (long)tq0 * t;
            float* a1 = rows > 1 ? a0 + t : dz3, a2 = rows > 2 ? a0 + 2 * t : dz3, a3 = rows > 3 ? a0 + 3 * t : dz3;   // dz3 is all 0 when rows < 4
            AccumulateOuter64(a0, a1, a2, a3, g0, g1, g2, g3, dToken0 + 2 * c, c3, keys);
        }
    }

    /// <summary>row[0..64) += (r0, r1, r2, r3).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void AddRow64(float* row, Vector512<float> r0, Vector512<float> r1, Vector512<float> r2, Vector512<float> r3)
    {
        (Vector512.Load(row) + r0).Store(row);
        (Vector512.Load(row + 16) + r1).Store(row + 16);
        (Vector512.Load(row + 32) + r2).Store(row + 32);
        (Vector512.Load(row + 48) + r3).Store(row + 48);
    }

    /// <summary>
    /// For s &lt; keys: target_s += w0[s]·x0 + w1[s]·x1 + w2[s]·x2 + w3[s]·x3 (in that order), where target_s is 64 floats at
    /// target + s·stride and x0..x3 are 64-float rows held in registers; s with all four weights 0 is skipped.
    /// </summary>
    private static unsafe void AccumulateOuter64(float* w0, float* w1, float* w2, float* w3, float* x0, float* x1, float* x2, float* x3,
                                                 float* target, int stride, int keys)
    {
        var x00 = Vector512.Load(x0); var x01 = Vector512.Load(x0 + 16); var x02 = Vector512.Load(x0 + 32); var x03 = Vector512.Load(x0 + 48);
        var x10 = Vector512.Load(x1); var x11 = Vector512.Load(x1 + 16); var x12 = Vector512.Load(x1 + 32); var x13 = Vector512.Load(x1 + 48);
        var x20 = Vector512.Load(x2); var x21 = Vector512.Load(x2 + 16); var x22 = Vector512.Load(x2 + 32); var x23 = Vector512.Load(x2 + 48);
        var x30 = Vector512.Load(x3); var x31 = Vector512.Load(x3 + 16); var x32 = Vector512.Load(x3 + 32); var x33 = Vector512.Load(x3 + 48);
        for (int s = 0; s < keys; s++)
        {
            float a = w0[s], b = w1[s], c = w2[s], d = w3[s];
            if (a == 0f && b == 0f && c == 0f && d == 0f) continue;
            float* y = target + (long)s * stride;
            Vector512<float> va = Vector512.Create(a), vb = Vector512.Create(b), vc = Vector512.Create(c), vd = Vector512.Create(d);
            Vector512.FusedMultiplyAdd(vd, x30, Vector512.FusedMultiplyAdd(vc, x20, Vector512.FusedMultiplyAdd(vb, x10, Vector512.FusedMultiplyAdd(va, x00, Vector512.Load(y))))).Store(y);
            Vector512.FusedMultiplyAdd(vd, x31, Vector512.FusedMultiplyAdd(vc, x21, Vector512.FusedMultiplyAdd(vb, x11, Vector512.FusedMultiplyAdd(va, x01, Vector512.Load(y + 16))))).Store(y + 16);
            Vector512.FusedMultiplyAdd(vd, x32, Vector512.FusedMultiplyAdd(vc, x22, Vector512.FusedMultiplyAdd(vb, x12, Vector512.FusedMultiplyAdd(va, x02, Vector512.Load(y + 32))))).Store(y + 32);
            Vector512.FusedMultiplyAdd(vd, x33, Vector512.FusedMultiplyAdd(vc, x23, Vector512.FusedMultiplyAdd(vb, x13, Vector512.FusedMultiplyAdd(va, x03, Vector512.Load(y + 48))))).Store(y + 48);
        }
    }

    /// <summary>Σ a[i]·b[i] over one head (hs is small, typically 64: inline Vector512 beats a library call per pair).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe float Dot(float* a, float* b, int length)
    {
        int i = 0;
        float sum = 0f;
        if (length >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= length - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
            sum = Vector512.Sum(acc);
        }
        for (; i < length; i++) sum = MathF.FusedMultiplyAdd(a[i], b[i], sum);
        return sum;
    }

    /// <summary>y[i] += alpha·x[i] over one head.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Axpy(float alpha, float* x, float* y, int length)
    {
        int i = 0;
        var va = Vector512.Create(alpha);
        for (; i <= length - 16; i += 16) Vector512.FusedMultiplyAdd(va, Vector512.Load(x + i), Vector512.Load(y + i)).Store(y + i);
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
