using System.Runtime.CompilerServices;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// exp(x) on one vector of fp32 lanes in fp32 arithmetic, for the exp-bound kernels (softmax statistics over the
/// vocabulary, GELU). The runtime's Vector512.Exp/TensorPrimitives.Exp (fp32 via fp64, exp(0) = 1 + 1 ulp)
/// cost ≈ 1.2 ns per element here, which makes TargetLogProbs compute-bound. Method (Cody–Waite):
/// n = round(x·log₂e), r = x − n·ln 2 (ln 2 split in two, so n·Ln2High is exact even without FMA), exp(r) by a degree-6
/// polynomial in Horner form on |r| ≤ ln2/2 (coefficients fitted for minimax relative error, 3·10⁻⁹), then
/// p·2ⁿ rounded once (<see cref="IFloatVector{TSelf}.ScaleByPowerOfTwo"/>: vscalefps with AVX-512, two exact power-of-two
/// factors elsewhere), so results below the smallest normal come out as correctly rounded denormals and then 0, and
/// results above the largest float as +∞. The same algorithm at every width (where multiply-add is not fused, the
/// polynomial's last step is compensated instead, see the code): the contract (≤ 1 ulp over the normal range,
/// exp(0) = 1 exactly, denormals within half a denormal step, −∞ → 0, +∞ → +∞, NaN → NaN) holds on every path, and is
/// tested on each one the machine runs.
/// </summary>
internal static class VectorExp
{
    private const float Log2E = 1.44269504088896341f;
    private const float Ln2High = 0.693359375f;           // 9 significant bits: n·Ln2High is exact for |n| < 2¹⁵
    private const float Ln2Low = -2.12194440e-4f;

    /// <summary>exp of each lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVector Exp<TVector>(TVector x) where TVector : unmanaged, IFloatVector<TVector>
    {
        // Clamped to [−110, 100]: exp is 0 or +∞ in fp32 well before either bound, and n stays within ScaleByPowerOfTwo's
        // range. maxps/minps return their second operand, x, when it is NaN (ARM64's fmax/fmin return NaN), so NaN stays NaN.
        var bounded = TVector.MinNative(TVector.Create(100f), TVector.MaxNative(TVector.Create(-110f), x));
        var n = TVector.Round(bounded * TVector.Create(Log2E));
        var r = TVector.MultiplyAdd(n, TVector.Create(-Ln2Low), TVector.MultiplyAdd(n, TVector.Create(-Ln2High), bounded));
        var one = TVector.Create(1f);
        if (TVector.MultiplyAddIsFused)
        {
            var q = TVector.MultiplyAdd(TVector.Create(1.3814611593e-3f), r, TVector.Create(8.3687100559e-3f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(4.1668388993e-2f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(1.6666521132e-1f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(4.9999994040e-1f));
            q = TVector.MultiplyAdd(q, r, one);
            return TVector.ScaleByPowerOfTwo(TVector.MultiplyAdd(q, r, one), n);
        }
        // Without a fused multiply-add, Horner's last two steps round twice each (measured 1.13 ulp). Instead
        // e^r = 1 + r + u with u = r²·(½ + r/6 + …) small (|u| ≤ 0.07): s = 1 + r is formed with its rounding error
        // e = (1 − s) + r recovered exactly (Fast2Sum, |1| ≥ |r|), and the result is s + (u + e): one rounding that
        // matters, as with FMA.
        var p = TVector.MultiplyAdd(TVector.Create(1.3814611593e-3f), r, TVector.Create(8.3687100559e-3f));
        p = TVector.MultiplyAdd(p, r, TVector.Create(4.1668388993e-2f));
        p = TVector.MultiplyAdd(p, r, TVector.Create(1.6666521132e-1f));
        p = TVector.MultiplyAdd(p, r, TVector.Create(4.9999994040e-1f));
        var u = r * r * p;
        var s = one + r;
        var e = (one - s) + r;
        return TVector.ScaleByPowerOfTwo(s + (u + e), n);
    }
}
