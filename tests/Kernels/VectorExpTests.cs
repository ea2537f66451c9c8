using System.Runtime.Intrinsics;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Tests.Kernels;

public class VectorExpTests
{
    private static float[] Exp(float[] x) => Apply(x, VectorExp.Exp);

    private static float[] Apply(float[] x, Func<Vector512<float>, Vector512<float>> exp)
    {
        var r = new float[x.Length];
        for (int i = 0; i < x.Length; i += 16)
        {
            var lanes = new float[16];
            Array.Copy(x, i, lanes, 0, Math.Min(16, x.Length - i));
            var e = exp(Vector512.Create(lanes));
            for (int j = 0; j < 16 && i + j < x.Length; j++) r[i + j] = e[j];
        }
        return r;
    }

    [Test]
    public void RelativeErrorIsAtMostTwoUlpOverTheNormalRange()
    {
        var x = Enumerable.Range(0, 200_000).Select(i => -86.5f + 175.2f * i / 200_000f).ToArray();
        var e = Exp(x);
        double worst = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double exact = Math.Exp(x[i]);
            double ulp = (double)MathF.BitIncrement((float)exact) - (float)exact;   // fp32 ulp at the exact value
            worst = Math.Max(worst, Math.Abs(e[i] - exact) / ulp);
        }
        // ≤ 1 ulp with AVX-512 (degree-6 polynomial, vscalefps); the portable fallback (Cephes' expf) ≤ 2 ulp.
        double bound = System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? 1.0 : 2.0;
        Assert.That(worst, Is.LessThanOrEqualTo(bound), $"worst error {worst:F2} ulp");
    }

    [Test]
    public void EdgeValues()
    {
        float[] x = [0f, float.NegativeInfinity, -1e4f, -87f, 89f, float.PositiveInfinity, float.NaN, -0f, 1f, 88.7f];
        var e = Exp(x);
        Assert.That(e[0], Is.EqualTo(1f), "exp(0) is exactly 1");
        Assert.That(e[1], Is.EqualTo(0f));
        Assert.That(e[2], Is.EqualTo(0f));
        if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
        {
            Assert.That(e[3], Is.EqualTo(MathF.Exp(-87f)).Within(2).Ulps, "exp(−87) is a normal float");
            // Below the smallest normal, vscalefps rounds into the denormals: within one denormal step (1.4e-45).
            Assert.That((double)Exp([-100f])[0], Is.EqualTo(Math.Exp(-100)).Within(1.5e-45), "exp(−100) as a denormal");
        }
        else
            Assert.That(e[3], Is.EqualTo(0f), "the fallback flushes below −86.6 to 0");
        Assert.That(e[4], Is.EqualTo(float.PositiveInfinity));
        Assert.That(e[5], Is.EqualTo(float.PositiveInfinity));
        Assert.That(e[6], Is.NaN);
        Assert.That(e[7], Is.EqualTo(1f));
        Assert.That(e[8], Is.EqualTo(MathF.E).Within(2).Ulps);
        Assert.That(e[9], Is.EqualTo(MathF.Exp(88.7f)).Within(2).Ulps, "finite up to the top of the fp32 range");
    }

    [Test]
    public void NonPositiveSumTermIsWithinItsBoundAndKeepsTheEdgeValues()
    {
        // The contract of TargetLogProbs.ExpOfNonPositive (a term of a log-sum-exp): relative error ≤ 1.85e-7 + |x|·1.5e-8
        // with AVX-512 (base 2, 16-entry table, degree-3 polynomial); the portable fallback is VectorExp.Exp (≤ 2 ulp, inside that).
        var x = Enumerable.Range(0, 100_000).Select(i => -86.5f * i / 100_000f).ToArray();
        var e = Apply(x, TargetLogProbs.ExpOfNonPositive);
        double worst = 0, worstAt = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double exact = Math.Exp(x[i]);
            double ratio = Math.Abs(e[i] - exact) / exact / (1.85e-7 + Math.Abs(x[i]) * 1.5e-8);
            if (ratio > worst) (worst, worstAt) = (ratio, x[i]);
        }
        Assert.That(worst, Is.LessThanOrEqualTo(1.0), $"worst error {worst:F2} of the bound, at x = {worstAt}");
        var edges = Apply([0f, -0f, float.NegativeInfinity, -87f, -1e4f, float.NaN, -86.5f], TargetLogProbs.ExpOfNonPositive);
        Assert.That(edges[0], Is.EqualTo(1f), "exp(0) is exactly 1");
        Assert.That(edges[1], Is.EqualTo(1f));
        Assert.That(edges[2], Is.EqualTo(0f));
        Assert.That(edges[3], Is.EqualTo(MathF.Exp(-87f)).Within(1e-3).Percent, "exp(−87) is a normal float");
        Assert.That(edges[4], Is.EqualTo(0f));
        Assert.That(edges[5], Is.NaN, "NaN propagates");
        Assert.That(edges[6], Is.EqualTo(MathF.Exp(-86.5f)).Within(1e-3).Percent);
    }
}
