using System.Runtime.CompilerServices;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// AdamW with decoupled weight decay, as PyTorch's <c>torch.optim.AdamW</c> (weight decay is multiplied
/// by the learning rate). For every element, at step t ≥ 1:
/// <code>
///   p ← p − lr·λ·p                       (decoupled decay, first, on the old p)
///   m ← β1·m + (1 − β1)·g
///   v ← β2·v + (1 − β2)·g²
///   m̂ = m / (1 − β1^t),  v̂ = v / (1 − β2^t)
///   p ← p − lr·m̂ / (√v̂ + ε)
/// </code>
/// One fused pass: reads p, g, m, v and writes p, m, v (28 bytes per parameter). Every element is computed
/// independently with the same IEEE operations in the vector body and the scalar tail, so results are
/// bit-identical for any thread count. Pass λ = 0 for spans that should not decay (biases, LayerNorm).
/// </summary>
public static class AdamW
{
    private const int MinPerRange = 1 << 16;

    /// <summary>Updates <paramref name="parameters"/>, <paramref name="m"/> and <paramref name="v"/> in place.</summary>
    /// <param name="parameters">p, updated in place.</param>
    /// <param name="gradients">g, same length as p.</param>
    /// <param name="m">First moment, updated in place (zero before step 1).</param>
    /// <param name="v">Second moment, updated in place (zero before step 1).</param>
    /// <param name="step">The 1-based step number t, used for bias correction.</param>
    /// <param name="learningRate">lr.</param>
    /// <param name="beta1">β1 in [0, 1).</param>
    /// <param name="beta2">β2 in [0, 1).</param>
    /// <param name="epsilon">ε, added to √v̂.</param>
    /// <param name="weightDecay">λ; the decay applied is lr·λ·p (PyTorch's convention).</param>
    public static unsafe void Step(Span<float> parameters, ReadOnlySpan<float> gradients, Span<float> m, Span<float> v,
                                   int step, float learningRate, float beta1 = 0.9f, float beta2 = 0.999f,
                                   float epsilon = 1e-8f, float weightDecay = 0f)
    {
        int n = parameters.Length;
        ShapeCheck.Length(gradients.Length, n, nameof(gradients), "same length as parameters");
        ShapeCheck.Length(m.Length, n, nameof(m), "same length as parameters");
        ShapeCheck.Length(v.Length, n, nameof(v), "same length as parameters");
        if (step < 1)
            throw new ArgumentOutOfRangeException(nameof(step), step, "The AdamW step number is 1-based: the first update is step 1.");
        if (!(beta1 >= 0f && beta1 < 1f) || !(beta2 >= 0f && beta2 < 1f))
            throw new ArgumentOutOfRangeException(nameof(beta1), $"β1 = {beta1} and β2 = {beta2} must lie in [0, 1).");

        var k = new Constants
        {
            Decay = 1f - learningRate * weightDecay,
            Beta1 = beta1, OneMinusBeta1 = 1f - beta1,
            Beta2 = beta2, OneMinusBeta2 = 1f - beta2,
            Correction1 = (float)(1.0 - Math.Pow(beta1, step)),
            Correction2 = (float)(1.0 - Math.Pow(beta2, step)),
            LearningRate = learningRate, Epsilon = epsilon,
        };
        fixed (float* pp = parameters, pg = gradients, pm = m, pv = v)
        {
            float* xp = pp, xg = pg, xm = pm, xv = pv;
            CpuParallel.For(n, MinPerRange, (start, end) => Update(xp, xg, xm, xv, start, end, k));
        }
    }

    private struct Constants
    {
        public float Decay, Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, Correction1, Correction2, LearningRate, Epsilon;
    }

    private static unsafe void Update(float* p, float* g, float* m, float* v, int start, int end, Constants k)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: Update<Vector512Lanes>(p, g, m, v, start, end, k); break;
            case VectorWidth.Vector256: Update<Vector256Lanes>(p, g, m, v, start, end, k); break;
            case VectorWidth.Vector128: Update<Vector128Lanes>(p, g, m, v, start, end, k); break;
            default: Update<ScalarLanes>(p, g, m, v, start, end, k); break;
        }
    }

    private static unsafe void Update<TVector>(float* p, float* g, float* m, float* v, int start, int end, Constants k)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        int i = start;
        var decay = TVector.Create(k.Decay);
        var b1 = TVector.Create(k.Beta1); var ob1 = TVector.Create(k.OneMinusBeta1);
        var b2 = TVector.Create(k.Beta2); var ob2 = TVector.Create(k.OneMinusBeta2);
        var c1 = TVector.Create(k.Correction1); var c2 = TVector.Create(k.Correction2);
        var lr = TVector.Create(k.LearningRate); var eps = TVector.Create(k.Epsilon);
        for (; i <= end - TVector.Count; i += TVector.Count)
        {
            var gi = TVector.Load(g + i);
            var mi = b1 * TVector.Load(m + i) + ob1 * gi;
            var vi = b2 * TVector.Load(v + i) + ob2 * (gi * gi);
            var pi = TVector.Load(p + i) * decay;
            pi -= lr * ((mi / c1) / (TVector.Sqrt(vi / c2) + eps));
            mi.Store(m + i);
            vi.Store(v + i);
            pi.Store(p + i);
        }
        for (; i < end; i++) UpdateOne(ref p[i], g[i], ref m[i], ref v[i], k);
    }

    /// <summary>The scalar form of the vector body above: same operations in the same order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void UpdateOne(ref float p, float g, ref float m, ref float v, in Constants k)
    {
        m = k.Beta1 * m + k.OneMinusBeta1 * g;
        v = k.Beta2 * v + k.OneMinusBeta2 * (g * g);
        p *= k.Decay;
        p -= k.LearningRate * ((m / k.Correction1) / (MathF.Sqrt(v / k.Correction2) + k.Epsilon));
    }
}
