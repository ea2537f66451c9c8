using DistAlign.Kernels.Cpu;
using DistAlign.Tests.TestSupport;

namespace DistAlign.Tests.Kernels;

/// <summary>Helpers shared by the kernel tests: thread-count scoping, scalar losses, accumulation checks.</summary>
internal static class KernelTest
{
    /// <summary>Runs <paramref name="body"/> with CpuParallel.Threads set to <paramref name="threads"/>, then restores it.</summary>
    public static void WithThreads(int threads, Action body)
    {
        int saved = CpuParallel.Threads;
        try
        {
            CpuParallel.Threads = threads;
            body();
        }
        finally
        {
            CpuParallel.Threads = saved;
        }
    }

    public static double[] D(float[] a) => Numerics.ToDouble(a);

    /// <summary>L = Σ g ⊙ out, the scalar whose gradient the backward passes compute for dout = g.</summary>
    public static double Dot(double[] g, double[] output)
    {
        double s = 0;
        for (int i = 0; i < g.Length; i++) s += g[i] * output[i];
        return s;
    }

    /// <summary>The expected value of an accumulated gradient: what was there before plus the reference's contribution.</summary>
    public static double[] Plus(float[] before, double[] contribution)
    {
        var r = new double[before.Length];
        for (int i = 0; i < r.Length; i++) r[i] = before[i] + contribution[i];
        return r;
    }

    public static void AssertBitIdentical(float[] expected, float[] actual, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), what);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what}: element {i} differs: {expected[i]:R} vs {actual[i]:R}");
    }

    public static void AssertAllFinite(ReadOnlySpan<float> a, string what)
    {
        for (int i = 0; i < a.Length; i++)
            if (!float.IsFinite(a[i])) Assert.Fail($"{what}: element {i} is {a[i]}");
    }

    /// <summary>Random ints in [0, max).</summary>
    public static int[] RandomInts(int count, int max, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => rng.Next(max)).ToArray();
    }
}
