using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

public class GeluTests
{
    [Test]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        var x = D(RandomFloats(65, 1, 2.0));
        var g = D(RandomFloats(65, 2));
        var fd = FiniteDifferenceGradient(() => Dot(g, ReferenceGelu.Forward(x)), x);
        AssertClose(ReferenceGelu.Backward(g, x), fd, 1e-7, 1e-6, "dx");
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(13)]
    [TestCase(77)]
    [TestCase(5000)]
    public void ForwardAndAccumulatingBackwardMatchReference(int n)
    {
        var x = RandomFloats(n, 1, 3.0);
        var o = new float[n];
        Gelu.Forward(x, o);
        AssertClose(o, ReferenceGelu.Forward(D(x)), 1e-6, 1e-5, "out");

        var dout = RandomFloats(n, 2);
        var dx = RandomFloats(n, 3);
        var expected = Plus(dx, ReferenceGelu.Backward(D(dout), D(x)));
        Gelu.Backward(dout, x, dx);
        AssertClose(dx, expected, 1e-5, 1e-5, "dx (accumulated)");
    }

    [TestCase(13)]
    [TestCase(77)]
    [TestCase(50_001)]
    public void ForwardMayRunInPlace(int n)
    {
        var x = RandomFloats(n, 1, 3.0);
        var expected = new float[n];
        Gelu.Forward(x, expected);
        Gelu.Forward(x, x);
        AssertBitIdentical(expected, x, "in place");
    }

    [Test]
    public void LargeMagnitudesStayFinite()
    {
        float[] x = [-1e30f, -1e4f, -100f, -20f, 20f, 100f, 1e4f, 1e30f, float.MaxValue, -float.MaxValue];
        var o = new float[x.Length];
        Gelu.Forward(x, o);
        AssertAllFinite(o, "gelu");
        AssertClose(o[..7], ReferenceGelu.Forward(D(x[..7])), 1e-6, 1e-6, "gelu saturates to 0 / x");
        var dx = new float[x.Length];
        Gelu.Backward(Enumerable.Repeat(1f, x.Length).ToArray(), x, dx);
        AssertAllFinite(dx, "gelu'");
    }

    [Test]
    public void ResultsDoNotDependOnThreadCount()
    {
        const int n = 50_001;
        var x = RandomFloats(n, 1, 3.0);
        var dout = RandomFloats(n, 2);
        float[]? firstOut = null, firstDx = null;
        foreach (int threads in new[] { 1, 2, 3 })
            WithThreads(threads, () =>
            {
                var o = new float[n];
                var dx = new float[n];
                Gelu.Forward(x, o);
                Gelu.Backward(dout, x, dx);
                if (firstOut == null) { firstOut = o; firstDx = dx; }
                else { AssertBitIdentical(firstOut, o, "out"); AssertBitIdentical(firstDx!, dx, "dx"); }
            });
    }
}
