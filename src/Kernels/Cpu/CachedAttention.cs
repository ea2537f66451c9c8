using System.Numerics.Tensors;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Causal attention for one new position per sequence against a key/value cache (KV-cache decoding).
/// </summary>
/// <remarks>
/// For each row r and head h, with q = qkv[r, h·hs : (h+1)·hs] and the cache holding keys K[r, s] and
/// values V[r, s] for positions s = 0 … t (the new position's own key and value already written):
///   a_s = softmax_s(q·K[r,s,h] / √hs),   out[r, h] = Σ_s a_s · V[r,s,h].
/// Forward only: decoding never needs a backward.
/// Shapes: qkv [R, 3C] (only the q third is read); keyCache, valueCache [R, maxT, C];
/// output [R, C]; scratch ≥ R·(t+1) floats.
/// </remarks>
public static class CachedAttention
{
    public static void Forward(ReadOnlySpan<float> qkv, ReadOnlySpan<float> keyCache, ReadOnlySpan<float> valueCache,
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
        if (scratch.Length < rows * (position + 1))
            throw new ArgumentException($"scratch needs {rows * (position + 1)} floats, has {scratch.Length}");

        int hs = c / heads, span = position + 1;
        float scale = 1f / MathF.Sqrt(hs);
        for (int r = 0; r < rows; r++)
        {
            var weights = scratch.Slice(r * span, span);
            var k = keyCache.Slice(r * maxT * c, span * c);
            var v = valueCache.Slice(r * maxT * c, span * c);
            for (int h = 0; h < heads; h++)
            {
                var q = qkv.Slice(r * 3 * c + h * hs, hs);
                for (int s = 0; s < span; s++) weights[s] = TensorPrimitives.Dot(q, k.Slice(s * c + h * hs, hs)) * scale;
                float max = TensorPrimitives.Max(weights);
                TensorPrimitives.Subtract(weights, max, weights);
                TensorPrimitives.Exp(weights, weights);
                float inverseSum = 1f / TensorPrimitives.Sum(weights);
                var o = output.Slice(r * c + h * hs, hs);
                o.Clear();
                for (int s = 0; s < span; s++)
                    TensorPrimitives.MultiplyAdd(v.Slice(s * c + h * hs, hs), weights[s] * inverseSum, o, o);
            }
        }
    }
}
