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
/// and results are bit-identical for any thread count. Per-pair work is inline Vector512 (hs = 64 keeps the
/// query, the output row and dq in registers); other head sizes use short Vector512 dot/axpy helpers.
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
                        if (hs == HeadSize64)
                        {
                            BackwardRow64(g, q, dq, row, tq, xq + token0 + c, xdq + token0 + c, c3, weighted, scale);
                            continue;
                        }
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

    /// <summary>hs = 64 (every GPT-2 size): the backward row with g, q and dq held in registers.</summary>
    private static unsafe void BackwardRow64(float* g, float* q, float* dq, float* row, int tq, float* k0, float* dk0, int stride,
                                             float weighted, float scale)
    {
        var g0 = Vector512.Load(g); var g1 = Vector512.Load(g + 16); var g2 = Vector512.Load(g + 32); var g3 = Vector512.Load(g + 48);
        var q0 = Vector512.Load(q); var q1 = Vector512.Load(q + 16); var q2 = Vector512.Load(q + 32); var q3 = Vector512.Load(q + 48);
        var dq0 = Vector512.Load(dq); var dq1 = Vector512.Load(dq + 16); var dq2 = Vector512.Load(dq + 32); var dq3 = Vector512.Load(dq + 48);
        int c = stride / 3;
        for (int s = 0; s <= tq; s++)
        {
            float a = row[s];
            if (a == 0f) continue;
            float* k = k0 + (long)s * stride, v = k + c;
            float* dk = dk0 + (long)s * stride, dv = dk + c;
            var v0 = Vector512.Load(v); var v1 = Vector512.Load(v + 16); var v2 = Vector512.Load(v + 32); var v3 = Vector512.Load(v + 48);
            float da = Vector512.Sum(Vector512.FusedMultiplyAdd(g3, v3, Vector512.FusedMultiplyAdd(g2, v2, Vector512.FusedMultiplyAdd(g1, v1, g0 * v0))));
            var va = Vector512.Create(a);
            Vector512.FusedMultiplyAdd(va, g0, Vector512.Load(dv)).Store(dv);
            Vector512.FusedMultiplyAdd(va, g1, Vector512.Load(dv + 16)).Store(dv + 16);
            Vector512.FusedMultiplyAdd(va, g2, Vector512.Load(dv + 32)).Store(dv + 32);
            Vector512.FusedMultiplyAdd(va, g3, Vector512.Load(dv + 48)).Store(dv + 48);
            var dz = Vector512.Create(a * (da - weighted) * scale);
            dq0 = Vector512.FusedMultiplyAdd(dz, Vector512.Load(k), dq0);
            dq1 = Vector512.FusedMultiplyAdd(dz, Vector512.Load(k + 16), dq1);
            dq2 = Vector512.FusedMultiplyAdd(dz, Vector512.Load(k + 32), dq2);
            dq3 = Vector512.FusedMultiplyAdd(dz, Vector512.Load(k + 48), dq3);
            Vector512.FusedMultiplyAdd(dz, q0, Vector512.Load(dk)).Store(dk);
            Vector512.FusedMultiplyAdd(dz, q1, Vector512.Load(dk + 16)).Store(dk + 16);
            Vector512.FusedMultiplyAdd(dz, q2, Vector512.Load(dk + 32)).Store(dk + 32);
            Vector512.FusedMultiplyAdd(dz, q3, Vector512.Load(dk + 48)).Store(dk + 48);
        }
        dq0.Store(dq); dq1.Store(dq + 16); dq2.Store(dq + 32); dq3.Store(dq + 48);
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
