using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.Gpu.GpuTest;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>GELU, residual and embedding on the CPU simulator against the fp64 references (tolerances as the CPU tests).</summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuElementwiseTests(string backend) : GpuFixture(backend)
{
    [TestCase(0)]
    [TestCase(1)]
    [TestCase(37)]
    [TestCase(1001)]
    public void GeluForwardAndAccumulatingBackwardMatchReference(int n)
    {
        var x = RandomFloats(n, 1, 3.0);
        if (n > 4) { x[0] = 30f; x[1] = -30f; x[2] = 1e4f; x[3] = -1e4f; }   // saturation and the ±20 clamp
        using var dx = Up(x);
        using var dout = Up(new float[n]);
        Ops.Gelu.Forward(V(dx, n), V(dout, n));
        var o = Down(dout, n);
        AssertClose(o, ReferenceGelu.Forward(D(x)), 1e-6, 1e-5, "out");

        var g = RandomFloats(n, 2);
        var before = RandomFloats(n, 3);
        using var dg = Up(g);
        using var dgrad = Up(before);
        Ops.Gelu.Backward(V(dg, n), V(dx, n), V(dgrad, n));
        AssertClose(Down(dgrad, n), Plus(before, ReferenceGelu.Backward(D(g), D(x))), 1e-5, 1e-5, "dx (accumulated)");

        // Bit-identical rerun.
        using var again = Up(before);
        Ops.Gelu.Backward(V(dg, n), V(dx, n), V(again, n));
        AssertBitIdentical(Down(dgrad, n), Down(again, n), "gelu backward rerun");
    }

    [Test]
    public void GeluForwardWorksInPlace()
    {
        var x = RandomFloats(29, 1);
        using var buffer = Up(x);
        Ops.Gelu.Forward(V(buffer, x), V(buffer, x));
        AssertClose(Down(buffer, x.Length), ReferenceGelu.Forward(D(x)), 1e-6, 1e-5, "in place");
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(77)]
    public void ResidualForwardAndAccumulatingBackwardMatchReference(int n)
    {
        var a = RandomFloats(n, 1);
        var b = RandomFloats(n, 2);
        using var da = Up(a);
        using var db = Up(b);
        using var dout = Up(new float[n]);
        Ops.Residual.Forward(V(da, n), V(db, n), V(dout, n));
        AssertClose(Down(dout, n), ReferenceResidual.Forward(D(a), D(b)), 1e-7, 1e-6, "out");

        var g = RandomFloats(n, 3);
        var gaBefore = RandomFloats(n, 4);
        var gbBefore = RandomFloats(n, 5);
        using var dg = Up(g);
        using var ga = Up(gaBefore);
        using var gb = Up(gbBefore);
        Ops.Residual.Backward(V(dg, n), V(ga, n), V(gb, n));
        var (ra, rb) = ReferenceResidual.Backward(D(g));
        AssertClose(Down(ga, n), Plus(gaBefore, ra), 1e-7, 1e-6, "da (accumulated)");
        AssertClose(Down(gb, n), Plus(gbBefore, rb), 1e-7, 1e-6, "db (accumulated)");

        Ops.Residual.Forward(V(da, n), V(db, n), V(da, n));   // a += b in place
        AssertClose(Down(da, n), ReferenceResidual.Forward(D(a), D(b)), 1e-7, 1e-6, "a += b in place");
    }

    [TestCase(0, 3, 5, 4)]
    [TestCase(1, 1, 1, 1)]
    [TestCase(17, 13, 11, 6)]   // repeated tokens and positions: the backward must sum them in order
    [TestCase(40, 19, 7, 9)]
    public void EmbeddingForwardAndAccumulatingBackwardMatchReference(int n, int c, int vocab, int maxT)
    {
        var tokens = RandomInts(n, vocab, 1);
        var positions = RandomInts(n, maxT, 2);
        var wte = RandomFloats(vocab * c, 3);
        var wpe = RandomFloats(maxT * c, 4);
        using var dt = Up(tokens);
        using var dp = Up(positions);
        using var dwte = Up(wte);
        using var dwpe = Up(wpe);
        using var dout = Up(new float[n * c]);
        Ops.Embedding.Forward(V(dt, n), V(dp, n), V(dwte, wte), V(dwpe, wpe), c, V(dout, n * c));
        AssertClose(Down(dout, n * c), ReferenceEmbedding.Forward(tokens, positions, D(wte), D(wpe), c), 1e-7, 1e-6, "out");

        var g = RandomFloats(n * c, 5);
        var teBefore = RandomFloats(vocab * c, 6);
        var peBefore = RandomFloats(maxT * c, 7);
        using var dg = Up(g);
        using var gte = Up(teBefore);
        using var gpe = Up(peBefore);
        Ops.Embedding.Backward(V(dg, n * c), V(dt, n), V(dp, n), c, V(gte, teBefore), V(gpe, peBefore));
        var (rte, rpe) = ReferenceEmbedding.Backward(D(g), tokens, positions, c, vocab, maxT);
        var te = Down(gte, teBefore.Length);
        AssertClose(te, Plus(teBefore, rte), 1e-5, 1e-5, "dwte (accumulated)");
        AssertClose(Down(gpe, peBefore.Length), Plus(peBefore, rpe), 1e-5, 1e-5, "dwpe (accumulated)");

        using var gte2 = Up(teBefore);
        using var gpe2 = Up(peBefore);
        Ops.Embedding.Backward(V(dg, n * c), V(dt, n), V(dp, n), c, V(gte2, teBefore), V(gpe2, peBefore));
        AssertBitIdentical(te, Down(gte2, teBefore.Length), "embedding backward rerun");
    }

    [Test]
    public void ShapeErrorsAreReportedOnTheHost()
    {
        using var a = Up(new float[6]);
        Assert.Throws<ArgumentException>(() => Ops.Residual.Forward(V(a, 6), V(a, 5), V(a, 6)));
        Assert.Throws<ArgumentException>(() => Ops.Gelu.Backward(V(a, 6), V(a, 6), V(a, 4)));
        using var i = Up(new int[3]);
        Assert.Throws<ArgumentException>(() => Ops.Embedding.Forward(V(i, 3), V(i, 3), V(a, 5), V(a, 4), 2, V(a, 6)));
    }
}

/// <summary>
/// The variants GpuGpt's mixed-precision step uses: forwards that write bf16 directly (GELU and LayerNorm outputs
/// that are only GEMM operands), bit-identical to the fp32 forward rounded by <see cref="DistAlign.Kernels.Gpu.GpuBFloat16"/>
/// with the same mean and rstd; and the GELU backward that overwrites instead of accumulating.
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuBFloat16OutputTests(string backend) : GpuFixture(backend)
{
    private static ushort[] Rounded(float[] values) => values.Select(DistAlign.Kernels.Gpu.GpuBFloat16.Round).ToArray();

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(1001)]
    public void GeluForwardToBFloat16IsTheRoundedFp32Forward(int n)
    {
        var x = RandomFloats(n, 11, 4.0);
        using var input = Up(x);
        using var fp32 = Up(new float[n]);
        using var bits = Accelerator.Allocate1D<ushort>(Math.Max(1, n));
        Ops.Gelu.Forward(V(input, n), V(fp32, n));
        Ops.Gelu.Forward(V(input, n), bits.View.SubView(0, n));
        Accelerator.Synchronize();
        Assert.That(Down(bits, n), Is.EqualTo(Rounded(Down(fp32, n))));
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(1001)]
    public void GeluBackwardThatOverwritesEqualsAccumulatingIntoZeros(int n)
    {
        var x = RandomFloats(n, 15, 4.0);
        var g = RandomFloats(n, 16);
        using var input = Up(x);
        using var dOut = Up(g);
        using var accumulated = Up(new float[n]);
        using var overwritten = Up(Enumerable.Repeat(float.NaN, n).ToArray());   // stale contents must not matter
        Ops.Gelu.Backward(V(dOut, n), V(input, n), V(accumulated, n));
        Ops.Gelu.Backward(V(dOut, n), V(input, n), V(overwritten, n), accumulate: false);
        // equal as numbers (0 + (−0) = +0 when accumulating, so only the sign of a zero may differ)
        Assert.That(Down(overwritten, n), Is.EqualTo(Down(accumulated, n)), "gelu backward, overwrite vs accumulate into 0");
    }

    [TestCase(0, 5)]
    [TestCase(1, 1)]
    [TestCase(65, 13)]
    [TestCase(197, 17)]
    public void ColumnSumThatRoundsToBFloat16GivesTheSameSumsAndTheRoundedInput(int rows, int channels)
    {
        var x = RandomFloats(rows * channels, 17, 2.0);
        var start = RandomFloats(channels, 18);
        using var input = Up(x);
        using var plain = Up(start);
        using var fused = Up(start);
        using var bits = Accelerator.Allocate1D<ushort>(Math.Max(1, rows * channels));
        Ops.ColumnSum.Sum(V(input, rows * channels), V(plain, channels));
        Ops.ColumnSum.SumAndRoundToBFloat16(V(input, rows * channels), V(fused, channels), bits.View.SubView(0, rows * channels));
        AssertBitIdentical(Down(fused, channels), Down(plain, channels), "column sums");
        Assert.That(Down(bits, rows * channels), Is.EqualTo(Rounded(x)));
    }

    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(5, 130)]
    public void LayerNormForwardToBFloat16IsTheRoundedFp32Forward(int rows, int channels)
    {
        var x = RandomFloats(rows * channels, 12, 3.0);
        var w = RandomFloats(channels, 13);
        var b = RandomFloats(channels, 14);
        using var input = Up(x);
        using var weight = Up(w);
        using var bias = Up(b);
        using var fp32 = Up(new float[rows * channels]);
        using var mean = Up(new float[rows]);
        using var rstd = Up(new float[rows]);
        using var mean2 = Up(new float[rows]);
        using var rstd2 = Up(new float[rows]);
        using var bits = Accelerator.Allocate1D<ushort>(rows * channels);
        Ops.LayerNorm.Forward(V(input, rows * channels), V(weight, channels), V(bias, channels), V(fp32, rows * channels), V(mean, rows), V(rstd, rows));
        Ops.LayerNorm.Forward(V(input, rows * channels), V(weight, channels), V(bias, channels), bits.View, V(mean2, rows), V(rstd2, rows));
        Accelerator.Synchronize();
        Assert.That(Down(bits, rows * channels), Is.EqualTo(Rounded(Down(fp32, rows * channels))));
        AssertBitIdentical(Down(mean2, rows), Down(mean, rows), "mean");
        AssertBitIdentical(Down(rstd2, rows), Down(rstd, rows), "rstd");
    }
}
