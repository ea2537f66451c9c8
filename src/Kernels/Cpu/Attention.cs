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
                        if (hs == HeadSize64)
                        {
                            var q0 = Vector512.Load(qp); var q1 = Vector512.Load(qp + 16);
                            var q2 = Vector512.Load(qp + 32); var q3 = Vector512.Load(qp + 48);
                            for (int s = 0; s <= tq; s++)
                            {
                                float* k = token0 + (long)s * c3 + c;
                                row[s] = segmented && seg[s] != seg[tq]
                                    ? float.NegativeInfinity
                                    : Vector512.Sum(Vector512.FusedMultiplyAdd(q3, Vector512.Load(k + 48), Vector512.FusedMultiplyAdd(q2, Vector512.Load(k + 32),
                                        Vector512.FusedMultiplyAdd(q1, Vector512.Load(k + 16), q0 * Vector512.Load(k))))) * scale;
                            }
                        }
                        else
                        {
                            for (int s = 0; s <= tq; s++)
                                row[s] = segmented && seg[s] != seg[tq]
                                    ? float.NegativeInfinity
                                    : Dot(qp, token0 + (long)s * c3 + c, hs) * scale;
                        }
                        var live = row[..(tq + 1)];
                        float max = TensorPrimitives.Max(live);          // finite: s = tq is always allowed
                        TensorPrimitives.Subtract(live, max, live);
                        TensorPrimitives.Exp(live, live);                // disallowed: exp(−∞) = 0
                        TensorPrimitives.Multiply(live, 1f / TensorPrimitives.Sum(live), live);
                        row[(tq + 1)..].Clear();

                        float* o = xo + ((long)b * t + tq) * c + h * hs;
                        if (hs == HeadSize64)
                        {
                            // The output row stays in four registers across the loop over s.
                            Vector512<float> o0 = default, o1 = default, o2 = default, o3 = default;
                            for (int s = 0; s <= tq; s++)
                            {
                                float a = live[s];
                                if (a == 0f) continue;
                                var va = Vector512.Create(a);
                                float* v = token0 + (long)s * c3 + 2 * c;
                                o0 = Vector512.FusedMultiplyAdd(va, Vector512.Load(v), o0);
                                o1 = Vector512.FusedMultiplyAdd(va, Vector512.Load(v + 16), o1);
                                o2 = Vector512.FusedMultiplyAdd(va, Vector512.Load(v + 32), o2);
                                o3 = Vector512.FusedMultiplyAdd(va, Vector512.Load(v + 48), o3);
                            }
                            o0.Store(o); o1.Store(o + 16); o2.Store(o + 32); o3.Store(o + 48);
                        }
                        else
                        {
                            new Span<float>(o, hs).Clear();
                            for (int s = 0; s <= tq; s++)
                            {
                                float a = live[s];
                                if (a != 0f) Axpy(a, token0 + (long)s * c3 + 2 * c, o, hs);
                            }
                        }
                    }
                }
            });
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
