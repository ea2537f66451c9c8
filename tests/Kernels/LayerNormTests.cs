using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

/// <summary>The CPU LayerNorm against the fp64 <see cref="ReferenceLayerNorm"/>, at every accelerated vector width (same tolerances).</summary>
[NonParallelizable] // tests set the kernels' vector width
public class LayerNormTests
{
    [Test]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        const int n = 3, c = 5;
        var x = D(RandomFloats(n * c, 1));
        var w = D(RandomFloats(c, 2));
        var b = D(RandomFloats(c, 3));
        var g = D(RandomFloats(n * c, 4));
        double Loss() => Dot(g, ReferenceLayerNorm.Forward(x, w, b).Out);
        var (dx, dw, db) = ReferenceLayerNorm.Backward(g, x, w);
        AssertClose(dx, FiniteDifferenceGradient(Loss, x), 1e-6, 1e-6, "dx");
        AssertClose(dw, FiniteDifferenceGradient(Loss, w), 1e-6, 1e-6, "dw");
        AssertClose(db, FiniteDifferenceGradient(Loss, b), 1e-6, 1e-6, "db");
    }

    private static IEnumerable<TestCaseData> Shapes() => VectorWidths.Each(
        [0, 3], [1, 1], [4, 3], [5, 13], [4, 65],
        [7, 77],    // a scalar tail of 13, 5 or 1 channels at width 16, 8 or 4
        [3, 300],   // more than one 256-channel chunk per row
        [2, 768],
        [37, 64],   // C a multiple of 32: the software-pipelined forward over many rows
        [9, 96],
        [6, 20]);   // C ≥ 16 but not a multiple of 16: K from 16 channels, then a vector tail at the narrower widths

    [TestCaseSource(nameof(Shapes))]
    public void ForwardAndAccumulatingBackwardMatchReference(int n, int c, VectorWidth width) => VectorWidths.At(width, () =>
    {
        var x = RandomFloats(n * c, 1, 2.0);
        for (int i = 0; i < x.Length; i++) x[i] += 3f;   // a non-zero mean
        var w = RandomFloats(c, 2);
        var b = RandomFloats(c, 3);
        var o = new float[n * c];
        var mean = new float[n];
        var rstd = new float[n];
        LayerNorm.Forward(x, w, b, o, mean, rstd);
        var r = ReferenceLayerNorm.Forward(D(x), D(w), D(b));
        AssertClose(o, r.Out, 1e-5, 1e-4, "out");
        AssertClose(mean, r.Mean, 1e-6, 1e-5, "mean");
        AssertClose(rstd, r.Rstd, 1e-6, 1e-4, "rstd");

        var dout = RandomFloats(n * c, 4);
        var dx = RandomFloats(n * c, 5);
        var dw = RandomFloats(c, 6);
        var db = RandomFloats(c, 7);
        var (rdx, rdw, rdb) = ReferenceLayerNorm.Backward(D(dout), D(x), D(w));
        var (ex, ew, eb) = (Plus(dx, rdx), Plus(dw, rdw), Plus(db, rdb));
        LayerNorm.Backward(dout, x, w, mean, rstd, dx, dw, db);
        AssertClose(dx, ex, 2e-5, 1e-4, "dx (accumulated)");
        AssertClose(dw, ew, 2e-5, 1e-4, "dw (accumulated)");
        AssertClose(db, eb, 2e-5, 1e-4, "db (accumulated)");
    });

    private static IEnumerable<TestCaseData> Offsets() =>
        from width in CpuVectors.Accelerated
        from test in new[]
        {
            new TestCaseData(1000f, 0f, width).SetName($"Large common offset: the shifted sums ({width})"),
            new TestCaseData(0f, 1000f, width).SetName($"First 16 channels far from the rest: the exact fallback pass ({width})"),
        }
        select test;

    [TestCaseSource(nameof(Offsets))]
    public void StatisticsSurviveOffsetsThatWouldCancel(float offset, float firstChannelsOffset, VectorWidth width) => VectorWidths.At(width, () =>
    {
        const int n = 4, c = 4096;
        var x = RandomFloats(n * c, 1);
        for (int i = 0; i < x.Length; i++) x[i] += offset + (i % c < 16 ? firstChannelsOffset : 0f);
        var w = RandomFloats(c, 2);
        var b = RandomFloats(c, 3);
        var o = new float[n * c];
        var mean = new float[n];
        var rstd = new float[n];
        LayerNorm.Forward(x, w, b, o, mean, rstd);
        var r = ReferenceLayerNorm.Forward(D(x), D(w), D(b));
        AssertClose(rstd, r.Rstd, 0, 2e-6, "rstd");
        AssertClose(mean, r.Mean, 1e-4, 1e-6, "mean");
        AssertClose(o, r.Out, 2e-3, 1e-3, "out");   // x − μ at |x| ≈ 1000 carries fp32 rounding of ≈ 6e-5·r
    });

    [TestCaseSource(typeof(VectorWidths), nameof(VectorWidths.Accelerated))]
    public void ConstantRowsGiveTheBiasAndFiniteGradients(VectorWidth width) => VectorWidths.At(width, () =>
    {
        const int n = 3, c = 13;
        var x = new float[n * c];
        for (int i = 0; i < n; i++) x.AsSpan(i * c, c).Fill(i * 7f - 4f);
        var w = RandomFloats(c, 2);
        var b = RandomFloats(c, 3);
        var o = new float[n * c];
        var mean = new float[n];
        var rstd = new float[n];
        LayerNorm.Forward(x, w, b, o, mean, rstd);
        for (int i = 0; i < n; i++) AssertClose(o.AsSpan(i * c, c), D(b), 1e-6, 0, $"row {i}");
        var dx = new float[n * c];
        var dw = new float[c];
        var db = new float[c];
        var dout = RandomFloats(n * c, 4);
        LayerNorm.Backward(dout, x, w, mean, rstd, dx, dw, db);
        var (rdx, rdw, rdb) = ReferenceLayerNorm.Backward(D(dout), D(x), D(w));
        AssertClose(dx, rdx, 1e-3, 1e-4, "dx");   // r = 1/√ε ≈ 316 multiplies fp32 rounding
        AssertClose(dw, rdw, 1e-6, 1e-6, "dw");
        AssertClose(db, rdb, 1e-5, 1e-5, "db");
    });

    private static IEnumerable<TestCaseData> ThreadCountShapes() => VectorWidths.Each(
        [200],
        [192]);   // a multiple of 32: the pipelined forward, whose ranges start with a row summed on its own

    [TestCaseSource(nameof(ThreadCountShapes))]
    public void ResultsDoNotDependOnThreadCount(int c, VectorWidth width) => VectorWidths.At(width, () =>
    {
        const int n = 1000;
        var x = RandomFloats(n * c, 1);
        var w = RandomFloats(c, 2);
        var b = RandomFloats(c, 3);
        var dout = RandomFloats(n * c, 4);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
            WithThreads(threads, () =>
            {
                var o = new float[n * c];
                var mean = new float[n];
                var rstd = new float[n];
                var dx = new float[n * c];
                var dw = new float[c];
                var db = new float[c];
                LayerNorm.Forward(x, w, b, o, mean, rstd);
                LayerNorm.Backward(dout, x, w, mean, rstd, dx, dw, db);
                var all = o.Concat(mean).Concat(rstd).Concat(dx).Concat(dw).Concat(db).ToArray();
                if (first == null) first = all; else AssertBitIdentical(first, all, $"{threads} threads");
            });
    });

    [Test]
    public void InputThatIsNotWholeRowsIsRejected() =>
        Assert.That(() => LayerNorm.Forward(new float[10], new float[3], new float[3], new float[10], new float[3], new float[3]),
            Throws.ArgumentException.With.Message.Contains("multiple of C"));
}
