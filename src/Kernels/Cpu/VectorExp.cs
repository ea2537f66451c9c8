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
/// tested on each one the machine runs. GELU's logistic goes through <see cref="DivideByOnePlusExp{TVector}"/>, a cheaper
/// form with its own contract: 2ⁿ made from bits in one step and, with FMA, a base-2 remainder, because where 1 + eʷ rounds
/// to 1 or +∞ neither denormals nor the top of the range can show.
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
        return TVector.ScaleByPowerOfTwo(ExpOfRemainder(n, bounded), n);
    }

    /// <summary>
    /// a / (1 + eʷ) for each lane: the logistic function's shape (σ(z) = 1 / (1 + e⁻ᶻ), x·σ(z) = x / (1 + e⁻ᶻ)), with a
    /// cheaper exp than <see cref="Exp{TVector}"/>, for GELU, whose forward is bound by this arithmetic. Only where 1 + eʷ does
    /// not round to 1 or +∞ does eʷ's accuracy show, so eʷ needs no denormals and no top of the range: w is clamped to
    /// [−87, 89], where n = round(w·log₂e) ∈ [−126, 128], and 2ⁿ is built in one step from the bits of s = w·log₂e +
    /// (1.5·2²³ + 127) (the rounding of t to an integer leaves n + 127 in s's low mantissa bits; shifted left by 23 they are
    /// the float 2ⁿ, and +∞ for n = 128) — no rounding instruction, no conversion, one multiply instead of two. With a fused
    /// multiply-add the remainder is r = fma(w, log₂e, −n) ∈ [−½, ½] and 2ʳ its own degree-6 polynomial: one FMA less than
    /// Cody–Waite and a shorter chain (together ≈ 20 % less time for GELU's forward at 8 lanes), at the cost of log₂e
    /// rounded to fp32, a relative error of |w|·1.4·10⁻⁸ (at most 1.2·10⁻⁶, where the result is a·e⁻⁸⁸). Without a fused
    /// multiply-add, Cody–Waite and <see cref="Exp{TVector}"/>'s polynomial. Error: relative ≤ 2⁻²² + |w|·1.4·10⁻⁸ where the
    /// result is a normal float (eʷ, 1 + eʷ and the quotient rounded once each); a exactly where 1 + eʷ rounds to 1; ±0 from
    /// w = 88.37 on (where n becomes 128), against an exact |a|·e⁻ʷ ≤ |a|·4·10⁻³⁹. NaN in a or w gives NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVector DivideByOnePlusExp<TVector>(TVector a, TVector w) where TVector : unmanaged, IFloatVector<TVector>
    {
        var bounded = TVector.MinNative(TVector.Create(89f), TVector.MaxNative(TVector.Create(-87f), w));
        var shifter = TVector.Create(ExponentShifter);
        var s = TVector.MultiplyAdd(bounded, TVector.Create(Log2E), shifter);
        TVector e;
        if (TVector.MultiplyAddIsFused)
        {
            var r = TVector.MultiplyAdd(bounded, TVector.Create(Log2E), shifter - s);   // w·log₂e − n, rounded once
            var q = TVector.MultiplyAdd(TVector.Create(1.53211528e-4f), r, TVector.Create(1.33901619e-3f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(9.61852668e-3f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(5.55036240e-2f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(2.40226478e-1f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(6.93147181e-1f));
            e = TVector.MultiplyAdd(q, r, TVector.Create(1f)) * TVector.ShiftBitsLeft(s, 23);
        }
        else
        {
            e = ExpOfRemainder(s - shifter, bounded) * TVector.ShiftBitsLeft(s, 23);
        }
        return a / (TVector.Create(1f) + e);
    }

    /// <summary>1.5·2²³ + 127: adding it to t (|t| &lt; 2²¹) rounds t to an integer n and leaves n + 127, the biased exponent of 2ⁿ, in the low mantissa bits.</summary>
    private const float ExponentShifter = 12583039f;

    /// <summary>
    /// e^(x − n·ln 2) for an integer n (as a float) with |x − n·ln 2| ≤ ln2/2 (up to a rounding): r by Cody–Waite (n·Ln2High
    /// exact), then the polynomial.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector ExpOfRemainder<TVector>(TVector n, TVector x) where TVector : unmanaged, IFloatVector<TVector>
    {
        var r = TVector.MultiplyAdd(n, TVector.Create(-Ln2Low), TVector.MultiplyAdd(n, TVector.Create(-Ln2High), x));
        var one = TVector.Create(1f);
        if (TVector.MultiplyAddIsFused)
        {
            var q = TVector.MultiplyAdd(TVector.Create(1.3814611593e-3f), r, TVector.Create(8.3687100559e-3f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(4.1668388993e-2f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(1.6666521132e-1f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(4.9999994040e-1f));
            q = TVector.MultiplyAdd(q, r, one);
            return TVector.MultiplyAdd(q, r, one);
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
        var sum = one + r;
        var error = (one - sum) + r;
        return sum + (u + error);
    }
}
