using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Layer normalisation over the last axis (C) of x [N, C]:
///   μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  out = x̂·w + b,   ε = 1e-5.
/// Forward saves μ [N] and r [N] ("rstd") for the backward.
/// Backward, with ĝ = dout·w:
///   dx += r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),   dw += Σ_n dout·x̂,   db += Σ_n dout   (all accumulate).
/// Each row is handled by Vector512 loops over its channels (a row of C = 768 is 3 KB and stays in L1
/// between the two passes over it), with scalar loops for the last C mod 16 channels: every op here is
/// +, −, ×, or FMA, which round identically in vector and scalar form.
/// </summary>
public static class LayerNorm
{
    /// <summary>ε added to the variance (GPT-2's value).</summary>
    public const float Epsilon = 1e-5f;

    /// <summary>Channels per unit of parallel work when the backward adds up its block partials (one cache line).</summary>
    private const int ChannelBlock = 16;

    /// <summary>Rows per block of the backward; each block sums its own dw, db partial (fixed boundaries: thread-count independent).</summary>
    private const int RowBlock = 32;

    /// <summary>
    /// out = (x − μ)·r·w + b per row; writes mean[n] = μ and rstd[n] = r.
    /// Shapes: input, output [N, C]; weight, bias [C]; mean, rstd [N] with N = input.Length / C.
    /// Two passes over each row (the second finds it in L1): the statistics, then out. The statistics are
    /// shifted sums, s = Σ(x − K) and q = Σ(x − K)² with K = the mean of the row's first 16 channels (all of them when C &lt; 16), so
    /// μ = K + s/C and σ² = q/C − (s/C)² lose nothing to cancellation while |K − μ| stays within a couple of σ
    /// (K is a 16-sample estimate of μ, so (K − μ)² ≈ σ²/16). A row where (s/C)² exceeds 4·σ² (an adversarial
    /// row: its first channels are far from the rest) takes a third, exact pass Σ(x − μ)².
    /// </summary>
    public static unsafe void Forward(ReadOnlySpan<float> input, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias,
                                      Span<float> output, Span<float> mean, Span<float> rstd)
    {
        int c = weight.Length;
        int n = Rows(input.Length, c);
        ShapeCheck.Length(bias.Length, c, nameof(bias), "[C]");
        ShapeCheck.Length(output.Length, input.Length, nameof(output), "[N, C]");
        ShapeCheck.Length(mean.Length, n, nameof(mean), "[N]");
        ShapeCheck.Length(rstd.Length, n, nameof(rstd), "[N]");
        fixed (float* px = input, pw = weight, pb = bias, po = output, pm = mean, pr = rstd)
        {
            float* xx = px, xw = pw, xb = pb, xo = po, xm = pm, xr = pr;
            CpuParallel.For(n, Math.Max(1, 8192 / c), (start, end) =>
            {
                if (c % 32 == 0) PipelinedRows(xx, xw, xb, xo, xm, xr, c, start, end);
                else ForwardRows(xx, xw, xb, xo, xm, xr, c, start, end);
            });
        }
    }

    /// <summary>Rows [start, end) of the forward. A plain static method, not a lambda body: locals the JIT
    /// can keep in registers (captured variables live in a closure object that every store might alias).</summary>
    private static unsafe void ForwardRows(float* xx, float* xw, float* xb, float* xo, float* xm, float* xr, int c, int start, int end)
    {
        int full = c & ~15;
        for (int i = start; i < end; i++)
        {
            float* x = xx + (long)i * c;
            float* o = xo + (long)i * c;
            var (s, q) = ShiftedSums(x, c, out float shift);
            var (mu, r) = RowStatistics(x, c, shift, s, q);
            var vmu = Vector512.Create(mu);
            var vr = Vector512.Create(r);
            for (int j = 0; j < full; j += 16)
                Vector512.FusedMultiplyAdd((Vector512.Load(x + j) - vmu) * vr, Vector512.Load(xw + j), Vector512.Load(xb + j)).Store(o + j);
            for (int j = full; j < c; j++) o[j] = MathF.FusedMultiplyAdd((x[j] - mu) * r, xw[j], xb[j]);
            xm[i] = mu;
            xr[i] = r;
        }
    }

    /// <summary>
    /// <see cref="ForwardRows"/> for C a multiple of 32 (every GPT-2 width), software-pipelined: while row i is
    /// normalised (its x in L1), the shifted sums of row i + 1 are taken in the same loop, so reading the next row
    /// overlaps writing this one's output (measured: 56 → 47 ns per row at N = 2048, C = 768 on 2 threads). Each
    /// row's sums run in the order <see cref="ForwardRows"/> uses, so the results are bit-identical to it.
    /// </summary>
    private static unsafe void PipelinedRows(float* xx, float* xw, float* xb, float* xo, float* xm, float* xr, int c, int start, int end)
    {
        if (start >= end) return;
        float* x0 = xx + (long)start * c;
        var (s, q) = ShiftedSums(x0, c, out float shift);
        var (mu, r) = RowStatistics(x0, c, shift, s, q);
        for (int i = start; i < end; i++)
        {
            float* x = xx + (long)i * c;
            float* o = xo + (long)i * c;
            xm[i] = mu;
            xr[i] = r;
            var vmu = Vector512.Create(mu);
            var vr = Vector512.Create(r);
            if (i + 1 < end)
            {
                float* next = x + c;
                shift = Vector512.Sum(Vector512.Load(next)) / 16f;
                var vk = Vector512.Create(shift);
                Vector512<float> s0 = Vector512<float>.Zero, s1 = s0, q0 = s0, q1 = s0;
                for (int j = 0; j < c; j += 32)
                {
                    Vector512.FusedMultiplyAdd((Vector512.Load(x + j) - vmu) * vr, Vector512.Load(xw + j), Vector512.Load(xb + j)).Store(o + j);
                    Vector512.FusedMultiplyAdd((Vector512.Load(x + j + 16) - vmu) * vr, Vector512.Load(xw + j + 16), Vector512.Load(xb + j + 16)).Store(o + j + 16);
                    var d0 = Vector512.Load(next + j) - vk;
                    var d1 = Vector512.Load(next + j + 16) - vk;
                    s0 += d0;
                    s1 += d1;
                    q0 = Vector512.FusedMultiplyAdd(d0, d0, q0);
                    q1 = Vector512.FusedMultiplyAdd(d1, d1, q1);
                }
                (mu, r) = RowStatistics(next, c, shift, Vector512.Sum(s0 + s1), Vector512.Sum(q0 + q1));
            }
            else
            {
                for (int j = 0; j < c; j += 16)
                    Vector512.FusedMultiplyAdd((Vector512.Load(x + j) - vmu) * vr, Vector512.Load(xw + j), Vector512.Load(xb + j)).Store(o + j);
            }
        }
    }

    /// <summary>
    /// The shifted sums of one row on its own: s = Σ(x − K) and q = Σ(x − K)², K = <paramref name="shift"/> = the mean of
    /// the row's first 16 channels (all of them when C &lt; 16). Two accumulators per sum (the adds of one chain would wait on
    /// the previous one's latency), 32 channels a step, then one vector, then a scalar tail.
    /// </summary>
    private static unsafe (float S, float Q) ShiftedSums(float* x, int c, out float shift)
    {
        int full = c & ~15;
        if (full > 0) shift = Vector512.Sum(Vector512.Load(x)) / 16f;
        else
        {
            shift = 0f;
            for (int j = 0; j < c; j++) shift += x[j];
            shift /= c;
        }
        var vk = Vector512.Create(shift);
        Vector512<float> s0 = Vector512<float>.Zero, s1 = s0, q0 = s0, q1 = s0;
        int j2 = 0;
        for (; j2 + 32 <= full; j2 += 32)
        {
            var d0 = Vector512.Load(x + j2) - vk;
            var d1 = Vector512.Load(x + j2 + 16) - vk;
            s0 += d0;
            s1 += d1;
            q0 = Vector512.FusedMultiplyAdd(d0, d0, q0);
            q1 = Vector512.FusedMultiplyAdd(d1, d1, q1);
        }
        if (j2 < full)
        {
            var d0 = Vector512.Load(x + j2) - vk;
            s0 += d0;
            q0 = Vector512.FusedMultiplyAdd(d0, d0, q0);
        }
        float s = Vector512.Sum(s0 + s1), q = Vector512.Sum(q0 + q1);
        for (int j = full; j < c; j++)
        {
            float d = x[j] - shift;
            s += d;
            q = MathF.FusedMultiplyAdd(d, d, q);
        }
        return (s, q);
    }

    /// <summary>μ and r from the shifted sums s = Σ(x − K), q = Σ(x − K)² of a row (with <see cref="ExactVariance"/> for a row whose sums cancel).</summary>
    private static unsafe (float Mean, float Rstd) RowStatistics(float* x, int c, float shift, float s, float q)
    {
        float offset = s / c;
        float mu = shift + offset;
        float variance = q / c - offset * offset;
        if (offset * offset > 4f * variance) variance = ExactVariance(x, c, mu);
        return (mu, 1f / MathF.Sqrt(MathF.Max(variance, 0f) + Epsilon));
    }

    /// <summary>Σ(x − μ)²/C for a row whose shifted sums cancelled (the rare fallback of the forward).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe float ExactVariance(float* x, int c, float mu)
    {
        int full = c & ~15;
        var vmu = Vector512.Create(mu);
        var acc = Vector512<float>.Zero;
        for (int j = 0; j < full; j += 16)
        {
            var d = Vector512.Load(x + j) - vmu;
            acc = Vector512.FusedMultiplyAdd(d, d, acc);
        }
        float squares = Vector512.Sum(acc);
        for (int j = full; j < c; j++) squares = MathF.FusedMultiplyAdd(x[j] - mu, x[j] - mu, squares);
        return squares / c;
    }

    /// <summary>
    /// Accumulates dInput, dWeight and dBias from dOutput, using the forward's input, mean and rstd.
    /// One sweep over dOutput and input: rows go in fixed blocks of <see cref="RowBlock"/> (boundaries that do
    /// not depend on the thread count); per row, pass 1 gets mean(ĝ) and mean(ĝx̂) and pass 2 (the row still in
    /// L1) writes dx and adds dout·x̂ and dout to the block's own partial dw, db. The block partials are then
    /// added to dWeight, dBias in block order, so all three are bit-identical for any thread count.
    /// </summary>
    public static unsafe void Backward(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> input, ReadOnlySpan<float> weight,
                                       ReadOnlySpan<float> mean, ReadOnlySpan<float> rstd,
                                       Span<float> dInput, Span<float> dWeight, Span<float> dBias)
    {
        int c = weight.Length;
        int n = Rows(input.Length, c);
        ShapeCheck.Length(dOutput.Length, input.Length, nameof(dOutput), "[N, C]");
        ShapeCheck.Length(dInput.Length, input.Length, nameof(dInput), "[N, C]");
        ShapeCheck.Length(dWeight.Length, c, nameof(dWeight), "[C]");
        ShapeCheck.Length(dBias.Length, c, nameof(dBias), "[C]");
        ShapeCheck.Length(mean.Length, n, nameof(mean), "[N]");
        ShapeCheck.Length(rstd.Length, n, nameof(rstd), "[N]");
        if (n == 0) return;
        int blocks = (n + RowBlock - 1) / RowBlock;
        // Per block: the dw partial [C], then the db partial [C], each starting on a 64-byte line (C rounded up to
        // 16 floats), so the partials' Vector512 loads and stores, done once per pair of rows, never split a line.
        int paddedC = PaddedChannels(c);
        float[] partials = ArrayPool<float>.Shared.Rent(blocks * 2 * paddedC + 16);
        try
        {
            fixed (float* pd = dOutput, px = input, pw = weight, pm = mean, pr = rstd, pdx = dInput, pdw = dWeight, pdb = dBias, pp = partials)
            {
                float* xd = pd, xx = px, xw = pw, xm = pm, xr = pr, xdx = pdx, xdw = pdw, xdb = pdb;
                float* xp = (float*)(((nint)pp + 63) & ~(nint)63);
                CpuParallel.For(blocks, 1, (b0, b1) =>
                {
                    for (int block = b0; block < b1; block++)
                        BackwardBlock(xd, xx, xw, xm, xr, xdx, xp + (long)block * 2 * paddedC, c, block * RowBlock, Math.Min(n, (block + 1) * RowBlock), n);
                });
                // dWeight, dBias += Σ_blocks partials, in block order; parallel over channel blocks.
                int channelBlocks = (c + ChannelBlock - 1) / ChannelBlock;
                CpuParallel.For(channelBlocks, Math.Max(1, 2048 / blocks), (c0, c1) =>
                {
                    int cStart = c0 * ChannelBlock, cEnd = Math.Min(c, c1 * ChannelBlock);
                    for (int block = 0; block < blocks; block++)
                    {
                        float* pw0 = xp + (long)block * 2 * paddedC, pb0 = pw0 + paddedC;
                        int j = cStart;
                        for (; j + 16 <= cEnd; j += 16)
                        {
                            (Vector512.Load(xdw + j) + Vector512.Load(pw0 + j)).Store(xdw + j);
                            (Vector512.Load(xdb + j) + Vector512.Load(pb0 + j)).Store(xdb + j);
                        }
                        for (; j < cEnd; j++)
                        {
                            xdw[j] += pw0[j];
                            xdb[j] += pb0[j];
                        }
                    }
                });
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(partials);
        }
    }

    /// <summary>
    /// Rows [start, end) of one block of the backward: dx accumulated in place, the block's dw, db partials
    /// overwritten. With x_c = x − μ, ĝ = dout·w and the row sums G = Σĝ, H = Σĝ·x_c (so mean(ĝ) = G/C and
    /// mean(ĝx̂) = r·H/C), the dx line is
    ///   dx += r·((ĝ − G/C) + x_c·(−r²·H/C)),
    /// two FMAs and no x̂ for it; ĝ − mean(ĝ) is formed before any scaling by r, so a large r (a near-constant
    /// row) does not cancel against the dx already there. Rows go two at a time so each partial vector (and w) is loaded and stored once
    /// per pair; the pair's two FMAs into dw run in row order, so the sums are exactly those of one row at a
    /// time. While a pair is in L1, the next pair's dout, x and dx lines are prefetched: the hardware
    /// prefetchers alone leave this loop waiting on L3/DRAM (measured: about 1.2× faster with the prefetches
    /// at N = 2048, C = 768).
    /// </summary>
    private static unsafe void BackwardBlock(float* xd, float* xx, float* xw, float* xm, float* xr, float* xdx, float* partial, int c, int start, int end, int rows)
    {
        int full = c & ~15;
        int paddedC = PaddedChannels(c);
        float* pdw = partial, pdb = partial + paddedC;
        new Span<float>(partial, 2 * paddedC).Clear();
        int i = start;
        for (; i + 2 <= end; i += 2)
        {
            long row0 = (long)i * c, row1 = row0 + c, ahead = 2L * c;
            float* d0 = xd + row0, x0 = xx + row0, dx0 = xdx + row0;
            float* d1 = xd + row1, x1 = xx + row1, dx1 = xdx + row1;
            float m0 = xm[i], r0 = xr[i], m1 = xm[i + 1], r1 = xr[i + 1];
            var (meanG0, centredScale0) = DxCoefficients(d0, x0, xw, m0, r0, c);
            var (meanG1, centredScale1) = DxCoefficients(d1, x1, xw, m1, r1, c);
            Vector512<float> vm0 = Vector512.Create(m0), vr0 = Vector512.Create(r0), vg0 = Vector512.Create(meanG0), va0 = Vector512.Create(centredScale0);
            Vector512<float> vm1 = Vector512.Create(m1), vr1 = Vector512.Create(r1), vg1 = Vector512.Create(meanG1), va1 = Vector512.Create(centredScale1);
            bool prefetchNext = i + 4 <= rows;   // the next pair exists (it may start the next block)
            for (int j = 0; j < full; j += 16)   // dx += r·(ĝ − mean(ĝ) + x_c·a);  dw += dout·x_c·r;  db += dout
            {
                if (Sse.IsSupported && prefetchNext)
                {
                    Sse.Prefetch0(d0 + ahead + j); Sse.Prefetch0(x0 + ahead + j); Sse.Prefetch0(dx0 + ahead + j);
                    Sse.Prefetch0(d1 + ahead + j); Sse.Prefetch0(x1 + ahead + j); Sse.Prefetch0(dx1 + ahead + j);
                }
                var w = Vector512.Load(xw + j);
                var dout0 = Vector512.Load(d0 + j);
                var centred0 = Vector512.Load(x0 + j) - vm0;
                Vector512.FusedMultiplyAdd(Vector512.FusedMultiplyAdd(centred0, va0, dout0 * w - vg0), vr0, Vector512.Load(dx0 + j)).Store(dx0 + j);
                var dout1 = Vector512.Load(d1 + j);
                var centred1 = Vector512.Load(x1 + j) - vm1;
                Vector512.FusedMultiplyAdd(Vector512.FusedMultiplyAdd(centred1, va1, dout1 * w - vg1), vr1, Vector512.Load(dx1 + j)).Store(dx1 + j);
                Vector512.FusedMultiplyAdd(dout1, centred1 * vr1, Vector512.FusedMultiplyAdd(dout0, centred0 * vr0, Vector512.Load(pdw + j))).Store(pdw + j);
                (Vector512.Load(pdb + j) + dout0 + dout1).Store(pdb + j);
            }
            for (int j = full; j < c; j++)
            {
                float centred0 = x0[j] - m0, centred1 = x1[j] - m1;
                dx0[j] = MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(centred0, centredScale0, d0[j] * xw[j] - meanG0), r0, dx0[j]);
                dx1[j] = MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(centred1, centredScale1, d1[j] * xw[j] - meanG1), r1, dx1[j]);
                pdw[j] = MathF.FusedMultiplyAdd(d1[j], centred1 * r1, MathF.FusedMultiplyAdd(d0[j], centred0 * r0, pdw[j]));
                pdb[j] = pdb[j] + d0[j] + d1[j];
            }
        }
        if (i < end)   // an odd last row
        {
            long row = (long)i * c;
            float* d = xd + row, x = xx + row, dx = xdx + row;
            float mi = xm[i], ri = xr[i];
            var (meanG, centredScale) = DxCoefficients(d, x, xw, mi, ri, c);
            Vector512<float> mu = Vector512.Create(mi), r = Vector512.Create(ri), vg = Vector512.Create(meanG), va = Vector512.Create(centredScale);
            for (int j = 0; j < full; j += 16)
            {
                var dout = Vector512.Load(d + j);
                var centred = Vector512.Load(x + j) - mu;
                Vector512.FusedMultiplyAdd(Vector512.FusedMultiplyAdd(centred, va, dout * Vector512.Load(xw + j) - vg), r, Vector512.Load(dx + j)).Store(dx + j);
                Vector512.FusedMultiplyAdd(dout, centred * r, Vector512.Load(pdw + j)).Store(pdw + j);
                (Vector512.Load(pdb + j) + dout).Store(pdb + j);
            }
            for (int j = full; j < c; j++)
            {
                float centred = x[j] - mi;
                dx[j] = MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(centred, centredScale, d[j] * xw[j] - meanG), ri, dx[j]);
                pdw[j] = MathF.FusedMultiplyAdd(d[j], centred * ri, pdw[j]);
                pdb[j] += d[j];
            }
        }
    }

    /// <summary>
    /// The per-row constants of the dx line from G = Σ dout·w and H = Σ dout·w·(x − μ) (two accumulators per sum):
    /// mean(ĝ) = G/C and a = −r²·H/C (see <see cref="BackwardBlock"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe (float MeanG, float CentredScale) DxCoefficients(float* d, float* x, float* xw, float mi, float ri, int c)
    {
        int full = c & ~15;
        var mu = Vector512.Create(mi);
        Vector512<float> g0 = Vector512<float>.Zero, g1 = g0, h0 = g0, h1 = g0;
        int j2 = 0;
        for (; j2 + 32 <= full; j2 += 32)
        {
            var a0 = Vector512.Load(d + j2) * Vector512.Load(xw + j2);
            var a1 = Vector512.Load(d + j2 + 16) * Vector512.Load(xw + j2 + 16);
            g0 += a0;
            g1 += a1;
            h0 = Vector512.FusedMultiplyAdd(a0, Vector512.Load(x + j2) - mu, h0);
            h1 = Vector512.FusedMultiplyAdd(a1, Vector512.Load(x + j2 + 16) - mu, h1);
        }
        if (j2 < full)
        {
            var a0 = Vector512.Load(d + j2) * Vector512.Load(xw + j2);
            g0 += a0;
            h0 = Vector512.FusedMultiplyAdd(a0, Vector512.Load(x + j2) - mu, h0);
        }
        float g = Vector512.Sum(g0 + g1), h = Vector512.Sum(h0 + h1);
        for (int j = full; j < c; j++)
        {
            float a = d[j] * xw[j];
            g += a;
            h = MathF.FusedMultiplyAdd(a, x[j] - mi, h);
        }
        return (g / c, -ri * ri * h / c);
    }

    /// <summary>C rounded up to a whole number of 64-byte lines (16 floats): the stride of the backward's partials.</summary>
    private static int PaddedChannels(int c) => (c + 15) & ~15;

    private static int Rows(int length, int channels)
    {
        ShapeCheck.Positive(channels, "weight.Length");
        if (length % channels != 0)
            throw new ArgumentException($"input has {length} elements, not a multiple of C = {channels} (weight.Length).", "input");
        return length / channels;
    }
}
