using DistAlign.Kernels.Gpu;
using ILGPU.Runtime;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.Gpu.GpuTest;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// The deterministic backward reductions: <see cref="GpuColumnSum"/> (bias gradients, and the scheme of LayerNorm's
/// dW/dB) against an fp64 reference and against a host emulation of its documented order, and the grouped
/// embedding backward against the CPU op (bit-identical). Shapes straddle <see cref="GpuColumnSum.RowsPerBlock"/>
/// (N below, at and above one block, with a short last block) and are not multiples of 8 or 16.
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuBackwardReductionTests(string backend) : GpuFixture(backend)
{
    private const int R = GpuColumnSum.RowsPerBlock;

    [TestCase(0, 5)]
    [TestCase(1, 1)]
    [TestCase(1, 7)]
    [TestCase(R - 1, 1)]
    [TestCase(R, 3)]
    [TestCase(R + 1, 13)]
    [TestCase(3 * R + 5, 17)]   // four blocks, the last of 5 rows; stage 2 sums 4 partials (its unrolled path)
    [TestCase(5 * R + 3, 9)]    // six blocks: stage 2's unrolled path and its tail
    public void ColumnSumAccumulatesTheFp64SumInItsDocumentedOrderBitIdenticallyRunToRun(int n, int c)
    {
        var x = RandomFloats(n * c, 1, 2.0);
        var before = RandomFloats(c, 2);
        var expected = new double[c];
        for (int j = 0; j < c; j++)
        {
            double sum = 0;
            for (int i = 0; i < n; i++) sum += x[i * c + j];
            expected[j] = before[j] + sum;
        }
        var first = RunColumnSum(x, before);
        AssertClose(first, expected, 2e-5 * Math.Sqrt(Math.Max(n, 1)), 1e-5, "sums (accumulated)");
        AssertBitIdentical(HostColumnSum(x, before), first, "sums in the documented order (blocks of R rows, then the blocks)");
        AssertBitIdentical(first, RunColumnSum(x, before), "column sum rerun");
    }

    [Test]
    public void ColumnSumScratchGrowsAndIsReusedAcrossShapes()
    {
        // small, large (the scratch grows), small again (a prefix of the grown scratch): each against the host order
        foreach (var (n, c, seed) in new[] { (3, 4, 10), (4 * R + 7, 6, 11), (R + 2, 5, 12) })
        {
            var x = RandomFloats(n * c, seed);
            var before = RandomFloats(c, seed + 100);
            AssertBitIdentical(HostColumnSum(x, before), RunColumnSum(x, before), $"column sum [{n}, {c}]");
        }
    }

    [Test]
    public void ColumnSumRejectsAnInputThatIsNotWholeRows()
    {
        using var a = Up(new float[10]);
        var e = Assert.Throws<ArgumentException>(() => Ops.ColumnSum.Sum(V(a, 7), V(a, 3)));
        Assert.That(e!.Message, Does.Contain("not a multiple of C = 3"));
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.ColumnSum.Sum(V(a, 7), V(a, 0)));
    }

    [TestCase(R - 1, 5)]
    [TestCase(R, 3)]
    [TestCase(R + 1, 7)]
    [TestCase(2 * R + 22, 19)]
    public void LayerNormParameterGradientsMatchReferenceAcrossRowBlocks(int n, int c)
    {
        var x = RandomFloats(n * c, 1, 2.0);
        for (int i = 0; i < x.Length; i++) x[i] -= 1.5f;   // a non-zero mean
        var w = RandomFloats(c, 2);
        var b = RandomFloats(c, 3);
        var g = RandomFloats(n * c, 4);
        var gwBefore = RandomFloats(c, 6);
        var gbBefore = RandomFloats(c, 7);
        using var dx = Up(x);
        using var dw = Up(w);
        using var db = Up(b);
        using var dout = Up(new float[n * c]);
        using var dmean = Up(new float[n]);
        using var drstd = Up(new float[n]);
        Ops.LayerNorm.Forward(V(dx, x), V(dw, w), V(db, b), V(dout, n * c), V(dmean, n), V(drstd, n));
        var (_, rdw, rdb) = ReferenceLayerNorm.Backward(D(g), D(x), D(w));
        (float[] Dw, float[] Db) Run()
        {
            using var dg = Up(g);
            using var gx = Up(new float[n * c]);
            using var gw = Up(gwBefore);
            using var gb = Up(gbBefore);
            Ops.LayerNorm.Backward(V(dg, g), V(dx, x), V(dw, w), V(dmean, n), V(drstd, n), V(gx, n * c), V(gw, c), V(gb, c));
            return (Down(gw, c), Down(gb, c));
        }
        var (gwOut, gbOut) = Run();
        // fp32 terms summed over N rows (the error grows like √N); x̂ is recomputed in fp32 from the saved mean and rstd
        double atol = 1e-5 * Math.Sqrt(n);
        AssertClose(gwOut, Plus(gwBefore, rdw), atol, 1e-4, "dw (accumulated)");
        AssertClose(gbOut, Plus(gbBefore, rdb), atol, 1e-4, "db (accumulated)");
        var (gwAgain, gbAgain) = Run();
        AssertBitIdentical(gwOut, gwAgain, "dw rerun");
        AssertBitIdentical(gbOut, gbAgain, "db rerun");
    }

    [TestCase(0, 3, 5, 4)]
    [TestCase(1, 1, 1, 1)]
    [TestCase(9, 1, 4, 3)]      // C = 1
    [TestCase(50, 7, 3, 4)]     // every token and every position repeated many times
    [TestCase(83, 17, 40, 9)]   // some tokens absent, rows of a group far apart
    public void EmbeddingBackwardIsBitIdenticalToTheCpuOpThroughBothEntryPoints(int n, int c, int vocab, int maxT)
    {
        var tokens = RandomInts(n, vocab, 1);
        var positions = RandomInts(n, maxT, 2);
        var g = RandomFloats(n * c, 5);
        var teBefore = RandomFloats(vocab * c, 6);
        var peBefore = RandomFloats(maxT * c, 7);
        var (cpuTe, cpuPe) = ((float[])teBefore.Clone(), (float[])peBefore.Clone());
        DistAlign.Kernels.Cpu.Embedding.Backward(g, tokens, positions, c, cpuTe, cpuPe);
        var (rte, rpe) = ReferenceEmbedding.Backward(D(g), tokens, positions, c, vocab, maxT);
        AssertClose(cpuTe, Plus(teBefore, rte), 1e-5, 1e-5, "CPU dwte against the fp64 reference");

        using var dg = Up(g);
        using var dt = Up(tokens);
        using var dp = Up(positions);
        (float[] Te, float[] Pe) Run(bool hostIds)
        {
            using var gte = Up(teBefore);
            using var gpe = Up(peBefore);
            if (hostIds)
            {
                Ops.Embedding.SetBatch(tokens, positions);
                Ops.Embedding.Backward(V(dg, n * c), c, V(gte, teBefore), V(gpe, peBefore));
            }
            else
            {
                Ops.Embedding.Backward(V(dg, n * c), V(dt, n), V(dp, n), c, V(gte, teBefore), V(gpe, peBefore));
            }
            return (Down(gte, teBefore.Length), Down(gpe, peBefore.Length));
        }
        foreach (bool hostIds in new[] { true, false, true })
        {
            var (te, pe) = Run(hostIds);
            string how = hostIds ? "SetBatch" : "device ids";
            AssertBitIdentical(cpuTe, te, $"dwte ({how}) vs the CPU op");
            AssertBitIdentical(cpuPe, pe, $"dwpe ({how}) vs the CPU op");
        }
    }

    [Test]
    public void EmbeddingBackwardUsesTheLastSetBatchNotTheIdsOfTheDeviceOverload()
    {
        const int n = 6, c = 3, vocab = 5, maxT = 4;
        int[] tokens = [0, 1, 1, 4, 0, 2], positions = [0, 1, 2, 3, 0, 1];
        int[] otherTokens = [3, 3, 3, 3, 3, 3], otherPositions = [2, 2, 2, 2, 2, 2];
        var g = RandomFloats(n * c, 1);
        var (cpuTe, cpuPe) = (new float[vocab * c], new float[maxT * c]);
        DistAlign.Kernels.Cpu.Embedding.Backward(g, tokens, positions, c, cpuTe, cpuPe);
        using var dg = Up(g);
        using var dt = Up(otherTokens);
        using var dp = Up(otherPositions);
        using var gte = Up(new float[vocab * c]);
        using var gpe = Up(new float[maxT * c]);
        Ops.Embedding.SetBatch(tokens, positions);
        Ops.Embedding.Backward(V(dg, n * c), V(dt, n), V(dp, n), c, V(gte, vocab * c), V(gpe, maxT * c));   // other ids
        gte.MemSetToZero();
        gpe.MemSetToZero();
        Ops.Embedding.Backward(V(dg, n * c), c, V(gte, vocab * c), V(gpe, maxT * c));
        AssertBitIdentical(cpuTe, Down(gte, vocab * c), "dwte of the SetBatch ids");
        AssertBitIdentical(cpuPe, Down(gpe, maxT * c), "dwpe of the SetBatch ids");
    }

    [Test]
    public void EmbeddingBackwardRejectsIdsOutsideTheTablesAndMismatchedShapes()
    {
        using var grad = Up(new float[12]);
        using var table = Up(new float[12]);
        Ops.Embedding.SetBatch([0, 4], [0, 1]);   // token 4 is outside a 4-row table
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Ops.Embedding.Backward(V(grad, 6), 3, V(table, 12), V(table, 6)));
        Assert.That(e!.Message, Does.Contain("Token id 4 is outside the vocabulary [0, 4)"));
        Ops.Embedding.SetBatch([0, 1], [0, 2]);   // position 2 is outside a 2-row table
        e = Assert.Throws<ArgumentOutOfRangeException>(() => Ops.Embedding.Backward(V(grad, 6), 3, V(table, 12), V(table, 6)));
        Assert.That(e!.Message, Does.Contain("Position 2 is outside the position table [0, 2)"));
        e = Assert.Throws<ArgumentOutOfRangeException>(() => Ops.Embedding.SetBatch([0, -1], [0, 0]));
        Assert.That(e!.Message, Does.Contain("Token id -1 at index 1 is negative"));
        Assert.Throws<ArgumentException>(() => Ops.Embedding.SetBatch([0, 1], [0]));
        Ops.Embedding.SetBatch([0, 1], [0, 1]);
        Assert.Throws<ArgumentException>(() => Ops.Embedding.Backward(V(grad, 9), 3, V(table, 12), V(table, 6)));   // dOutput is not [2, 3]
    }

    private static float[] RunColumnSum(float[] x, float[] before)
    {
        int c = before.Length;
        using var dx = Up(x);
        using var sums = Up(before);
        Ops.ColumnSum.Sum(V(dx, x), V(sums, c));
        return Down(sums, c);
    }

    /// <summary>The column sum in fp32 in <see cref="GpuColumnSum"/>'s order: per block of R rows in row order from 0,
    /// then the block partials in block order from 0, then added to the previous value.</summary>
    private static float[] HostColumnSum(float[] x, float[] before)
    {
        int c = before.Length, n = x.Length / c;
        var result = (float[])before.Clone();
        for (int j = 0; j < c; j++)
        {
            if (n == 0) continue;
            float total = 0f;
            for (int first = 0; first < n; first += R)
            {
                float partial = 0f;
                for (int i = first; i < Math.Min(n, first + R); i++) partial += x[i * c + j];
                total += partial;
            }
            result[j] += total;
        }
        return result;
    }
}
