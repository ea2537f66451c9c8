using System.Numerics.Tensors;

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
/// the weighted sum are inline Vector512 over the head (<see cref="Attention.Dot"/>, <see cref="Attention.Axpy"/>),
/// not a library call per cached position.
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
                    var weights = new Span<float>(xs + (long)rh * span, span);
                    float* q = xq + (long)r * 3 * c + h * hs;
                    float* k = xk + (long)r * maxT * c + h * hs, v = xv + (long)r * maxT * c + h * hs;
                    for (int s = 0; s < span; s++) weights[s] = Attention.Dot(q, k + (long)s * c, hs) * scale;
                    float max = TensorPrimitives.Max(weights);
                    TensorPrimitives.Subtract(weights, max, weights);
                    TensorPrimitives.Exp(weights, weights);
                    float inverseSum = 1f / TensorPrimitives.Sum(weights);
                    float* o = xo + (long)r * c + h * hs;
                    new Span<float>(o, hs).Clear();
                    for (int s = 0; s < span; s++) Attention.Axpy(weights[s] * inverseSum, v + (long)s * c, o, hs);
                }
            });
        }
    }
}
