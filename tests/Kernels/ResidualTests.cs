using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

public class ResidualTests
{
    [Test]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        var a = D(RandomFloats(13, 1));
        var b = D(RandomFloats(13, 2));
        var g = D(RandomFloats(13, 3));
        var (da, db) = ReferenceResidual.Backward(g);
        AssertClose(da, FiniteDifferenceGradient(() => Dot(g, ReferenceResidual.Forward(a, b)), a), 1e-6, 1e-6, "da");
        AssertClose(db, FiniteDifferenceGradient(() => Dot(g, ReferenceResidual.Forward(a, b)), b), 1e-6, 1e-6, "db");
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(77)]
    [TestCase(100_003)]
    public void ForwardAndAccumulatingBackwardMatchReference(int n)
    {
        var a = RandomFloats(n, 1);
        var b = RandomFloats(n, 2);
        var o = new float[n];
        Residual.Forward(a, b, o);
        AssertClose(o, ReferenceResidual.Forward(D(a), D(b)), 1e-7, 1e-6, "out");

        var dout = RandomFloats(n, 3);
        var da = RandomFloats(n, 4);
        var db = RandomFloats(n, 5);
        var (rda, rdb) = ReferenceResidual.Backward(D(dout));
        var expectedA = Plus(da, rda);
        var expectedB = Plus(db, rdb);
        Residual.Backward(dout, da, db);
        AssertClose(da, expectedA, 1e-7, 1e-6, "da (accumulated)");
        AssertClose(db, expectedB, 1e-7, 1e-6, "db (accumulated)");
    }

    [Test]
    public void OutputMayAliasAnInput()
    {
        var a = RandomFloats(1000, 1);
        var b = RandomFloats(1000, 2);
        var expected = ReferenceResidual.Forward(D(a), D(b));
        Residual.Forward(a, b, a);
        AssertClose(a, expected, 1e-7, 1e-6, "a += b in place");
    }

    [Test]
    public void ResultsDoNotDependOnThreadCount()
    {
        const int n = 100_003;
        var a = RandomFloats(n, 1);
        var b = RandomFloats(n, 2);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
            WithThreads(threads, () =>
            {
                var o = new float[n];
                Residual.Forward(a, b, o);
                if (first == null) first = o; else AssertBitIdentical(first, o, $"{threads} threads");
            });
    }

    [Test]
    public void MismatchedLengthsAreRejected() =>
        Assert.That(() => Residual.Forward(new float[3], new float[4], new float[3]), Throws.ArgumentException);
}
