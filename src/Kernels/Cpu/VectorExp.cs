using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
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
    /// cheaper exp than <see cref="Exp{TVector}"/>, for GELU, whose forward and backward are bound by this arithmetic. Only
    /// where 1 + eʷ does not round to 1 does eʷ's accuracy show, so eʷ needs no denormals: w is clamped below at −87, and
    /// n = round(w·log₂e) is taken from w clamped above at 88, so n ∈ [−126, 127] and 2ⁿ is built in one step from the bits
    /// of s = w·log₂e + (1.5·2²³ + 127) (the rounding of t to an integer leaves n + 127 in s's low mantissa bits; shifted left
    /// by 23 they are the float 2ⁿ) — no rounding instruction, no conversion. The remainder is not clamped above: past
    /// w = 88 it grows, and the polynomial with it, until eʷ overflows to +∞ where the exact one does (w ≈ 88.72) and the
    /// quotient becomes ±0. With a fused multiply-add the remainder is r = fma(w, log₂e, −n) and 2ʳ its own degree-6
    /// polynomial (one FMA less than Cody–Waite), at the cost of log₂e rounded to fp32, a relative error of |w|·1.4·10⁻⁸;
    /// with AVX2 + FMA, <see cref="DivideByOnePlusExp256"/>. Without a fused multiply-add, Cody–Waite and
    /// <see cref="Exp{TVector}"/>'s polynomial (there r is clamped at w = 89: its compensated last step must not see ∞).
    /// The contract, the same on every path: relative error ≤ 2⁻²² + |w|·1.4·10⁻⁸ for w ≤ 88 where the quotient is a normal
    /// float (eʷ, 1 + eʷ and the quotient rounded once each); a exactly where 1 + eʷ rounds to 1; for 88 &lt; w &lt; 88.72
    /// (eʷ from the polynomial past its fitted interval) within 0.08 %; ±0 where eʷ overflows fp32. NaN in a or w gives NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVector DivideByOnePlusExp<TVector>(TVector a, TVector w) where TVector : unmanaged, IFloatVector<TVector>
    {
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            // GELU's bulk runs two vectors at a time (Interleaved), its range tails one: both through the same two chains.
            if (typeof(TVector) == typeof(Interleaved<Vector256Lanes>))
            {
                var pairA = Unsafe.As<TVector, Interleaved<Vector256Lanes>>(ref a);
                var pairW = Unsafe.As<TVector, Interleaved<Vector256Lanes>>(ref w);
                var (first, second) = DivideByOnePlusExp256(pairA.Low.Value, pairW.Low.Value, pairA.High.Value, pairW.High.Value);
                var pair = new Interleaved<Vector256Lanes>(new Vector256Lanes(first), new Vector256Lanes(second));
                return Unsafe.As<Interleaved<Vector256Lanes>, TVector>(ref pair);
            }
            if (typeof(TVector) == typeof(Vector256Lanes))
            {
                var single = new Vector256Lanes(DivideByOnePlusExp256(Unsafe.As<TVector, Vector256Lanes>(ref a).Value,
                    Unsafe.As<TVector, Vector256Lanes>(ref w).Value, Vector256<float>.Zero, Vector256<float>.Zero).Low);
                return Unsafe.As<Vector256Lanes, TVector>(ref single);
            }
        }
        // maxps/minps return their second operand, w, when it is NaN (ARM64's fmax/fmin return NaN): NaN stays NaN.
        var low = TVector.MaxNative(TVector.Create(-87f), w);
        var shifter = TVector.Create(ExponentShifter);
        var s = TVector.MultiplyAdd(TVector.MinNative(TVector.Create(88f), low), TVector.Create(Log2E), shifter);
        TVector e;
        if (TVector.MultiplyAddIsFused)
        {
            var r = TVector.MultiplyAdd(low, TVector.Create(Log2E), shifter - s);   // w·log₂e − n, rounded once
            var q = TVector.MultiplyAdd(TVector.Create(1.53211528e-4f), r, TVector.Create(1.33901619e-3f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(9.61852668e-3f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(5.55036240e-2f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(2.40226478e-1f));
            q = TVector.MultiplyAdd(q, r, TVector.Create(6.93147181e-1f));
            e = TVector.MultiplyAdd(q, r, TVector.Create(1f)) * TVector.ShiftBitsLeft(s, 23);
        }
        else
        {
            e = ExpOfRemainder(s - shifter, TVector.MinNative(TVector.Create(89f), low)) * TVector.ShiftBitsLeft(s, 23);
        }
        return a / (TVector.Create(1f) + e);
    }

    /// <summary>
    /// <see cref="DivideByOnePlusExp{TVector}"/> with AVX2 + FMA, by TargetLogProbs' 8-entry-table method: s = fma(w, log₂e,
    /// 1.5·2²⁰) rounds t = w·log₂e (w ≤ 88) to k = n + j/8, with j in s's low 3 bits (the vpermps index) and k = s − 1.5·2²⁰
    /// exactly; r = fma(w, log₂e, −k) ∈ [−1/16, 1/16] (w ≤ 88); 2ʳ by a degree-4 polynomial; 2^k = the table entry (the bits of
    /// 2^(j/8) less j·2²⁰) plus, as integers, s's bits shifted left by 20 (n·2²³ + j·2²⁰): a normal float for n ∈ [−126, 127];
    /// and 1 + eʷ = fma(2^k, 2ʳ, 1), rounded once. 4 FMAs for 2ʳ where the generic form has 6, no multiply by 2ⁿ, no add of 1:
    /// ≈ 15 % less time for GELU's forward at 8 lanes (single thread, L1). Error where the quotient is normal and w ≤ 88: table
    /// entry 3.2·10⁻⁸, 2ʳ 6·10⁻⁸, log₂e in fp32 |w|·1.4·10⁻⁸, then fma and quotient 2⁻²⁴ each: checked on every float w in
    /// [−87, 88] (a = 1) against fp64, at worst 0.92 of the contract's bound. For 88 &lt; w ≤ 88.72, r ≤ 1 and the polynomial
    /// is within 0.075 % of 2ʳ. Two vectors at a time (a single vector is the low half of a pair with zeros: range tails only).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<float> Low, Vector256<float> High) DivideByOnePlusExp256(Vector256<float> a0, Vector256<float> w0,
        Vector256<float> a1, Vector256<float> w1)
    {
        // Two independent chains, statement by statement (see Interleaved): each one's latency is hidden by the other's work.
        var low0 = Vector256.MaxNative(Vector256.Create(-87f), w0);
        var low1 = Vector256.MaxNative(Vector256.Create(-87f), w1);
        var s0 = Fma.MultiplyAdd(Vector256.MinNative(Vector256.Create(88f), low0), Vector256.Create(Log2E), Vector256.Create(EighthsShifter));
        var s1 = Fma.MultiplyAdd(Vector256.MinNative(Vector256.Create(88f), low1), Vector256.Create(Log2E), Vector256.Create(EighthsShifter));
        var r0 = Fma.MultiplySubtract(low0, Vector256.Create(Log2E), s0 - Vector256.Create(EighthsShifter));
        var r1 = Fma.MultiplySubtract(low1, Vector256.Create(Log2E), s1 - Vector256.Create(EighthsShifter));
        var p0 = Fma.MultiplyAdd(Vector256.Create(Exp2Eighths4), r0, Vector256.Create(Exp2Eighths3));
        var p1 = Fma.MultiplyAdd(Vector256.Create(Exp2Eighths4), r1, Vector256.Create(Exp2Eighths3));
        p0 = Fma.MultiplyAdd(p0, r0, Vector256.Create(Exp2Eighths2));
        p1 = Fma.MultiplyAdd(p1, r1, Vector256.Create(Exp2Eighths2));
        p0 = Fma.MultiplyAdd(p0, r0, Vector256.Create(Exp2Eighths1));
        p1 = Fma.MultiplyAdd(p1, r1, Vector256.Create(Exp2Eighths1));
        p0 = Fma.MultiplyAdd(p0, r0, Vector256<float>.One);
        p1 = Fma.MultiplyAdd(p1, r1, Vector256<float>.One);
        var twoToK0 = (Avx2.PermuteVar8x32(TwoToTheEighths, s0.AsInt32()).AsInt32() + (s0.AsInt32() << 20)).AsSingle();
        var twoToK1 = (Avx2.PermuteVar8x32(TwoToTheEighths, s1.AsInt32()).AsInt32() + (s1.AsInt32() << 20)).AsSingle();
        return (a0 / Fma.MultiplyAdd(twoToK0, p0, Vector256<float>.One), a1 / Fma.MultiplyAdd(twoToK1, p1, Vector256<float>.One));
    }

    /// <summary>1.5·2²⁰: adding it to t (|t| &lt; 2¹⁸) rounds t to a multiple of 1/8, k = n + j/8, and leaves 8k in s's low mantissa bits.</summary>
    internal const float EighthsShifter = 1572864f;

    /// <summary>2^r ≈ 1 + r·(c1 + r·(c2 + r·(c3 + r·c4))) on |r| ≤ 1/16: fitted here for minimax relative error (8·10⁻¹¹; ≤ 6·10⁻⁸ evaluated in fp32).</summary>
    private const float Exp2Eighths1 = 0.6931472f, Exp2Eighths2 = 0.2402265f, Exp2Eighths3 = 0.055510595f, Exp2Eighths4 = 0.009617662f;

    /// <summary>For j = 0 … 7: the bits of 2^(j/8) rounded to the nearest float, less j·2²⁰ (what s's shifted bits add), in each lane.</summary>
    private static readonly Vector256<float> TwoToTheEighths = Vector256.Create(Enumerable.Range(0, 8)
        .Select(j => BitConverter.SingleToInt32Bits((float)Math.Pow(2, j / 8.0)) - (j << 20)).ToArray()).AsSingle();

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
