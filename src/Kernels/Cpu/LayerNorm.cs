using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Layer normalisation over the last axis (C) of x [N, C]:
///   μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  out = x̂·w + b,   ε = 1e-5.
/// Forward saves μ [N] and r [N] ("rstd") for the backward.
/// Backward, with ĝ = dout·w:
///   dx += r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),   dw += Σ_n dout·x̂,   db += Σ_n dout   (all accumulate).
/// Each row is handled by vector loops over its channels at the widest accelerated width (<see cref="CpuVectors"/>; a row
/// of C = 768 is 3 KB and stays in L1 between the two passes over it), with scalar loops for the last C mod Count channels:
/// every op here is +, −, ×, or FMA, which round identically in vector and scalar form (where the hardware fuses FMA).
/// Results differ between widths in the last bits (sums are split over a different number of lanes), never between
/// thread counts.
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
    /// row: its first channels are far from the rest) takes a third pass, the same sums shifted by that first μ, and takes
    /// μ and σ² from those. K is the mean of 16 channels at every vector width (16/Count vectors), so which rows fall back
    /// does not depend on the width.
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
            CpuParallel.For(n, Math.Max(1, 8192 / c), (start, end) => ForwardRows(xx, xw, xb, xo, xm, xr, c, start, end));
        }
    }

    /// <summary>Rows [start, end) of the forward at the kernels' width: <see cref="PipelinedRows"/> when C is a multiple of 32.</summary>
    private static unsafe void ForwardRows(float* xx, float* xw, float* xb, float* xo, float* xm, float* xr, int c, int start, int end)
    {
        bool pipelined = c % 32 == 0;
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512:
                if (pipelined) PipelinedRows<Vector512Lanes>(xx, xw, xb, xo, xm, xr, c, start, end);
                else ForwardRows<Vector512Lanes>(xx, xw, xb, xo, xm, xr, c, start, end);
                break;
            case VectorWidth.Vector256:
                if (pipelined) PipelinedRows<Vector256Lanes>(xx, xw, xb, xo, xm, xr, c, start, end);
                else ForwardRows<Vector256Lanes>(xx, xw, xb, xo, xm, xr, c, start, end);
                break;
            case VectorWidth.Vector128:
                if (pipelined) PipelinedRows<Vector128Lanes>(xx, xw, xb, xo, xm, xr, c, start, end);
                else ForwardRows<Vector128Lanes>(xx, xw, xb, xo, xm, xr, c, start, end);
                break;
            default:
                if (pipelined) PipelinedRows<ScalarLanes>(xx, xw, xb, xo, xm, xr, c, start, end);
                else ForwardRows<ScalarLanes>(xx, xw, xb, xo, xm, xr, c, start, end);
                break;
        }
    }

    /// <summary>Rows [start, end) of the forward. A plain static method, not a lambda body: locals the JIT
    /// can keep in registers (captured variables live in a closure object that every store might alias).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void ForwardRows<TVector>(float* xx, float* xw, float* xb, float* xo, float* xm, float* xr, int c, int start, int end)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count, full = c & ~(width - 1);
        for (int i = start; i < end; i++)
        {
            float* x = xx + (long)i * c;
            float* o = xo + (long)i * c;
            var (s, q) = ShiftedSums<TVector>(x, c, out float shift);
            var (mu, r) = RowStatistics<TVector>(x, c, shift, s, q);
            var vmu = TVector.Create(mu);
            var vr = TVector.Create(r);
            for (int j = 0; j < full; j += width)
                TVector.MultiplyAdd((TVector.Load(x + j) - vmu) * vr, TVector.Load(xw + j), TVector.Load(xb + j)).Store(o + j);
            for (int j = full; j < c; j++) o[j] = MathF.FusedMultiplyAdd((x[j] - mu) * r, xw[j], xb[j]);
            xm[i] = mu;
            xr[i] = r;
        }
    }

    /// <summary>
    /// <see cref="ForwardRows"/> for C a multiple of 32 (every GPT-2 width), software-pipelined: while row i is
    /// normalised (its x in L1), the shifted sums of row i + 1 are taken in the same loop, so reading the next row
    /// overlaps writing this one's output (measured: 56 → 47 ns per row at N = 2048, C = 768 on 2 threads). Each
    /// row's sums run in the order <see cref="ForwardRows{TVector}"/> uses, so the results are bit-identical to it. C is a
    /// multiple of 32, hence of two vectors at every width (the step of the loop below).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void PipelinedRows<TVector>(float* xx, float* xw, float* xb, float* xo, float* xm, float* xr, int c, int start, int end)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        if (start >= end) return;
        int width = TVector.Count;
        float* x0 = xx + (long)start * c;
        var (s, q) = ShiftedSums<TVector>(x0, c, out float shift);
        var (mu, r) = RowStatistics<TVector>(x0, c, shift, s, q);
        for (int i = start; i < end; i++)
        {
            float* x = xx + (long)i * c;
            float* o = xo + (long)i * c;
            xm[i] = mu;
            xr[i] = r;
            var vmu = TVector.Create(mu);
            var vr = TVector.Create(r);
            if (i + 1 < end)
            {
                float* next = x + c;
                shift = FirstChannelsMean<TVector>(next, c);
                var vk = TVector.Create(shift);
                TVector s0 = TVector.Zero, s1 = s0, q0 = s0, q1 = s0;
                for (int j = 0; j < c; j += 2 * width)
                {
                    TVector.MultiplyAdd((TVector.Load(x + j) - vmu) * vr, TVector.Load(xw + j), TVector.Load(xb + j)).Store(o + j);
                    TVector.MultiplyAdd((TVector.Load(x + j + width) - vmu) * vr, TVector.Load(xw + j + width), TVector.Load(xb + j + width)).Store(o + j + width);
                    var d0 = TVector.Load(next + j) - vk;
                    var d1 = TVector.Load(next + j + width) - vk;
                    s0 += d0;
                    s1 += d1;
                    q0 = TVector.MultiplyAdd(d0, d0, q0);
                    q1 = TVector.MultiplyAdd(d1, d1, q1);
                }
                (mu, r) = RowStatistics<TVector>(next, c, shift, TVector.Sum(s0 + s1), TVector.Sum(q0 + q1));
            }
            else
            {
                for (int j = 0; j < c; j += width)
                    TVector.MultiplyAdd((TVector.Load(x + j) - vmu) * vr, TVector.Load(xw + j), TVector.Load(xb + j)).Store(o + j);
            }
        }
    }

    /// <summary>
    /// K, the shift of the forward's sums: the mean of the row's first 16 channels (all of them when C &lt; 16). Sixteen
    /// channels at every width (16/Count vectors added lane-wise, then across), not one vector's worth: K's distance from μ
    /// (≈ σ/√16) and so how often a row needs <see cref="Recentred{TVector}"/> do not depend on the width.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe float FirstChannelsMean<TVector>(float* x, int c) where TVector : unmanaged, IFloatVector<TVector>
    {
        const int channels = 16;
        if (c >= channels)
        {
            var sum = TVector.Load(x);
            for (int j = TVector.Count; j < channels; j += TVector.Count) sum += TVector.Load(x + j);
            return TVector.Sum(sum) / channels;
        }
        float total = 0f;
        for (int j = 0; j < c; j++) total += x[j];
        return total / c;
    }

    /// <summary>
    /// The shifted sums of one row on its own: s = Σ(x − K) and q = Σ(x − K)², K = <paramref name="shift"/> =
    /// <see cref="FirstChannelsMean{TVector}"/>. Two accumulators per sum (the adds of one chain would wait on the previous
    /// one's latency), two vectors a step, then one vector, then a scalar tail.
    /// </summary>
    private static unsafe (float S, float Q) ShiftedSums<TVector>(float* x, int c, out float shift) where TVector : unmanaged, IFloatVector<TVector>
    {
        shift = FirstChannelsMean<TVector>(x, c);
        return SumsAround<TVector>(x, c, shift);
    }

    /// <summary>s = Σ(x − <paramref name="shift"/>) and q = Σ(x − <paramref name="shift"/>)² over one row, in the order <see cref="PipelinedRows{TVector}"/> also uses.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe (float S, float Q) SumsAround<TVector>(float* x, int c, float shift) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count, full = c & ~(width - 1);
        var vk = TVector.Create(shift);
        TVector s0 = TVector.Zero, s1 = s0, q0 = s0, q1 = s0;
        int j2 = 0;
        for (; j2 + 2 * width <= full; j2 += 2 * width)
        {
            var d0 = TVector.Load(x + j2) - vk;
            var d1 = TVector.Load(x + j2 + width) - vk;
            s0 += d0;
            s1 += d1;
            q0 = TVector.MultiplyAdd(d0, d0, q0);
            q1 = TVector.MultiplyAdd(d1, d1, q1);
        }
        if (j2 < full)
        {
            var d0 = TVector.Load(x + j2) - vk;
            s0 += d0;
            q0 = TVector.MultiplyAdd(d0, d0, q0);
        }
        float s = TVector.Sum(s0 + s1), q = TVector.Sum(q0 + q1);
        for (int j = full; j < c; j++)
        {
            float d = x[j] - shift;
            s += d;
            q = MathF.FusedMultiplyAdd(d, d, q);
        }
        return (s, q);
    }

    /// <summary>μ and r from the shifted sums s = Σ(x − K), q = Σ(x − K)² of a row (with <see cref="Recentred{TVector}"/> for a row whose sums cancel).</summary>
    private static unsafe (float Mean, float Rstd) RowStatistics<TVector>(float* x, int c, float shift, float s, float q)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        float offset = s / c;
        float mu = shift + offset;
        float variance = q / c - offset * offset;
        if (offset * offset > 4f * variance) (mu, variance) = Recentred<TVector>(x, c, mu);
        return (mu, 1f / MathF.Sqrt(MathF.Max(variance, 0f) + Epsilon));
    }

    /// <summary>
    /// μ and σ² again, for a row whose shifted sums cancelled (the rare fallback of the forward): the same sums, shifted by
    /// the first estimate <paramref name="mu"/>. It is close to the row's mean, so these sums are small and exact enough for
    /// both: the first μ = K + s/C carries the rounding of s, a sum of C terms of size |K − μ| (the 16 first channels 1000
    /// above the rest, C = 4096: μ 1.9e-4 off at Vector128, whose 8 partial sums each add 512 such terms); this one's
    /// terms are of size σ, so μ comes out within 1e-6 at every width.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe (float Mean, float Variance) Recentred<TVector>(float* x, int c, float mu) where TVector : unmanaged, IFloatVector<TVector>
    {
        var (s, q) = SumsAround<TVector>(x, c, mu);
        float offset = s / c;
        return (mu + offset, q / c - offset * offset);
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
        // 16 floats), so the partials' vector loads and stores, done once per pair of rows, never split a line.
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
                    AddPartials(xp, paddedC, blocks, xdw, xdb, c0 * ChannelBlock, Math.Min(c, c1 * ChannelBlock)));
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
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: BackwardBlock<Vector512Lanes>(xd, xx, xw, xm, xr, xdx, partial, c, start, end, rows); break;
            case VectorWidth.Vector256: BackwardBlock<Vector256Lanes>(xd, xx, xw, xm, xr, xdx, partial, c, start, end, rows); break;
            case VectorWidth.Vector128: BackwardBlock<Vector128Lanes>(xd, xx, xw, xm, xr, xdx, partial, c, start, end, rows); break;
            default: BackwardBlock<ScalarLanes>(xd, xx, xw, xm, xr, xdx, partial, c, start, end, rows); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void BackwardBlock<TVector>(float* xd, float* xx, float* xw, float* xm, float* xr, float* xdx, float* partial, int c, int start, int end, int rows)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count, full = c & ~(width - 1);
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
            var (meanG0, centredScale0) = DxCoefficients<TVector>(d0, x0, xw, m0, r0, c);
            var (meanG1, centredScale1) = DxCoefficients<TVector>(d1, x1, xw, m1, r1, c);
            TVector vm0 = TVector.Create(m0), vr0 = TVector.Create(r0), vg0 = TVector.Create(meanG0), va0 = TVector.Create(centredScale0);
            TVector vm1 = TVector.Create(m1), vr1 = TVector.Create(r1), vg1 = TVector.Create(meanG1), va1 = TVector.Create(centredScale1);
            bool prefetchNext = i + 4 <= rows;   // the next pair exists (it may start the next block)
            for (int j = 0; j < full; j += width)   // dx += r·(ĝ − mean(ĝ) + x_c·a);  dw += dout·x_c·r;  db += dout
            {
                // One prefetch per 64-byte line (each step at Vector512, every 64/(4·Count)-th step at narrower widths); x86 only.
                if (Sse.IsSupported && prefetchNext && (width == 16 || (j & 15) == 0))
                {
                    Sse.Prefetch0(d0 + ahead + j); Sse.Prefetch0(x0 + ahead + j); Sse.Prefetch0(dx0 + ahead + j);
                    Sse.Prefetch0(d1 + ahead + j); Sse.Prefetch0(x1 + ahead + j); Sse.Prefetch0(dx1 + ahead + j);
                }
                var w = TVector.Load(xw + j);
                var dout0 = TVector.Load(d0 + j);
                var centred0 = TVector.Load(x0 + j) - vm0;
                TVector.MultiplyAdd(TVector.MultiplyAdd(centred0, va0, dout0 * w - vg0), vr0, TVector.Load(dx0 + j)).Store(dx0 + j);
                var dout1 = TVector.Load(d1 + j);
                var centred1 = TVector.Load(x1 + j) - vm1;
                TVector.MultiplyAdd(TVector.MultiplyAdd(centred1, va1, dout1 * w - vg1), vr1, TVector.Load(dx1 + j)).Store(dx1 + j);
                TVector.MultiplyAdd(dout1, centred1 * vr1, TVector.MultiplyAdd(dout0, centred0 * vr0, TVector.Load(pdw + j))).Store(pdw + j);
                (TVector.Load(pdb + j) + dout0 + dout1).Store(pdb + j);
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
            var (meanG, centredScale) = DxCoefficients<TVector>(d, x, xw, mi, ri, c);
            TVector mu = TVector.Create(mi), r = TVector.Create(ri), vg = TVector.Create(meanG), va = TVector.Create(centredScale);
            for (int j = 0; j < full; j += width)
            {
                var dout = TVector.Load(d + j);
                var centred = TVector.Load(x + j) - mu;
                TVector.MultiplyAdd(TVector.MultiplyAdd(centred, va, dout * TVector.Load(xw + j) - vg), r, TVector.Load(dx + j)).Store(dx + j);
                TVector.MultiplyAdd(dout, centred * r, TVector.Load(pdw + j)).Store(pdw + j);
                (TVector.Load(pdb + j) + dout).Store(pdb + j);
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

    /// <summary>dWeight[j], dBias[j] += Σ_blocks the block partials for channels [cStart, cEnd), blocks in order.</summary>
    private static unsafe void AddPartials(float* partials, int paddedC, int blocks, float* dw, float* db, int cStart, int cEnd)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: AddPartials<Vector512Lanes>(partials, paddedC, blocks, dw, db, cStart, cEnd); break;
            case VectorWidth.Vector256: AddPartials<Vector256Lanes>(partials, paddedC, blocks, dw, db, cStart, cEnd); break;
            case VectorWidth.Vector128: AddPartials<Vector128Lanes>(partials, paddedC, blocks, dw, db, cStart, cEnd); break;
            default: AddPartials<ScalarLanes>(partials, paddedC, blocks, dw, db, cStart, cEnd); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void AddPartials<TVector>(float* partials, int paddedC, int blocks, float* dw, float* db, int cStart, int cEnd)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        for (int block = 0; block < blocks; block++)
        {
            float* pw0 = partials + (long)block * 2 * paddedC, pb0 = pw0 + paddedC;
            int j = cStart;
            for (; j + width <= cEnd; j += width)
            {
                (TVector.Load(dw + j) + TVector.Load(pw0 + j)).Store(dw + j);
                (TVector.Load(db + j) + TVector.Load(pb0 + j)).Store(db + j);
            }
            for (; j < cEnd; j++)
            {
                dw[j] += pw0[j];
                db[j] += pb0[j];
            }
        }
    }

    /// <summary>
    /// The per-row constants of the dx line from G = Σ dout·w and H = Σ dout·w·(x − μ) (two accumulators per sum):
    /// mean(ĝ) = G/C and a = −r²·H/C (see <see cref="BackwardBlock{TVector}"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe (float MeanG, float CentredScale) DxCoefficients<TVector>(float* d, float* x, float* xw, float mi, float ri, int c)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count, full = c & ~(width - 1);
        var mu = TVector.Create(mi);
        TVector g0 = TVector.Zero, g1 = g0, h0 = g0, h1 = g0;
        int j2 = 0;
        for (; j2 + 2 * width <= full; j2 += 2 * width)
        {
            var a0 = TVector.Load(d + j2) * TVector.Load(xw + j2);
            var a1 = TVector.Load(d + j2 + width) * TVector.Load(xw + j2 + width);
            g0 += a0;
            g1 += a1;
            h0 = TVector.MultiplyAdd(a0, TVector.Load(x + j2) - mu, h0);
            h1 = TVector.MultiplyAdd(a1, TVector.Load(x + j2 + width) - mu, h1);
        }
        if (j2 < full)
        {
            var a0 = TVector.Load(d + j2) * TVector.Load(xw + j2);
            g0 += a0;
            h0 = TVector.MultiplyAdd(a0, TVector.Load(x + j2) - mu, h0);
        }
        float g = TVector.Sum(g0 + g1), h = TVector.Sum(h0 + h1);
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
