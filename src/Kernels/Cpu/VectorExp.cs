using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// exp(x) on 16 floats in fp32 arithmetic, for the exp-bound kernels (softmax statistics over the
/// vocabulary, GELU). The runtime's Vector512.Exp/TensorPrimitives.Exp (fp32 via fp64, exp(0) = 1 + 1 ulp)
/// cost ≈ 1.2 ns per element here, which makes TargetLogProbs compute-bound. Method (Cody–Waite):
/// n = round(x·log2 e), r = x − n·ln 2 (ln 2 split in two for an exact product), exp(r) by a polynomial on
/// |r| ≤ ln2/2, times 2ⁿ. With AVX-512: a degree-6 polynomial in Horner form (coefficients fitted for minimax
/// relative error, 3·10⁻⁹) and 2ⁿ applied by vscalefps, which also overflows to +∞ and underflows through the
/// denormals to 0 on its own: 12 vector ops, ≤ 1 ulp (tested). Without it: Cephes' expf polynomial and 2ⁿ built
/// in the exponent bits, with explicit clamps and selects (≈ 19 ops, ≤ 2 ulp), where x &lt; −86.6 gives 0.
/// exp(0) = 1 exactly; x &gt; 88.72 gives +∞; NaN gives NaN.
/// </summary>
internal static class VectorExp
{
    private const float Log2E = 1.44269504088896341f;
    private const float Ln2High = 0.693359375f;           // exactly representable with few bits: n·Ln2High is exact
    private const float Ln2Low = -2.12194440e-4f;
    private const float MinInput = -86.6f;                 // below: 0 (exp < 2.3e-38, near the smallest normal 1.2e-38)
    private const float MaxInput = 88.722839f;             // above: exp overflows

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        if (Avx512F.IsSupported)
        {
            // Clamped to [−110, 100] (exp is 0 or +∞ in fp32 well before either bound); vmaxps/vminps return their
            // second operand, x, when it is NaN, so NaN stays NaN.
            var bounded = Vector512.MinNative(Vector512.Create(100f), Vector512.MaxNative(Vector512.Create(-110f), x));
            var reduced = Reduce(bounded, out var k);
            var q = Vector512.FusedMultiplyAdd(Vector512.Create(1.3814611593e-3f), reduced, Vector512.Create(8.3687100559e-3f));
            q = Vector512.FusedMultiplyAdd(q, reduced, Vector512.Create(4.1668388993e-2f));
            q = Vector512.FusedMultiplyAdd(q, reduced, Vector512.Create(1.6666521132e-1f));
            q = Vector512.FusedMultiplyAdd(q, reduced, Vector512.Create(4.9999994040e-1f));
            q = Vector512.FusedMultiplyAdd(q, reduced, Vector512<float>.One);
            q = Vector512.FusedMultiplyAdd(q, reduced, Vector512<float>.One);
            return Avx512F.Scale(q, k);
        }
        var clamped = Vector512.MinNative(Vector512.MaxNative(x, Vector512.Create(MinInput)), Vector512.Create(MaxInput));
        var r = Reduce(clamped, out var n);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(1.9875691500E-4f), r, Vector512.Create(1.3981999507E-3f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(8.3334519073E-3f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(4.1665795894E-2f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.6666665459E-1f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(5.0000001201E-1f));
        p = Vector512.FusedMultiplyAdd(p, r * r, r) + Vector512<float>.One;
        // 2ⁿ = 2ⁿ⁻¹·2 with n in [−125, 128], so 2ⁿ⁻¹ is always a normal float (2¹²⁸ itself is not).
        var twoToNMinusOne = (Vector512.ConvertToInt32(n) + Vector512.Create(126)) << 23;
        var result = p * twoToNMinusOne.AsSingle() * Vector512.Create(2f);
        result = Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(MinInput)), Vector512<float>.Zero, result);
        result = Vector512.ConditionalSelect(Vector512.GreaterThan(x, Vector512.Create(MaxInput)), Vector512.Create(float.PositiveInfinity), result);
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), result, x);   // NaN stays NaN
    }

    /// <summary>Cody–Waite reduction: n = round(x·log₂e) and r = x − n·ln 2 (ln 2 in two parts, so n·Ln2High is exact), |r| ≤ ln2/2.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Reduce(Vector512<float> x, out Vector512<float> n)
    {
        n = Vector512.Round(x * Vector512.Create(Log2E));
        return Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Low), Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2High), x));
    }
}
