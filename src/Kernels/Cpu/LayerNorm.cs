using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Layer normalisation over the last axis (C) of x [N, C]:
///   μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  out = x̂·w + b,   ε = 1e-5.
/// Forward saves μ [N] and r [N] ("rstd") for the backward.
/// Backward, with ĝ = dout·w:
///   dx += r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),   dw += Σ_n dout·x̂,   db += Σ_n dout   (all accumulate).
/// Each row is handled by Vector512 loops over its channels (a row of C = 768 is 3 KB and stays in L1
/// between the passes over it), with scalar loops for the last C mod 16 channels: every op here is
/// +, −, ×, or FMA, which round identically in vector and scalar form.
/// </summary>
public static class LayerNorm
{
    /// <summary>ε added to the variance (GPT-2's value).</summary>
    public const float Epsilon = 1e-5f;

    /// <summary>Channels per unit of parallel work in the parameter-gradient pass (one cache line).</summary>
    private const int ChannelBlock = 16;

    /// <summary>
    /// out = (x − μ)·r·w + b per row; writes mean[n] = μ and rstd[n] = r.
    /// Shapes: input, output [N, C]; weight, bias [C]; mean, rstd [N] with N = input.Length / C.
    /// Three passes over each (L1-resident) row: Σx, Σ(x − μ)² (two-pass variance: no cancellation), then out.
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

    /// <summary>Rows [start, end) of the forward. A plain static method, not a lambda body: locals the JIT
    /// can keep in registers (captured variables live in a closure object that every store might alias).</summary>
    private static unsafe void ForwardRows(float* xx, float* xw, float* xb, float* xo, float* xm, float* xr, int c, int start, int end)
    {
        int full = c & ~15;
        for (int i = start; i < end; i++)
        {
            float* x = xx + (long)i * c;
            float* o = xo + (long)i * c;
            var acc = Vector512<float>.Zero;
            for (int j = 0; j < full; j += 16) acc += Vector512.Load(x + j);
            float sum = Vector512.Sum(acc);
            for (int j = full; j < c; j++) sum += x[j];
            float mu = sum / c;
            var vmu = Vector512.Create(mu);
            acc = Vector512<float>.Zero;
            for (int j = 0; j < full; j += 16)
            {
                var d = Vector512.Load(x + j) - vmu;
                acc = Vector512.FusedMultiplyAdd(d, d, acc);
            }
            float squares = Vector512.Sum(acc);
            for (int j = full; j < c; j++) squares = MathF.FusedMultiplyAdd(x[j] - mu, x[j] - mu, squares);
            float r = 1f / MathF.Sqrt(squares / c + Epsilon);
            var vr = Vector512.Create(r);
            for (int j = 0; j < full; j += 16)
                Vector512.FusedMultiplyAdd((Vector512.Load(x + j) - vmu) * vr, Vector512.Load(xw + j), Vector512.Load(xb + j)).Store(o + j);
            for (int j = full; j < c; j++) o[j] = MathF.FusedMultiplyAdd((x[j] - mu) * r, xw[j], xb[j]);
            xm[i] = mu;
            xr[i] = r;
        }
    }

    /// <summary>
    /// Accumulates dInput, dWeight and dBias from dOutput, using the forward's input, mean and rstd.
    /// dInput is parallel over rows; dWeight/dBias are parallel over channel blocks with the row loop in
    /// fixed order (no per-thread partial sums), so all three are bit-identical for any thread count.
    /// The second pass re-reads dOutput and input (2·N·C floats of extra traffic) to buy that determinism.
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
        fixed (float* pd = dOutput, px = input, pw = weight, pm = mean, pr = rstd, pdx = dInput, pdw = dWeight, pdb = dBias)
        {
            float* xd = pd, xx = px, xw = pw, xm = pm, xr = pr, xdx = pdx, xdw = pdw, xdb = pdb;

            // dInput, one row at a time: pass 1 gets mean(ĝ) and mean(ĝx̂), pass 2 writes dx.
            CpuParallel.For(n, Math.Max(1, 8192 / c), (start, end) =>
            {
                int full = c & ~15;
                for (int i = start; i < end; i++)
                {
                    long row = (long)i * c;
                    float* d = xd + row, x = xx + row, dx = xdx + row;
                    var mu = Vector512.Create(xm[i]);
                    var r = Vector512.Create(xr[i]);
                    var sumG = Vector512<float>.Zero;
                    var sumGX = Vector512<float>.Zero;
                    for (int j = 0; j < full; j += 16)
                    {
                        var g = Vector512.Load(d + j) * Vector512.Load(xw + j);
                        sumG += g;
                        sumGX = Vector512.FusedMultiplyAdd(g, (Vector512.Load(x + j) - mu) * r, sumGX);
                    }
                    float totalG = Vector512.Sum(sumG), totalGX = Vector512.Sum(sumGX);
                    for (int j = full; j < c; j++)
                    {
                        float g = d[j] * xw[j];
                        totalG += g;
                        totalGX = MathF.FusedMultiplyAdd(g, (x[j] - xm[i]) * xr[i], totalGX);
                    }
                    var meanG = Vector512.Create(totalG / c);
                    var minusMeanGX = Vector512.Create(-totalGX / c);
                    for (int j = 0; j < full; j += 16)   // dx += r·(ĝ − mean(ĝ) − x̂·mean(ĝx̂))
                        Vector512.FusedMultiplyAdd(
                            Vector512.FusedMultiplyAdd((Vector512.Load(x + j) - mu) * r, minusMeanGX, Vector512.Load(d + j) * Vector512.Load(xw + j) - meanG),
                            r, Vector512.Load(dx + j)).Store(dx + j);
                    for (int j = full; j < c; j++)
                        dx[j] = MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd((x[j] - xm[i]) * xr[i], minusMeanGX[0], d[j] * xw[j] - meanG[0]), xr[i], dx[j]);
                }
            });

            // dWeight, dBias: each thread owns a block of channels and walks all rows in order.
            int blocks = (c + ChannelBlock - 1) / ChannelBlock;
            CpuParallel.For(blocks, Math.Max(1, 4096 / n), (b0, b1) =>
            {
                int cStart = b0 * ChannelBlock, cEnd = Math.Min(c, b1 * ChannelBlock);
                for (int i = 0; i < n; i++)
                {
                    long row = (long)i * c;
                    var mu = Vector512.Create(xm[i]);
                    var r = Vector512.Create(xr[i]);
                    int j = cStart;
                    for (; j <= cEnd - 16; j += 16)
                    {
                        var d = Vector512.Load(xd + row + j);
                        Vector512.FusedMultiplyAdd(d, (Vector512.Load(xx + row + j) - mu) * r, Vector512.Load(xdw + j)).Store(xdw + j);
                        (Vector512.Load(xdb + j) + d).Store(xdb + j);
                    }
                    for (; j < cEnd; j++)   // scalar FMA rounds exactly like the vector one: same bits wherever the split falls
                    {
                        float d = xd[row + j];
                        xdw[j] = MathF.FusedMultiplyAdd(d, (xx[row + j] - xm[i]) * xr[i], xdw[j]);
                        xdb[j] += d;
                    }
                }
            });
        }
    }

    private static int Rows(int length, int channels)
    {
        ShapeCheck.Positive(channels, "weight.Length");
        if (length % channels != 0)
            throw new ArgumentException($"input has {length} elements, not a multiple of C = {channels} (weight.Length).", "input");
        return length / channels;
    }
}
