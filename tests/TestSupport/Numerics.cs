namespace DistAlign.Tests.TestSupport;

/// <summary>Shared numeric helpers for tests: seeded data, fp64 comparisons, finite differences.</summary>
public static class Numerics
{
    /// <summary>Deterministic N(0, scale²) floats from a seeded System.Random (tests only).</summary>
    public static float[] RandomFloats(int count, int seed, double scale = 1.0)
    {
        var rng = new Random(seed);
        var a = new float[count];
        for (int i = 0; i < count; i++)
        {
            // Box–Muller; tests only, speed irrelevant.
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = (float)(scale * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return a;
    }

    public static double[] ToDouble(ReadOnlySpan<float> a)
    {
        var d = new double[a.Length];
        for (int i = 0; i < a.Length; i++) d[i] = a[i];
        return d;
    }

    /// <summary>
    /// Asserts |actual − expected| ≤ atol + rtol·|expected| element-wise and reports the worst element
    /// (index, both values, error) when it fails.
    /// </summary>
    public static void AssertClose(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, double atol, double rtol, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: length");
        int worst = -1;
        double worstExcess = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double err = Math.Abs(actual[i] - expected[i]);
            double excess = err - (atol + rtol * Math.Abs(expected[i]));
            if (!double.IsFinite(actual[i]) || excess > worstExcess)
            {
                worst = i;
                worstExcess = double.IsFinite(actual[i]) ? excess : double.PositiveInfinity;
            }
        }
        if (worst >= 0)
            Assert.Fail($"{what}: element {worst} is {actual[worst]:R}, reference {expected[worst]:R} " +
                        $"(|err| {Math.Abs(actual[worst] - expected[worst]):E3}, allowed {atol:E1} + {rtol:E1}·|ref|)");
    }

    public static void AssertClose(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected, double atol, double rtol, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: length");
        for (int i = 0; i < actual.Length; i++)
        {
            double err = Math.Abs(actual[i] - expected[i]);
            if (!(err <= atol + rtol * Math.Abs(expected[i])))
                Assert.Fail($"{what}: element {i} is {actual[i]:R}, expected {expected[i]:R} (|err| {err:E3})");
        }
    }

    /// <summary>
    /// Central-difference gradient of a scalar fp64 function f with respect to every element of x:
    /// g_i ≈ (f(x + h e_i) − f(x − h e_i)) / 2h. x is restored afterwards.
    /// </summary>
    public static double[] FiniteDifferenceGradient(Func<double> f, double[] x, double h = 1e-6)
    {
        var g = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double saved = x[i];
            x[i] = saved + h;
            double fp = f();
            x[i] = saved - h;
            double fm = f();
            x[i] = saved;
            g[i] = (fp - fm) / (2 * h);
        }
        return g;
    }

    /// <summary>
    /// Central difference of <paramref name="loss"/> with respect to element <paramref name="index"/> of a fp32
    /// parameter span, with a step (1e-2) that dwarfs fp32 rounding; the element is restored.
    /// </summary>
    public static double CentralDifference(Span<float> parameters, int index, Func<double> loss, float step = 1e-2f)
    {
        float saved = parameters[index];
        parameters[index] = saved + step;
        double up = loss();
        parameters[index] = saved - step;
        double down = loss();
        parameters[index] = saved;
        return (up - down) / (2.0 * step);
    }

    /// <summary>
    /// Checks <paramref name="analytic"/> against <see cref="CentralDifference"/> on <paramref name="samples"/>
    /// randomly chosen parameters of an fp32 model (tolerance 2e-3 + 2e-2·|fd|).
    /// </summary>
    public static void AssertSampledGradient(Span<float> parameters, ReadOnlySpan<float> analytic, Func<double> loss, int samples, int seed)
    {
        var rng = new Random(seed);
        for (int trial = 0; trial < samples; trial++)
        {
            int i = rng.Next(parameters.Length);
            double fd = CentralDifference(parameters, i, loss);
            Assert.That(analytic[i], Is.EqualTo(fd).Within(2e-3 + 2e-2 * Math.Abs(fd)), $"parameter {i}");
        }
    }
}
