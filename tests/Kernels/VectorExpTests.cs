using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;
using static DistAlign.Tests.Kernels.VectorWidths;

namespace DistAlign.Tests.Kernels;

/// <summary>
/// The exp contracts, checked at every vector width this machine accelerates (an AVX-512 machine checks its AVX-512,
/// AVX2 and Vector128 paths; CI runs the suite again with AVX-512 and with AVX2 hidden, so the dispatch is checked too).
/// The bounds and edge values are the same on every path.
/// </summary>
public class VectorExpTests
{
    private static float[] Exp(VectorWidth width, float[] x) => Apply(width, x, new VectorExpFunction());

    private static float[] ExpOfNonPositive(VectorWidth width, float[] x) => Apply(width, x, new ExpOfNonPositiveFunction());

    private readonly struct VectorExpFunction : ILaneFunction
    {
        public TVector Invoke<TVector>(TVector x) where TVector : unmanaged, IFloatVector<TVector> => VectorExp.Exp(x);
    }

    private readonly struct ExpOfNonPositiveFunction : ILaneFunction
    {
        public TVector Invoke<TVector>(TVector x) where TVector : unmanaged, IFloatVector<TVector> => TargetLogProbs.ExpOfNonPositive(x);
    }

    private readonly struct DivideByOnePlusExpFunction(float numerator) : ILaneFunction
    {
        public TVector Invoke<TVector>(TVector x) where TVector : unmanaged, IFloatVector<TVector> =>
            VectorExp.DivideByOnePlusExp(TVector.Create(numerator), x);
    }

    /// <summary>
    /// a / (1 + eʷ), GELU's logistic: eʷ within 1 ulp (relative 2⁻²³) plus, where the remainder is formed by one FMA with
    /// log₂e in fp32, |w|·1.4·10⁻⁸; then 1 + eʷ and the quotient rounded once each (2⁻²⁴ each): a relative error ≤
    /// 2⁻²² + |w|·1.4·10⁻⁸ for w ≤ 88 where the quotient is a normal float; a exactly where 1 + eʷ rounds to 1; within
    /// 0.08 % for 88 &lt; w &lt; 88.72, where eʷ comes from the polynomial past its fitted interval (the quotient is below
    /// |a|·6.1·10⁻³⁹ there: normal only for huge a); ±0 where eʷ overflows fp32. Same bounds and edge values on every path.
    /// Points: 200,000 evenly spaced in [−87, 88] for three a, and every 263rd float of [−87, 88] by bit pattern for a = 1.
    /// </summary>
    [TestCaseSource(typeof(VectorWidths), nameof(Accelerated))]
    public void DivideByOnePlusExpIsWithinItsBoundAndSaturates(VectorWidth width)
    {
        const int BitStride = 263;
        var evenly = Enumerable.Range(0, 200_001).Select(i => -87f + 175f * i / 200_000f).ToArray();
        var byBits = Enumerable.Range(0, BitConverter.SingleToInt32Bits(87f) / BitStride + 1).Select(k => -BitConverter.Int32BitsToSingle(k * BitStride))
            .Concat(Enumerable.Range(0, BitConverter.SingleToInt32Bits(88f) / BitStride + 1).Select(k => BitConverter.Int32BitsToSingle(k * BitStride)))
            .ToArray();
        foreach (var (a, w) in new[] { (1f, evenly.Concat(byBits).ToArray()), (-3.7f, evenly), (2.5e-3f, evenly) })
        {
            var q = Apply(width, w, new DivideByOnePlusExpFunction(a));
            double worst = 0, worstAt = 0;
            for (int i = 0; i < w.Length; i++)
            {
                double exact = a / (1 + Math.Exp(w[i]));
                if (Math.Abs(exact) < Math.Pow(2, -126)) continue;   // below the normal range: only the absolute error counts
                double error = Math.Abs(q[i] - exact) / Math.Abs(exact) / (Math.Pow(2, -22) + Math.Abs(w[i]) * 1.4e-8);
                if (error > worst) (worst, worstAt) = (error, w[i]);
            }
            Assert.That(worst, Is.LessThanOrEqualTo(1.0), $"{width}, a = {a}: worst error {worst:F2} of the bound at w = {worstAt}");
        }
        // Past w = 88, up to where eʷ overflows: only a huge a makes the quotient normal there.
        var top = Enumerable.Range(1, 1000).Select(i => 88f + 0.72f * i / 1000f).ToArray();
        foreach (float a in new[] { -float.MaxValue, 1e30f })
        {
            var q = Apply(width, top, new DivideByOnePlusExpFunction(a));
            for (int i = 0; i < top.Length; i++)
            {
                double exact = a / (1 + Math.Exp(top[i]));
                if (Math.Abs(exact) < Math.Pow(2, -126)) continue;
                Assert.That(Math.Abs(q[i] - exact) / Math.Abs(exact), Is.LessThanOrEqualTo(8e-4), $"{width}, a = {a}, w = {top[i]}: {q[i]} against {exact}");
            }
        }
        float[] edges = [float.NegativeInfinity, -1e4f, -88f, -40f, 0f, 88.8f, 100f, 1e4f, float.PositiveInfinity, float.NaN];
        var one = Apply(width, edges, new DivideByOnePlusExpFunction(1f));
        var huge = Apply(width, edges, new DivideByOnePlusExpFunction(-float.MaxValue));
        for (int i = 0; i < 4; i++)
        {
            Assert.That(one[i], Is.EqualTo(1f), $"1 + e^{edges[i]} rounds to 1");
            Assert.That(huge[i], Is.EqualTo(-float.MaxValue), $"−max / (1 + e^{edges[i]})");
        }
        Assert.That(one[4], Is.EqualTo(0.5f), "1 / (1 + e^0)");
        for (int i = 5; i < 9; i++)
        {
            Assert.That(one[i], Is.EqualTo(0f), $"1 / (1 + e^{edges[i]})");
            Assert.That(huge[i], Is.EqualTo(0f), $"−max / (1 + e^{edges[i]}) is −0: e^{edges[i]} overflows fp32");
        }
        Assert.That(one[9], Is.NaN, "NaN w");
        var nan = Apply(width, [0f, 5f], new DivideByOnePlusExpFunction(float.NaN));
        Assert.That(nan, Is.All.NaN, "NaN a");
    }

    [TestCaseSource(typeof(VectorWidths), nameof(Accelerated))]
    public void RelativeErrorIsAtMostOneUlpOverTheNormalRange(VectorWidth width)
    {
        var x = Enumerable.Range(0, 200_000).Select(i => -87.3f + 176f * i / 200_000f).ToArray();
        var e = Exp(width, x);
        double worst = 0, worstAt = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double exact = Math.Exp(x[i]);
            double ulp = (double)MathF.BitIncrement((float)exact) - (float)exact;   // fp32 ulp at the exact value
            double error = Math.Abs(e[i] - exact) / ulp;
            if (error > worst) (worst, worstAt) = (error, x[i]);
        }
        Assert.That(worst, Is.LessThanOrEqualTo(1.0), $"{width}: worst error {worst:F2} ulp at x = {worstAt}");
    }

    [TestCaseSource(typeof(VectorWidths), nameof(Accelerated))]
    public void EdgeValues(VectorWidth width)
    {
        float[] x = [0f, float.NegativeInfinity, -1e4f, -87f, 89f, float.PositiveInfinity, float.NaN, -0f, 1f, 88.7f, -88f, -100f, -104f, -103f];
        var e = Exp(width, x);
        Assert.That(e[0], Is.EqualTo(1f), "exp(0) is exactly 1");
        Assert.That(e[1], Is.EqualTo(0f));
        Assert.That(e[2], Is.EqualTo(0f));
        Assert.That(e[3], Is.EqualTo(MathF.Exp(-87f)).Within(1).Ulps, "exp(−87) is a normal float");
        Assert.That(e[4], Is.EqualTo(float.PositiveInfinity));
        Assert.That(e[5], Is.EqualTo(float.PositiveInfinity));
        Assert.That(e[6], Is.NaN);
        Assert.That(e[7], Is.EqualTo(1f));
        Assert.That(e[8], Is.EqualTo(MathF.E).Within(1).Ulps);
        Assert.That(e[9], Is.EqualTo(MathF.Exp(88.7f)).Within(1).Ulps, "finite up to the top of the fp32 range");
        // Below the smallest normal (exp(−87.34)) the result is rounded into the denormals: within one denormal step (1.4e-45).
        for (int i = 10; i < x.Length; i++)
            Assert.That((double)e[i], Is.EqualTo(Math.Exp(x[i])).Within(1.5e-45), $"exp({x[i]}) as a denormal");
        Assert.That(e[10], Is.GreaterThan(0f), "exp(−88) = 6.1e-39 is a denormal, not 0");
        Assert.That(e[12], Is.EqualTo(0f), "exp(−104) = 6.8e-46 rounds to 0 (below half the smallest denormal)");
        Assert.That(e[13], Is.EqualTo(float.Epsilon), "exp(−103) = 1.4e-45 is the smallest denormal");
    }

    [TestCaseSource(typeof(VectorWidths), nameof(Accelerated))]
    public void NonPositiveSumTermIsWithinItsBoundAndKeepsTheEdgeValues(VectorWidth width)
    {
        // The contract of TargetLogProbs.ExpOfNonPositive (a term of a log-sum-exp): relative error ≤ 1.85e-7 + |x|·1.5e-8
        // where exp(x) is a normal float; below, absolute error ≤ 2^-126. The same on every path (AVX-512: base 2,
        // 16-entry table, degree-3 polynomial; AVX2 + FMA: 8-entry table, degree-3 polynomial, exp(x)·2^64; elsewhere a
        // table-free form computed as exp(x)·2^64). Points: 100,000 evenly spaced, plus every 263rd float of [−87.3, 0]
        // by bit pattern (4.3 million, every binade and many mantissas: the polynomial's and the table's worst cases
        // lie wherever the rounding of t = x·log₂e puts them).
        const int BitStride = 263;
        int lowest = BitConverter.SingleToInt32Bits(-87.3f) & int.MaxValue;
        var x = Enumerable.Range(0, 100_000).Select(i => -87.3f * i / 100_000f)
            .Concat(Enumerable.Range(0, lowest / BitStride + 1).Select(k => -BitConverter.Int32BitsToSingle(k * BitStride)))
            .Concat(Enumerable.Range(1, 20_000).Select(i => 4f * i / 20_000f))   // up to TargetLogProbs' headroom above the running max
            .ToArray();
        var e = ExpOfNonPositive(width, x);
        double worst = 0, worstAt = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double exact = Math.Exp(x[i]);
            double ratio = Math.Abs(e[i] - exact) / exact / (1.85e-7 + Math.Abs(x[i]) * 1.5e-8);
            if (ratio > worst) (worst, worstAt) = (ratio, x[i]);
        }
        Assert.That(worst, Is.LessThanOrEqualTo(1.0), $"{width}: worst error {worst:F2} of the bound, at x = {worstAt}");
        float[] edgeInputs = [0f, -0f, float.NegativeInfinity, -87f, -1e4f, float.NaN, -86.5f, -88f, -104f];
        var edges = ExpOfNonPositive(width, edgeInputs);
        Assert.That(edges[0], Is.EqualTo(1f), "exp(0) is exactly 1");
        Assert.That(edges[1], Is.EqualTo(1f));
        Assert.That(edges[2], Is.EqualTo(0f));
        Assert.That(edges[3], Is.EqualTo(MathF.Exp(-87f)).Within(1e-3).Percent, "exp(−87) is a normal float");
        Assert.That(edges[4], Is.EqualTo(0f));
        Assert.That(edges[5], Is.NaN, "NaN propagates");
        Assert.That(edges[6], Is.EqualTo(MathF.Exp(-86.5f)).Within(1e-3).Percent);
        Assert.That((double)edges[7], Is.EqualTo(Math.Exp(-88)).Within(Math.Pow(2, -126)), "exp(−88) within 2^-126");
        Assert.That((double)edges[8], Is.EqualTo(Math.Exp(-104)).Within(Math.Pow(2, -126)), "exp(−104) within 2^-126");
    }
}
