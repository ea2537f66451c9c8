using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

public class GradientNormTests
{
    [TestCase(0)]
    [TestCase(1)]
    [TestCase(77)]
    [TestCase(4096)]
    [TestCase(4097)]
    [TestCase(1_000_003)]
    public void NormMatchesReference(int n)
    {
        var g = RandomFloats(n, 1);
        Assert.That(GradientNorm.GlobalNorm(g), Is.EqualTo(ReferenceGradientNorm.Norm(D(g))).Within(1e-5).Percent);
    }

    [Test]
    public void SeveralTensorsActAsOneVector()
    {
        var a = RandomFloats(5000, 1);
        var b = RandomFloats(13, 2);
        var c = RandomFloats(0, 3);
        double norm = GradientNorm.GlobalNorm(a, b, c);
        Assert.That(norm, Is.EqualTo(ReferenceGradientNorm.Norm(D(a), D(b), D(c))).Within(1e-5).Percent);
    }

    [Test]
    public void ClippingScalesToTheThreshold()
    {
        var a = RandomFloats(3000, 1, 10.0);
        var b = RandomFloats(77, 2, 10.0);
        var (ra, rb) = (D(a), D(b));
        double norm = ReferenceGradientNorm.Norm(ra, rb);
        var clip = GradientNorm.ClipByGlobalNorm(1.0f, a, b);
        double scale = ReferenceGradientNorm.ClipScale(norm, 1.0);
        Assert.That(clip.Norm, Is.EqualTo(norm).Within(1e-5).Percent);
        Assert.That(clip.Scale, Is.EqualTo(scale).Within(1e-5).Percent);
        Assert.That(clip.IsFinite, Is.True);
        AssertClose(a, ra.Select(x => x * scale).ToArray(), 1e-7, 1e-6, "a");
        AssertClose(b, rb.Select(x => x * scale).ToArray(), 1e-7, 1e-6, "b");
        Assert.That(GradientNorm.GlobalNorm(a, b), Is.EqualTo(1.0).Within(1e-5));
    }

    [Test]
    public void SmallGradientsAreLeftAlone()
    {
        var g = RandomFloats(100, 1, 0.01);
        var before = (float[])g.Clone();
        var clip = GradientNorm.ClipByGlobalNorm(g, 1.0f);
        Assert.That(clip.Scale, Is.EqualTo(1f));
        AssertBitIdentical(before, g, "unclipped");
    }

    [TestCase(float.NaN)]
    [TestCase(float.PositiveInfinity)]
    public void NonFiniteNormIsReportedNotThrown(float bad)
    {
        var g = RandomFloats(10_000, 1);
        g[9_999] = bad;
        var before = (float[])g.Clone();
        var clip = GradientNorm.ClipByGlobalNorm(g, 1.0f);
        Assert.That(clip.IsFinite, Is.False);
        Assert.That(clip.Scale, Is.EqualTo(1f));
        AssertBitIdentical(before, g, "left untouched");
    }

    [Test]
    public void NormDoesNotDependOnThreadCount()
    {
        var g = RandomFloats(1_000_003, 1);
        var norms = new List<double>();
        foreach (int threads in new[] { 1, 2, 3, 5 })
            WithThreads(threads, () => norms.Add(GradientNorm.GlobalNorm(g)));
        Assert.That(norms.Select(BitConverter.DoubleToInt64Bits).Distinct().Count(), Is.EqualTo(1), string.Join(", ", norms));
    }
}
