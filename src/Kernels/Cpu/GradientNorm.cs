using System.Numerics.Tensors;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>What <see cref="GradientNorm.ClipByGlobalNorm(float, ReadOnlySpan{Memory{float}})"/> found and did.</summary>
/// <param name="Norm">The global L2 norm before clipping (NaN or ∞ when a gradient is not finite).</param>
/// <param name="Scale">The factor the gradients were multiplied by: min(1, maxNorm/(norm + 1e-6)), or 1 when the norm is not finite (then nothing is changed).</param>
public readonly record struct GradientClip(double Norm, float Scale)
{
    /// <summary>False when the norm is NaN or infinite: the caller should skip the step.</summary>
    public bool IsFinite => double.IsFinite(Norm);
}

/// <summary>
/// Global L2 norm of gradients, ‖g‖ = √(Σ_i g_i²), over one or several flat spans, and clipping by it.
/// Deterministic for any thread count: each span is cut into blocks of <see cref="BlockLength"/> elements
/// (fixed by the length), each block's Σg² is a vectorised fp32 sum (at most 8 adds per lane before fp64, at any vector width), blocks are added in order in fp64
/// inside at most <see cref="Groups"/> contiguous groups (fixed by the length), and the group sums are
/// added in order. Threads only decide who computes which group.
/// </summary>
public static class GradientNorm
{
    /// <summary>Elements per block whose squares are summed in fp32.</summary>
    public const int BlockLength = 4096;
    /// <summary>Most groups of blocks (the unit of parallel work) per span.</summary>
    public const int Groups = 64;

    /// <summary>Σ values², deterministic, accumulated in fp64 across blocks.</summary>
    public static unsafe double SumOfSquares(ReadOnlySpan<float> values)
    {
        int length = values.Length;
        if (length == 0) return 0.0;
        int blocks = (length + BlockLength - 1) / BlockLength;
        int groups = Math.Min(Groups, blocks);
        double* partial = stackalloc double[Groups];
        fixed (float* pv = values)
        {
            float* xv = pv;
            CpuParallel.For(groups, 1, (g0, g1) =>
            {
                for (int g = g0; g < g1; g++)
                {
                    var (b0, b1) = CpuParallel.RangeOf(g, groups, blocks);
                    double sum = 0.0;
                    for (int b = b0; b < b1; b++)
                    {
                        long start = (long)b * BlockLength;
                        int len = (int)Math.Min(BlockLength, length - start);
                        sum += BlockSumOfSquares(xv + start, len);
                    }
                    partial[g] = sum;
                }
            });
        }
        double total = 0.0;
        for (int g = 0; g < groups; g++) total += partial[g];
        return total;
    }

    /// <summary>Σ x² over one block at the widest accelerated width.</summary>
    private static unsafe double BlockSumOfSquares(float* x, int length) => CpuVectors.Width switch
    {
        VectorWidth.Vector512 => BlockSumOfSquares<Vector512Lanes>(x, length),
        VectorWidth.Vector256 => BlockSumOfSquares<Vector256Lanes>(x, length),
        VectorWidth.Vector128 => BlockSumOfSquares<Vector128Lanes>(x, length),
        _ => BlockSumOfSquares<ScalarLanes>(x, length),
    };

    /// <summary>
    /// Σ x² with four fp32 accumulators whose lanes each add at most <see cref="LaneSums.AddsPerLane"/> squares before the partial sums go to fp64, so the
    /// error (≤ 10·2⁻²⁴ relative) is the same at every vector width; the tail is added in fp64.
    /// </summary>
    private static unsafe double BlockSumOfSquares<TVector>(float* x, int length) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count, i = 0, adds = 0;
        double total = 0.0;
        TVector s0 = TVector.Zero, s1 = s0, s2 = s0, s3 = s0;
        for (; i + 4 * width <= length; i += 4 * width)
        {
            var a = TVector.Load(x + i);
            var b = TVector.Load(x + i + width);
            var c = TVector.Load(x + i + 2 * width);
            var d = TVector.Load(x + i + 3 * width);
            s0 = TVector.MultiplyAdd(a, a, s0);
            s1 = TVector.MultiplyAdd(b, b, s1);
            s2 = TVector.MultiplyAdd(c, c, s2);
            s3 = TVector.MultiplyAdd(d, d, s3);
            if (++adds == LaneSums.AddsPerLane)
            {
                total += TVector.SumAsDouble((s0 + s1) + (s2 + s3));
                s0 = s1 = s2 = s3 = TVector.Zero;
                adds = 0;
            }
        }
        total += TVector.SumAsDouble((s0 + s1) + (s2 + s3));
        for (; i < length; i++) total += (double)x[i] * x[i];
        return total;
    }

    /// <summary>‖values‖₂.</summary>
    public static double GlobalNorm(ReadOnlySpan<float> values) => Math.Sqrt(SumOfSquares(values));

    /// <summary>‖(t_0, t_1, …)‖₂ over several gradient tensors, added in the order given.</summary>
    public static double GlobalNorm(params ReadOnlySpan<ReadOnlyMemory<float>> tensors)
    {
        double total = 0.0;
        foreach (var t in tensors) total += SumOfSquares(t.Span);
        return Math.Sqrt(total);
    }

    /// <summary>Scales <paramref name="gradients"/> so their norm is at most <paramref name="maxNorm"/>.</summary>
    public static GradientClip ClipByGlobalNorm(Span<float> gradients, float maxNorm)
    {
        double norm = GlobalNorm(gradients);
        float scale = ScaleFor(norm, maxNorm);
        if (scale != 1f) Scale(gradients, scale);
        return new GradientClip(norm, scale);
    }

    /// <summary>Scales every tensor by one factor so that their global norm is at most <paramref name="maxNorm"/>.</summary>
    public static GradientClip ClipByGlobalNorm(float maxNorm, params ReadOnlySpan<Memory<float>> tensors)
    {
        double total = 0.0;
        foreach (var t in tensors) total += SumOfSquares(t.Span);
        double norm = Math.Sqrt(total);
        float scale = ScaleFor(norm, maxNorm);
        if (scale != 1f)
            foreach (var t in tensors) Scale(t.Span, scale);
        return new GradientClip(norm, scale);
    }

    private static float ScaleFor(double norm, float maxNorm)
    {
        if (!(maxNorm > 0f))
            throw new ArgumentOutOfRangeException(nameof(maxNorm), maxNorm, "The clipping threshold must be positive.");
        if (!double.IsFinite(norm)) return 1f;
        return (float)Math.Min(1.0, maxNorm / (norm + 1e-6));
    }

    private static unsafe void Scale(Span<float> values, float scale)
    {
        fixed (float* pv = values)
        {
            float* xv = pv;
            CpuParallel.For(values.Length, 1 << 15, (start, end) =>
            {
                var s = new Span<float>(xv + start, end - start);
                TensorPrimitives.Multiply(s, scale, s);
            });
        }
    }
}
