using System.Numerics.Tensors;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Layer normalisation over the last axis (C) of x [N, C]:
///   μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  out = x̂·w + b,   ε = 1e-5.
/// Forward saves μ [N] and r [N] ("rstd") for the backward.
/// Backward, with ĝ = dout·w:
///   dx += r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),   dw += Σ_n dout·x̂,   db += Σ_n dout   (all accumulate).
/// </summary>
public static class LayerNorm
{
    /// <summary>ε added to the variance (GPT-2's value).</summary>
    public const float Epsilon = 1e-5f;

    /// <summary>Channels per stack chunk in the backward, so the chunk's passes stay in L1.</summary>
    private const int Chunk = 256;
    /// <summary>Channels per unit of parallel work in the parameter-gradient pass (one cache line).</summary>
    private const int ChannelBlock = 16;

    /// <summary>
    /// out = (x − μ)·r·w + b per row; writes mean[n] = μ and rstd[n] = r.
    /// Shapes: input, output [N, C]; weight, bias [C]; mean, rstd [N] with N = input.Length / C.
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
                var w = new ReadOnlySpan<float>(xw, c);
                var b = new ReadOnlySpan<float>(xb, c);
                for (int i = start; i < end; i++)
                {
                    var x = new ReadOnlySpan<float>(xx + (long)i * c, c);
                    var o = new Span<float>(xo + (long)i * c, c);
                    float mu = TensorPrimitives.Sum(x) / c;
                    TensorPrimitives.Subtract(x, mu, o);                 // x − μ (two-pass variance: no cancellation)
                    float variance = TensorPrimitives.Dot(o, o) / c;
                    float r = 1f / MathF.Sqrt(variance + Epsilon);
                    TensorPrimitives.Multiply(o, r, o);                  // x̂
                    TensorPrimitives.FusedMultiplyAdd(o, w, b, o);       // x̂·w + b
                    xm[i] = mu;
                    xr[i] = r;
                }
            });
        }
    }

    /// <summary>
    /// Accumulates dInput, dWeight and dBias from dOutput, using the forward's input, mean and rstd.
    /// dInput is parallel over rows; dWeight/dBias are parallel over channel blocks with the row loop in
    /// fixed order, so all three are bit-identical for any thread count.
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

            // dInput, one row at a time, in chunks of `Chunk` channels (no scratch beyond the stack).
            CpuParallel.For(n, Math.Max(1, 8192 / c), (start, end) =>
            {
                Span<float> buffers = stackalloc float[2 * Chunk];
                for (int i = start; i < end; i++)
                {
                    long row = (long)i * c;
                    float mu = xm[i], r = xr[i];
                    float sumG = 0f, sumGX = 0f;
                    for (int c0 = 0; c0 < c; c0 += Chunk)
                    {
                        int len = Math.Min(Chunk, c - c0);
                        var g = buffers[..len];
                        var xhat = buffers.Slice(Chunk, len);
                        TensorPrimitives.Multiply(new ReadOnlySpan<float>(xd + row + c0, len), new ReadOnlySpan<float>(xw + c0, len), g);
                        NormalizedChunk(new ReadOnlySpan<float>(xx + row + c0, len), mu, r, xhat);
                        sumG += TensorPrimitives.Sum(g);
                        sumGX += TensorPrimitives.Dot(g, xhat);
                    }
                    float meanG = sumG / c, meanGX = sumGX / c;
                    for (int c0 = 0; c0 < c; c0 += Chunk)
                    {
                        int len = Math.Min(Chunk, c - c0);
                        var g = buffers[..len];
                        var xhat = buffers.Slice(Chunk, len);
                        TensorPrimitives.Multiply(new ReadOnlySpan<float>(xd + row + c0, len), new ReadOnlySpan<float>(xw + c0, len), g);
                        NormalizedChunk(new ReadOnlySpan<float>(xx + row + c0, len), mu, r, xhat);
                        TensorPrimitives.Subtract(g, meanG, g);
                        TensorPrimitives.FusedMultiplyAdd(xhat, -meanGX, g, g);   // ĝ − mean(ĝ) − x̂·mean(ĝx̂)
                        var dx = new Span<float>(xdx + row + c0, len);
                        TensorPrimitives.FusedMultiplyAdd(g, r, dx, dx);
                    }
                }
            });

            // dWeight, dBias: each thread owns a block of channels and walks all rows in order.
            int blocks = (c + ChannelBlock - 1) / ChannelBlock;
            CpuParallel.For(blocks, Math.Max(1, 4096 / n), (b0, b1) =>
            {
                Span<float> xhat = stackalloc float[Chunk];
                int cStart = b0 * ChannelBlock, cEnd = Math.Min(c, b1 * ChannelBlock);
                for (int i = 0; i < n; i++)
                {
                    long row = (long)i * c;
                    for (int c0 = cStart; c0 < cEnd; c0 += Chunk)
                    {
                        int len = Math.Min(Chunk, cEnd - c0);
                        var d = new ReadOnlySpan<float>(xd + row + c0, len);
                        var h = xhat[..len];
                        NormalizedChunk(new ReadOnlySpan<float>(xx + row + c0, len), xm[i], xr[i], h);
                        var dw = new Span<float>(xdw + c0, len);
                        var db = new Span<float>(xdb + c0, len);
                        TensorPrimitives.FusedMultiplyAdd(d, h, dw, dw);
                        TensorPrimitives.Add(db, d, db);
                    }
                }
            });
        }
    }

    /// <summary>x̂ = (x − μ)·r for one chunk of a row (same operations as the forward, so x̂ matches).</summary>
    private static void NormalizedChunk(ReadOnlySpan<float> x, float mu, float r, Span<float> xhat)
    {
        TensorPrimitives.Subtract(x, mu, xhat);
        TensorPrimitives.Multiply(xhat, r, xhat);
    }

    private static int Rows(int length, int channels)
    {
        ShapeCheck.Positive(channels, "weight.Length");
        if (length % channels != 0)
            throw new ArgumentException($"input has {length} elements, not a multiple of C = {channels} (weight.Length).", "input");
        return length / channels;
    }
}
