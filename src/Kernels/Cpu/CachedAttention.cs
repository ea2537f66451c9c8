using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Causal attention for one new position per sequence against a key/value cache (KV-cache decoding).
/// </summary>
/// <remarks>
/// For each row r and head h, with q = qkv[r, h·hs : (h+1)·hs] and the cache holding keys K[r, s] and
/// values V[r, s] for positions s = 0 … t (the new position's own key and value already written):
///   a_s = softmax_s(q·K[r,s,h] / √hs),   out[r, h] = Σ_s a_s · V[r,s,h].
/// Forward only: decoding never needs a backward. The (r, h) pairs are independent and split over the threads
/// (each its own slice of scratch), so results do not depend on the thread count; per pair the dot products and
/// the weighted sum are inline vector loops over the head at the widest accelerated width (<see cref="Attention.Dot{TVector}"/>,
/// <see cref="Attention.Axpy{TVector}"/>), not a library call per cached position.
/// Shapes: qkv [R, 3C] (only the q third is read); keyCache, valueCache [R, maxT, C];
/// output [R, C]; scratch ≥ R·NH·(t+1) floats.
/// </remarks>
public static class CachedAttention
{
    /// <summary>Scratch floats <see cref="Forward"/> needs for <paramref name="rows"/> rows, <paramref name="heads"/> heads and up to <paramref name="maxT"/> positions.</summary>
    public static int ScratchLength(int rows, int heads, int maxT) => rows * heads * maxT;

    public static unsafe void Forward(ReadOnlySpan<float> qkv, ReadOnlySpan<float> keyCache, ReadOnlySpan<float> valueCache,
                                      int rows, int maxT, int position, int heads, Span<float> output, Span<float> scratch)
    {
        ShapeCheck.Positive(heads, nameof(heads));
        int c = output.Length / Math.Max(1, rows);
        if (rows == 0) return;
        if (c % heads != 0) throw new ArgumentException($"channels {c} must be a multiple of heads {heads}");
        if ((uint)position >= (uint)maxT) throw new ArgumentOutOfRangeException(nameof(position), position, $"position must be in [0, {maxT})");
        ShapeCheck.Length(qkv.Length, (long)rows * 3 * c, nameof(qkv), "[R, 3C]");
        ShapeCheck.Length(keyCache.Length, (long)rows * maxT * c, nameof(keyCache), "[R, maxT, C]");
        ShapeCheck.Length(valueCache.Length, (long)rows * maxT * c, nameof(valueCache), "[R, maxT, C]");
        int span = position + 1;
        if (scratch.Length < rows * heads * span)
            throw new ArgumentException($"scratch needs {rows * heads * span} floats (R·NH·(t+1)), has {scratch.Length}");

        int hs = c / heads;
        float scale = 1f / MathF.Sqrt(hs);
        fixed (float* pq = qkv, pk = keyCache, pv = valueCache, po = output, ps = scratch)
        {
            float* xq = pq, xk = pk, xv = pv, xo = po, xs = ps;
            CpuParallel.For(rows * heads, 1, (start, end) =>
            {
                for (int rh = start; rh < end; rh++)
                {
                    int r = rh / heads, h = rh % heads;
                    long head = (long)r * maxT * c + h * hs;
                    Head(xq + (long)r * 3 * c + h * hs, xk + head, xv + head, c, hs, span, scale, xo + (long)r * c + h * hs, xs + (long)rh * span);
                }
            });
        }
    }

    /// <summary>One (r, h): out = Σ_s softmax_s(q·k_s·scale)·v_s over s &lt; span, k_s and v_s at k + s·C and v + s·C; weights is span floats of scratch.</summary>
    private static unsafe void Head(float* q, float* k, float* v, int c, int hs, int span, float scale, float* o, float* weights)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: Head<Vector512Lanes>(q, k, v, c, hs, span, scale, o, weights); break;
            case VectorWidth.Vector256: Head<Vector256Lanes>(q, k, v, c, hs, span, scale, o, weights); break;
            case VectorWidth.Vector128: Head<Vector128Lanes>(q, k, v, c, hs, span, scale, o, weights); break;
            default: Head<ScalarLanes>(q, k, v, c, hs, span, scale, o, weights); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static unsafe void Head<TVector>(float* q, float* k, float* v, int c, int hs, int span, float scale, float* o, float* scratch)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        var weights = new Span<float>(scratch, span);
        for (int s = 0; s < span; s++) weights[s] = Attention.Dot<TVector>(q, k + (long)s * c, hs) * scale;
        float max = TensorPrimitives.Max(weights);
        TensorPrimitives.Subtract(weights, max, weights);
        TensorPrimitives.Exp(weights, weights);
        float inverseSum = 1f / TensorPrimitives.Sum(weights);
        new Span<float>(o, hs).Clear();
        for (int s = 0; s < span; s++) Attention.Axpy<TVector>(weights[s] * inverseSum, v + (long)s * c, o, hs);
    }
}
