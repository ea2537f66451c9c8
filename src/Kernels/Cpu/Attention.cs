using System.Numerics.Tensors;

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
/// and results are bit-identical for any thread count.
/// </summary>
public static class Attention
{
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
                        var q = new ReadOnlySpan<float>(token0 + (long)tq * c3, hs);
                        var row = new Span<float>(xa + ((long)bh * t + tq) * t, t);
                        for (int s = 0; s <= tq; s++)
                            row[s] = segmented && seg[s] != seg[tq]
                                ? float.NegativeInfinity
                                : TensorPrimitives.Dot(q, new ReadOnlySpan<float>(token0 + (long)s * c3 + c, hs)) * scale;
                        var live = row[..(tq + 1)];
                        float max = TensorPrimitives.Max(live);          // finite: s = tq is always allowed
                        TensorPrimitives.Subtract(live, max, live);
                        TensorPrimitives.Exp(live, live);                // disallowed: exp(−∞) = 0
                        TensorPrimitives.Multiply(live, 1f / TensorPrimitives.Sum(live), live);
                        row[(tq + 1)..].Clear();

                        var o = new Span<float>(xo + ((long)b * t + tq) * c + h * hs, hs);
                        o.Clear();
                        for (int s = 0; s <= tq; s++)
                        {
                            float a = live[s];
                            if (a != 0f)
                                TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<float>(token0 + (long)s * c3 + 2 * c, hs), a, o, o);
                        }
                    }
                }
            });
        }
    }

    /// <summary>
    /// Accumulates d(qkv) from d(out), using the forward's qkv, att and out (out must be exactly what the
    /// forward wrote: it supplies Σ_r a·da = dout·out).
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
                        var g = new ReadOnlySpan<float>(xd + outOffset, hs);
                        float weighted = TensorPrimitives.Dot(g, new ReadOnlySpan<float>(xo + outOffset, hs));  // Σ_r a·da
                        var q = new ReadOnlySpan<float>(xq + token0 + (long)tq * c3, hs);
                        var dq = new Span<float>(xdq + token0 + (long)tq * c3, hs);
                        float* row = xa + ((long)bh * t + tq) * t;
                        for (int s = 0; s <= tq; s++)
                        {
                            float a = row[s];
                            if (a == 0f) continue;   // disallowed (or underflowed): contributes exactly nothing
                            long ks = token0 + (long)s * c3 + c, vs = ks + c;
                            var v = new ReadOnlySpan<float>(xq + vs, hs);
                            var dv = new Span<float>(xdq + vs, hs);
                            float da = TensorPrimitives.Dot(g, v);
                            TensorPrimitives.FusedMultiplyAdd(g, a, dv, dv);
                            float dz = a * (da - weighted) * scale;
                            var dk = new Span<float>(xdq + ks, hs);
                            TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<float>(xq + ks, hs), dz, dq, dq);
                            TensorPrimitives.FusedMultiplyAdd(q, dz, dk, dk);
                        }
                    }
                }
            });
        }
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
