using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using DistAlign.Tests.Reference;
using ILGPU;
using static DistAlign.Tests.Kernels.Gpu.GpuTest;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// <see cref="GpuSequenceLogProbs"/> on the CPU simulator: forward against the fp64 reference, ∂h and ∂E against
/// finite differences of L = Σ a·logprob + Σ b·entropy (with pre-filled gradients: +=), agreement with the CPU
/// kernel, several chunks (explicit small chunk sizes, or a small scratch for the public ops), padded logits rows
/// (row stride &gt; V, padding poisoned with NaN: never read, never written) equal to unpadded ones, the fused
/// path equal to forward + backward, bit-identical reruns, extreme logits, and the per-sequence sum/scatter.
/// Every run starts from a NaN-filled scratch, so no result can depend on what the scratch held.
/// These are the fp32-operand path (the GEMM of <see cref="GpuKernels"/>: the tiled GEMM, or cuBLAS fp32 on CUDA), where
/// the padding columns are never touched; the bf16 path, whose forward GEMM writes them (as zeros), is
/// <see cref="GpuSequenceLogProbsBFloat16Tests"/>.
/// Tolerances: fp32 against fp64 as in the CPU tests (log-probs/entropies 1e-5 abs + 1e-5 rel; gradients
/// 2e-5 abs + 1e-4 rel, the finite-difference noise included); against the CPU kernel 1e-5 abs + 1e-4 rel
/// (both fp32, different summation orders and exp implementations).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuSequenceLogProbsTests(string backend) : GpuFixture(backend)
{
    internal enum Mode { ForwardOnly, Separate, Fused }

    internal sealed record Result(float[] LogProbs, float[] Lse, float[] Entropy, float[] DHidden, float[] DLmHead);

    /// <summary>
    /// Runs the GPU op from a NaN-filled scratch. chunkRows 0 = the public overloads (the chunk and the padded row
    /// stride chosen by the op; a scratch of <paramref name="scratchLength"/> floats, default
    /// <see cref="GpuSequenceLogProbs.ScratchLength"/>); otherwise the internal ones with that chunk and row stride
    /// (0 = V: unpadded). The scratch comes back too, to check the padding columns.
    /// </summary>
    private static Result Run(float[] h, float[] e, int[] targets, int c, int v, Mode mode, bool withEntropy, float[] a, float[]? b,
                              float[] dh0, float[] de0, int chunkRows = 0, int rowStride = 0, long scratchLength = 0) =>
        RunWithScratch(Ops.SequenceLogProbs, h, e, targets, c, v, mode, withEntropy, a, b, dh0, de0, chunkRows, rowStride, scratchLength).Result;

    /// <summary>
    /// <paramref name="op"/> on device copies of the inputs, from a NaN-filled scratch (chunkRows 0: the public ops, chunk from the
    /// scratch length); returns the results and the scratch as left. Also used by <see cref="GpuSequenceLogProbsBFloat16Tests"/>.
    /// </summary>
    internal static (Result Result, float[] Scratch) RunWithScratch(GpuSequenceLogProbs op, float[] h, float[] e, int[] targets, int c, int v,
                                                                    Mode mode, bool withEntropy, float[] a, float[]? b, float[] dh0, float[] de0,
                                                                    int chunkRows, int rowStride, long scratchLength)
    {
        int n = targets.Length;
        int stride = rowStride == 0 ? v : rowStride;
        if (scratchLength == 0)
            scratchLength = chunkRows == 0 ? GpuSequenceLogProbs.ScratchLength(n, v) : (long)Math.Min(Math.Max(n, 1), chunkRows) * stride;
        using var dh = Up(h);
        using var de = Up(e);
        using var dt = Up(targets);
        using var scratch = Up(Enumerable.Repeat(float.NaN, (int)scratchLength).ToArray());
        using var lp = Up(new float[n]);
        using var lse = Up(new float[n]);
        using var ent = Up(new float[n]);
        using var da = Up(a);
        using var db = Up(b ?? []);
        using var gh = Up(dh0);
        using var ge = Up(de0);
        ArrayView<float> H = V(dh, h), E = V(de, e), S = V(scratch, (int)scratchLength), Lp = V(lp, n), Lse = V(lse, n);
        ArrayView<int> T = V(dt, targets);
        ArrayView<float> Ent = withEntropy ? V(ent, n) : default, A = V(da, a), B = b is null ? default : V(db, b), GH = V(gh, dh0), GE = V(ge, de0);
        switch (mode, chunkRows)
        {
            case (Mode.Fused, 0): op.ForwardBackward(H, E, T, c, v, A, B, S, Lp, Lse, Ent, GH, GE); break;
            case (Mode.Fused, _): op.ForwardBackward(H, E, T, c, v, A, B, S, Lp, Lse, Ent, GH, GE, chunkRows, stride); break;
            case (_, 0):
                op.Forward(H, E, T, c, v, S, Lp, Lse, Ent);
                if (mode == Mode.Separate) op.Backward(H, E, T, c, v, Lse, Ent, A, B, S, GH, GE);
                break;
            default:
                op.Forward(H, E, T, c, v, S, Lp, Lse, Ent, chunkRows, stride);
                if (mode == Mode.Separate) op.Backward(H, E, T, c, v, Lse, Ent, A, B, S, GH, GE, chunkRows, stride);
                break;
        }
        var result = new Result(Down(lp, n), Down(lse, n), withEntropy ? Down(ent, n) : [], Down(gh, dh0.Length), Down(ge, de0.Length));
        return (result, Down(scratch, (int)scratchLength));
    }

    private static Result RunCpu(float[] h, float[] e, int[] targets, int c, int v, float[] a, float[]? b, float[] dh0, float[] de0)
    {
        int n = targets.Length;
        var scratch = new float[SequenceLogProbs.ScratchLength(n, v)];
        var lp = new float[n];
        var lse = new float[n];
        var ent = new float[n];
        var dh = (float[])dh0.Clone();
        var de = (float[])de0.Clone();
        SequenceLogProbs.Forward(h, e, targets, c, v, scratch, lp, lse, ent);
        SequenceLogProbs.Backward(h, e, targets, c, v, lse, ent, a, b ?? default, scratch, dh, de);
        return new Result(lp, lse, ent, dh, de);
    }

    [TestCase(1, 1, 1)]
    [TestCase(7, 5, 13)]
    [TestCase(19, 9, 37)]
    [TestCase(19, 1, 13)]
    [TestCase(7, 9, 1)]
    public void ForwardMatchesTheReferenceAndTheCpuKernel(int n, int c, int v)
    {
        var (h, e, targets) = Inputs(n, c, v, seed: n + c);
        var r = Run(h, e, targets, c, v, Mode.ForwardOnly, true, new float[n], null, new float[n * c], new float[v * c]);
        var (refLp, refEnt) = ReferenceSequenceLogProbs.Forward(D(h), D(e), targets, c, v);
        AssertClose(r.LogProbs, refLp, 1e-5, 1e-5, "log-probs");
        AssertClose(r.Entropy, refEnt, 1e-5, 1e-5, "entropy");
        var cpu = RunCpu(h, e, targets, c, v, new float[n], null, new float[n * c], new float[v * c]);
        AssertClose(r.LogProbs, D(cpu.LogProbs), 1e-5, 1e-4, "log-probs vs CPU");
        AssertClose(r.Lse, D(cpu.Lse), 1e-5, 1e-4, "log-sum-exp vs CPU");
        AssertClose(r.Entropy, D(cpu.Entropy), 1e-5, 1e-4, "entropy vs CPU");
    }

    [Test]
    public void GradientsMatchFiniteDifferences([Values] bool withEntropy, [Values] bool fused, [Values(0, 2)] int chunkRows)
    {
        int n = 7, c = 5, v = 13;
        var (h, e, targets) = Inputs(n, c, v, seed: 3);
        var a = RandomFloats(n, 4);
        var b = withEntropy ? RandomFloats(n, 5) : null;
        var dh0 = RandomFloats(n * c, 6);   // pre-filled: the backward accumulates
        var de0 = RandomFloats(v * c, 7);
        var r = Run(h, e, targets, c, v, fused ? Mode.Fused : Mode.Separate, withEntropy, a, b, dh0, de0, chunkRows);

        var hd = D(h);
        var ed = D(e);
        double Loss()
        {
            var (lp, ent) = ReferenceSequenceLogProbs.Forward(hd, ed, targets, c, v);
            double l = 0;
            for (int i = 0; i < n; i++) l += a[i] * lp[i] + (b is null ? 0 : b[i] * ent[i]);
            return l;
        }
        AssertClose(r.DHidden, Plus(dh0, FiniteDifferenceGradient(Loss, hd)), 2e-5, 1e-4, "d hidden");
        AssertClose(r.DLmHead, Plus(de0, FiniteDifferenceGradient(Loss, ed)), 2e-5, 1e-4, "d lm head");
    }

    [Test]
    public void ForwardBackwardEqualsForwardThenBackward([Values] bool withEntropy)
    {
        int n = 19, c = 9, v = 37;
        var (h, e, targets) = Inputs(n, c, v, seed: 11);
        var a = RandomFloats(n, 12);
        var b = withEntropy ? RandomFloats(n, 13) : null;
        var dh0 = RandomFloats(n * c, 14);
        var de0 = RandomFloats(v * c, 15);
        var fused = Run(h, e, targets, c, v, Mode.Fused, withEntropy, a, b, dh0, de0, chunkRows: 4);
        var separate = Run(h, e, targets, c, v, Mode.Separate, withEntropy, a, b, dh0, de0, chunkRows: 4);
        AssertSame(separate, fused, "fused vs separate");
    }

    [Test]
    public void ChunkingChangesOnlyTheRoundingOfTheLmHeadGradient()
    {
        int n = 19, c = 5, v = 13;
        var (h, e, targets) = Inputs(n, c, v, seed: 21);
        var a = RandomFloats(n, 22);
        var b = RandomFloats(n, 23);
        var dh0 = RandomFloats(n * c, 24);
        var de0 = RandomFloats(v * c, 25);
        Assert.That(GpuSequenceLogProbs.ChunkRows(n, v, GpuSequenceLogProbs.ScratchLength(n, v)), Is.EqualTo(n), "the public op runs this in one chunk");
        var whole = Run(h, e, targets, c, v, Mode.Separate, true, a, b, dh0, de0);
        foreach (int chunk in new[] { 1, 3, 7 })
        {
            var r = Run(h, e, targets, c, v, Mode.Separate, true, a, b, dh0, de0, chunk, GpuSequenceLogProbs.RowStride(v));
            string what = $"{chunk} rows per chunk";
            AssertBitIdentical(whole.LogProbs, r.LogProbs, $"log-probs, {what}");
            AssertBitIdentical(whole.Lse, r.Lse, $"log-sum-exp, {what}");
            AssertBitIdentical(whole.Entropy, r.Entropy, $"entropy, {what}");
            AssertBitIdentical(whole.DHidden, r.DHidden, $"d hidden, {what}");
            AssertClose(r.DLmHead, D(whole.DLmHead), 1e-6, 1e-5, $"d lm head, {what}");
        }
    }

    [Test]
    public void AgreesWithTheCpuKernel([Values] bool fused)
    {
        int n = 19, c = 9, v = 37;
        var (h, e, targets) = Inputs(n, c, v, seed: 31);
        var a = RandomFloats(n, 32);
        var b = RandomFloats(n, 33);
        var dh0 = RandomFloats(n * c, 34);
        var de0 = RandomFloats(v * c, 35);
        var gpu = Run(h, e, targets, c, v, fused ? Mode.Fused : Mode.Separate, true, a, b, dh0, de0, chunkRows: 5);
        var cpu = RunCpu(h, e, targets, c, v, a, b, dh0, de0);
        AssertClose(gpu.LogProbs, D(cpu.LogProbs), 1e-5, 1e-4, "log-probs");
        AssertClose(gpu.Lse, D(cpu.Lse), 1e-5, 1e-4, "log-sum-exp");
        AssertClose(gpu.Entropy, D(cpu.Entropy), 1e-5, 1e-4, "entropy");
        AssertClose(gpu.DHidden, D(cpu.DHidden), 1e-5, 1e-4, "d hidden");
        AssertClose(gpu.DLmHead, D(cpu.DLmHead), 1e-5, 1e-4, "d lm head");
    }

    [Test]
    public void RerunsAreBitIdentical()
    {
        int n = 19, c = 9, v = 37;
        var (h, e, targets) = Inputs(n, c, v, seed: 41);
        var a = RandomFloats(n, 42);
        var b = RandomFloats(n, 43);
        var dh0 = RandomFloats(n * c, 44);
        var de0 = RandomFloats(v * c, 45);
        var first = Run(h, e, targets, c, v, Mode.Separate, true, a, b, dh0, de0, chunkRows: 6);
        var second = Run(h, e, targets, c, v, Mode.Separate, true, a, b, dh0, de0, chunkRows: 6);
        AssertSame(first, second, "rerun");
    }

    [Test]
    public void ExtremeLogitsStayFinite()
    {
        int n = 3, c = 2, v = 5;
        var h = new float[] { 1e2f, -1e2f, 5e1f, 5e1f, 0, 0 };
        var e = new float[] { 1e2f, 0, -1e2f, 0, 0, 1e2f, 0, -1e2f, 1, 1 };
        var targets = new[] { 0, 2, 4 };
        float[] ones = [1, 1, 1];
        var r = Run(h, e, targets, c, v, Mode.Separate, true, ones, ones, new float[n * c], new float[v * c]);
        foreach (var (values, what) in new[] { (r.LogProbs, "log-probs"), (r.Entropy, "entropy"), (r.DHidden, "d hidden"), (r.DLmHead, "d lm head") })
            AssertAllFinite(values, what);
        var (refLp, refEnt) = ReferenceSequenceLogProbs.Forward(D(h), D(e), targets, c, v);
        AssertClose(r.LogProbs, refLp, 1e-2, 1e-6, "log-probs (logits ~1e4: fp32 ulp ≈ 1e-3)");
        AssertClose(r.Entropy, refEnt, 1e-2, 1e-6, "entropy");
    }

    [Test]
    public void ArgumentsAreCheckedAsOnTheCpu()
    {
        int n = 5, c = 3, v = 7, row = GpuSequenceLogProbs.RowStride(v);   // the public ops need one padded row of scratch
        using var buf = Up(new float[n * row]);
        using var ints = Up(new int[n]);
        ArrayView<float> F(int length) => V(buf, length);
        var op = Ops.SequenceLogProbs;
        var t = V(ints, n);
        Assert.Throws<ArgumentException>(() => op.Forward(F(n * c), F(v * c), t, c, v, F(row - 1), F(n), F(n), default), "scratch too small");
        Assert.Throws<ArgumentException>(() => op.Forward(F(n * c - 1), F(v * c), t, c, v, F(row), F(n), F(n), default), "hidden");
        Assert.Throws<ArgumentException>(() => op.Forward(F(n * c), F(v * c), t, c, v, F(row), F(n), F(n), F(n - 1)), "entropy");
        Assert.Throws<ArgumentOutOfRangeException>(() => op.Forward(F(0), F(0), t, 0, v, F(row), F(n), F(n), default), "channels");
        Assert.Throws<ArgumentException>(() => op.Backward(F(n * c), F(v * c), t, c, v, F(n), default, F(n), F(n), F(row), F(n * c), F(v * c)),
                                         "dEntropy without the forward's entropies");
        Assert.Throws<ArgumentException>(() => op.Backward(F(n * c), F(v * c), t, c, v, F(n), F(n), F(n), default, F(row), F(n * c), F(v * c - 1)),
                                         "dLmHead");
        Assert.Throws<ArgumentOutOfRangeException>(() => op.Forward(F(n * c), F(v * c), t, c, v, F(n * v), F(n), F(n), default, 1, v - 1),
                                                   "row stride below V");
        Assert.Throws<ArgumentException>(() => op.Forward(F(n * c), F(v * c), t, c, v, F(2 * (v + 1) - 1), F(n), F(n), default, 2, v + 1),
                                         "scratch too small for two rows at stride V + 1");
    }

    [TestCase(37, 20, 5)]    // the chunk divides N
    [TestCase(37, 20, 7)]    // it does not: a short last chunk
    [TestCase(61, 20, 20)]   // one chunk
    [TestCase(61, 13, 4)]
    [TestCase(1, 20, 3)]     // V = 1: every log-prob and gradient 0, 63 padding columns per row
    [TestCase(37, 1, 1)]     // N = 1
    [TestCase(61, 1, 4)]
    [TestCase(37, 0, 3)]     // N = 0: nothing to do, ∂E untouched
    public void PaddedRowsGiveTheResultsOfUnpaddedRows(int v, int n, int chunkRows)
    {
        int c = 6;
        var (h, e, targets) = Inputs(n, c, v, seed: v + n + chunkRows);
        var a = RandomFloats(n, 61);
        var b = RandomFloats(n, 62);
        var dh0 = RandomFloats(n * c, 63);
        var de0 = RandomFloats(v * c, 64);
        foreach (var (mode, withEntropy) in new[] { (Mode.Separate, true), (Mode.Fused, false) })
        {
            var unpadded = Run(h, e, targets, c, v, mode, withEntropy, a, withEntropy ? b : null, dh0, de0, chunkRows, v);
            foreach (int stride in new[] { v + 3, GpuSequenceLogProbs.RowStride(v) })
            {
                Assert.That(stride, Is.GreaterThan(v));
                var padded = Run(h, e, targets, c, v, mode, withEntropy, a, withEntropy ? b : null, dh0, de0, chunkRows, stride);
                AssertSameOrClose(unpadded, padded, $"{mode}, entropy {withEntropy}, stride {stride} vs {v}, {chunkRows} rows per chunk");
            }
            if (n == 0) AssertBitIdentical(de0, unpadded.DLmHead, "N = 0 leaves dLmHead alone");
        }
    }

    [Test]
    public void PaddingColumnsAreNeverReadOrWritten([Values] bool fused)
    {
        // The public ops pad V = 37 to a 64-float stride; the scratch starts all NaN, so a padding column read as data
        // would turn a result into NaN, and one written would no longer be NaN afterwards. A 5-row scratch: 4 chunks.
        int n = 19, c = 7, v = 37, stride = GpuSequenceLogProbs.RowStride(v);
        Assert.That(stride, Is.EqualTo(64));
        var (h, e, targets) = Inputs(n, c, v, seed: 71);
        var a = RandomFloats(n, 72);
        var b = RandomFloats(n, 73);
        var dh0 = RandomFloats(n * c, 74);
        var de0 = RandomFloats(v * c, 75);
        long small = 5L * stride + 3;   // a bit over five rows: the chunk is whole rows
        Assert.That(GpuSequenceLogProbs.ChunkRows(n, v, small), Is.EqualTo(5), "19 rows in 4 chunks of at most 5");
        var mode = fused ? Mode.Fused : Mode.Separate;
        var (r, scratch) = RunWithScratch(Ops.SequenceLogProbs, h, e, targets, c, v, mode, true, a, b, dh0, de0, 0, 0, small);
        foreach (var (values, what) in new[] { (r.LogProbs, "log-probs"), (r.Lse, "log-sum-exp"), (r.Entropy, "entropy"), (r.DHidden, "d hidden"), (r.DLmHead, "d lm head") })
            AssertAllFinite(values, what);
        for (int row = 0; row < 5; row++)
            for (int col = 0; col < stride; col++)
                Assert.That(float.IsNaN(scratch[row * stride + col]), Is.EqualTo(col >= v), $"scratch row {row}, column {col}");
        Assert.That(float.IsNaN(scratch[5 * stride]), "the floats after the last whole row are not used");

        var cpu = RunCpu(h, e, targets, c, v, a, b, dh0, de0);
        AssertClose(r.LogProbs, D(cpu.LogProbs), 1e-5, 1e-4, "log-probs vs CPU");
        AssertClose(r.Entropy, D(cpu.Entropy), 1e-5, 1e-4, "entropy vs CPU");
        AssertClose(r.DHidden, D(cpu.DHidden), 1e-5, 1e-4, "d hidden vs CPU");
        AssertClose(r.DLmHead, D(cpu.DLmHead), 1e-5, 1e-4, "d lm head vs CPU");
        var whole = Run(h, e, targets, c, v, mode, true, a, b, dh0, de0);   // one chunk of 19 padded rows
        AssertSameOrClose(whole with { DLmHead = r.DLmHead }, r, "4 chunks vs 1 (public ops)");
        AssertClose(r.DLmHead, D(whole.DLmHead), 1e-6, 1e-5, "d lm head, 4 chunks vs 1");
    }

    [Test]
    public void PerSequenceSumsMeansAndTheirBackward()
    {
        var values = new float[] { 1, 2, 3, 4, 5, 6 };
        var sequence = new[] { 0, 0, 1, 1, 1, -1 };
        var targets = new[] { -1, 7, 7, 7, 7, 7 };
        var (sums, counts) = SumOnGpu(values, sequence, targets, 2);
        Assert.That(sums, Is.EqualTo(new float[] { 2, 12 }));
        Assert.That(counts, Is.EqualTo(new[] { 1, 3 }));
        Assert.That(ScatterOnGpu([10f, 20f], [3f, 6f], counts, sequence, targets, new float[6]), Is.EqualTo(new float[] { 0, 13, 22, 22, 22, 0 }));
        Assert.That(ScatterOnGpu([], [3f, 6f], counts, sequence, targets, new float[6]), Is.EqualTo(new float[] { 0, 3, 2, 2, 2, 0 }));
        Assert.That(SumOnGpu([], [], [], 2), Is.EqualTo((new float[2], new int[2])));
    }

    [Test]
    public void PerSequenceSumsAndScatterAreBitIdenticalToTheCpu()
    {
        const int n = 53, s = 6;
        var values = RandomFloats(n, 51, 3.0);
        var rng = new Random(52);
        var sequence = Enumerable.Range(0, n).Select(_ => rng.Next(-1, s)).ToArray();
        var targets = Enumerable.Range(0, n).Select(i => i % 5 == 2 ? TargetLogProbs.Ignored : rng.Next(100)).ToArray();
        var cpuSums = new float[s];
        var cpuCounts = new int[s];
        SequenceLogProbs.SumBySequence(values, sequence, targets, cpuSums, cpuCounts);
        var (sums, counts) = SumOnGpu(values, sequence, targets, s);
        AssertBitIdentical(cpuSums, sums, "sums");
        Assert.That(counts, Is.EqualTo(cpuCounts), "counts");

        var dSums = RandomFloats(s, 53);
        var dMeans = RandomFloats(s, 54);
        var d0 = RandomFloats(n, 55);
        var cpuD = (float[])d0.Clone();
        SequenceLogProbs.ScatterBySequence(dSums, dMeans, counts, sequence, targets, cpuD);
        AssertBitIdentical(cpuD, ScatterOnGpu(dSums, dMeans, counts, sequence, targets, d0), "dValues (+=)");
    }

    private static (float[] Sums, int[] Counts) SumOnGpu(float[] values, int[] sequence, int[] targets, int s)
    {
        using var dv = Up(values);
        using var dq = Up(sequence);
        using var dt = Up(targets);
        using var ds = Up(Enumerable.Repeat(float.NaN, s).ToArray());   // overwritten, not accumulated
        using var dc = Up(Enumerable.Repeat(-5, s).ToArray());
        Ops.SequenceLogProbs.SumBySequence(V(dv, values), V(dq, sequence), V(dt, targets), V(ds, s), V(dc, s));
        return (Down(ds, s), Down(dc, s));
    }

    private static float[] ScatterOnGpu(float[] dSums, float[] dMeans, int[] counts, int[] sequence, int[] targets, float[] dValues)
    {
        using var a = Up(dSums);
        using var m = Up(dMeans);
        using var k = Up(counts);
        using var q = Up(sequence);
        using var t = Up(targets);
        using var d = Up(dValues);
        Ops.SequenceLogProbs.ScatterBySequence(dSums.Length == 0 ? default : V(a, dSums), V(m, dMeans), V(k, counts), V(q, sequence), V(t, targets), V(d, dValues));
        return Down(d, dValues.Length);
    }

    private static void AssertSame(Result expected, Result actual, string what)
    {
        AssertBitIdentical(expected.LogProbs, actual.LogProbs, $"{what}: log-probs");
        AssertBitIdentical(expected.Lse, actual.Lse, $"{what}: log-sum-exp");
        AssertBitIdentical(expected.Entropy, actual.Entropy, $"{what}: entropy");
        AssertBitIdentical(expected.DHidden, actual.DHidden, $"{what}: d hidden");
        AssertBitIdentical(expected.DLmHead, actual.DLmHead, $"{what}: d lm head");
    }

    /// <summary>Bit-identical on the simulator (tiled GEMM: the same products summed in the same order whatever the
    /// leading dimensions); within 1e-6 abs + 1e-5 rel on CUDA, where cuBLAS may pick another algorithm per stride.</summary>
    private void AssertSameOrClose(Result expected, Result actual, string what)
    {
        if (Backend == "simulator")
        {
            AssertSame(expected, actual, what);
            return;
        }
        AssertClose(actual.LogProbs, D(expected.LogProbs), 1e-6, 1e-5, $"{what}: log-probs");
        AssertClose(actual.Lse, D(expected.Lse), 1e-6, 1e-5, $"{what}: log-sum-exp");
        AssertClose(actual.Entropy, D(expected.Entropy), 1e-6, 1e-5, $"{what}: entropy");
        AssertClose(actual.DHidden, D(expected.DHidden), 1e-6, 1e-5, $"{what}: d hidden");
        AssertClose(actual.DLmHead, D(expected.DLmHead), 1e-6, 1e-5, $"{what}: d lm head");
    }

    private static (float[] H, float[] E, int[] Targets) Inputs(int n, int c, int v, int seed)
    {
        var h = RandomFloats(n * c, seed, 1.0);
        var e = RandomFloats(v * c, seed + 100, 1.0);
        var rng = new Random(seed);
        var targets = Enumerable.Range(0, n).Select(i => i % 4 == 3 ? TargetLogProbs.Ignored : rng.Next(v)).ToArray();
        return (h, e, targets);
    }
}

/// <summary>The LM head's scratch sizing: padded row stride, chunk rows from the scratch length, the default scratch.</summary>
public class GpuSequenceLogProbsSizingTests
{
    [TestCase(1, 64)]
    [TestCase(37, 64)]
    [TestCase(64, 64)]
    [TestCase(65, 128)]
    [TestCase(50_257, 50_304)]   // GPT-2, as llm.c pads it
    public void TheRowStrideIsTheVocabularyRoundedUpToSixtyFour(int vocab, int stride) =>
        Assert.That(GpuSequenceLogProbs.RowStride(vocab), Is.EqualTo(stride));

    [TestCase(16_384, 50_257, GpuSequenceLogProbs.DefaultScratchFloats, 4_096)]   // GPT-2 124M, 16×1024 tokens: 4 even chunks
    [TestCase(100, 37, 64 * 30L, 25)]     // 30 rows fit: 4 chunks of 25
    [TestCase(90, 37, 64 * 30L, 30)]      // 3 chunks of 30
    [TestCase(10, 37, 64 * 30L, 10)]      // all rows fit: one chunk
    [TestCase(0, 37, 64 * 30L, 1)]
    [TestCase(7, 37, 64 * 30L + 63, 7)]
    [TestCase(3, 37, 64L, 1)]             // one row fits
    public void ChunksAreAsFewAsTheScratchAllowsAndEven(int rows, int vocab, long scratch, int chunkRows) =>
        Assert.That(GpuSequenceLogProbs.ChunkRows(rows, vocab, scratch), Is.EqualTo(chunkRows));

    [Test]
    public void ScratchLengthHoldsOneChunkOfPaddedRows()
    {
        Assert.That(GpuSequenceLogProbs.ScratchLength(16_384, 50_257), Is.EqualTo(4_096L * 50_304));
        Assert.That(GpuSequenceLogProbs.ScratchLength(16_384, 50_257), Is.LessThanOrEqualTo(GpuSequenceLogProbs.DefaultScratchFloats));
        Assert.That(GpuSequenceLogProbs.ScratchLength(10, 37), Is.EqualTo(10L * 64), "no more rows than positions");
        Assert.That(GpuSequenceLogProbs.ScratchLength(0, 37), Is.EqualTo(64L), "one row for an empty batch");
        Assert.That(GpuSequenceLogProbs.ScratchLength(100, 37, maxFloats: 64 * 30), Is.EqualTo(25L * 64));
        Assert.That(GpuSequenceLogProbs.ScratchLength(100, 37, maxFloats: 10), Is.EqualTo(64L), "at least one row");
        Assert.That(GpuSequenceLogProbs.ChunkRows(100, 37, GpuSequenceLogProbs.ScratchLength(100, 37, 64 * 30)), Is.EqualTo(25));
        Assert.Throws<ArgumentException>(() => GpuSequenceLogProbs.ChunkRows(3, 37, 63), "no row fits");
        // 32-bit indexing: a chunk never exceeds 2³¹−1 floats, whatever the scratch.
        long rows = GpuSequenceLogProbs.ChunkRows(1_000_000, 50_257, 1L << 40);
        Assert.That(rows * 50_304, Is.LessThanOrEqualTo(int.MaxValue));
    }
}
