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
/// kernel, several chunks (explicit small chunk sizes: the simulator cannot afford a vocabulary big enough for
/// <see cref="SequenceLogProbs.ChunkRows"/> to split a small batch), the fused path equal to forward + backward,
/// bit-identical reruns, extreme logits, and the per-sequence sum/scatter.
/// Tolerances: fp32 against fp64 as in the CPU tests (log-probs/entropies 1e-5 abs + 1e-5 rel; gradients
/// 2e-5 abs + 1e-4 rel, the finite-difference noise included); against the CPU kernel 1e-5 abs + 1e-4 rel
/// (both fp32, different summation orders and exp implementations).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuSequenceLogProbsTests(string backend) : GpuFixture(backend)
{
    private enum Mode { ForwardOnly, Separate, Fused }

    private sealed record Result(float[] LogProbs, float[] Lse, float[] Entropy, float[] DHidden, float[] DLmHead);

    /// <summary>Runs the GPU op; chunkRows 0 = the public overloads (ChunkRows(V) rows per chunk).</summary>
    private static Result Run(float[] h, float[] e, int[] targets, int c, int v, Mode mode, bool withEntropy, float[] a, float[]? b,
                              float[] dh0, float[] de0, int chunkRows = 0)
    {
        int n = targets.Length;
        var op = Ops.SequenceLogProbs;
        long scratchLength = chunkRows == 0 ? SequenceLogProbs.ScratchLength(n, v) : (long)Math.Min(Math.Max(n, 1), chunkRows) * v;
        using var dh = Up(h);
        using var de = Up(e);
        using var dt = Up(targets);
        using var scratch = Up(new float[scratchLength]);
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
            case (Mode.Fused, _): op.ForwardBackward(H, E, T, c, v, A, B, S, Lp, Lse, Ent, GH, GE, chunkRows); break;
            case (_, 0):
                op.Forward(H, E, T, c, v, S, Lp, Lse, Ent);
                if (mode == Mode.Separate) op.Backward(H, E, T, c, v, Lse, Ent, A, B, S, GH, GE);
                break;
            default:
                op.Forward(H, E, T, c, v, S, Lp, Lse, Ent, chunkRows);
                if (mode == Mode.Separate) op.Backward(H, E, T, c, v, Lse, Ent, A, B, S, GH, GE, chunkRows);
                break;
        }
        return new Result(Down(lp, n), Down(lse, n), withEntropy ? Down(ent, n) : [], Down(gh, dh0.Length), Down(ge, de0.Length));
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
        Assert.That(SequenceLogProbs.ChunkRows(v), Is.GreaterThanOrEqualTo(n), "the public op runs this in one chunk");
        var whole = Run(h, e, targets, c, v, Mode.Separate, true, a, b, dh0, de0);
        foreach (int chunk in new[] { 1, 3, 7 })
        {
            var r = Run(h, e, targets, c, v, Mode.Separate, true, a, b, dh0, de0, chunk);
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
        int n = 5, c = 3, v = 7;
        using var buf = Up(new float[64]);
        using var ints = Up(new int[n]);
        ArrayView<float> F(int length) => V(buf, length);
        var op = Ops.SequenceLogProbs;
        var t = V(ints, n);
        Assert.Throws<ArgumentException>(() => op.Forward(F(n * c), F(v * c), t, c, v, F(n * v - 1), F(n), F(n), default), "scratch too small");
        Assert.Throws<ArgumentException>(() => op.Forward(F(n * c - 1), F(v * c), t, c, v, F(n * v), F(n), F(n), default), "hidden");
        Assert.Throws<ArgumentException>(() => op.Forward(F(n * c), F(v * c), t, c, v, F(n * v), F(n), F(n), F(n - 1)), "entropy");
        Assert.Throws<ArgumentOutOfRangeException>(() => op.Forward(F(0), F(0), t, 0, v, F(n * v), F(n), F(n), default), "channels");
        Assert.Throws<ArgumentException>(() => op.Backward(F(n * c), F(v * c), t, c, v, F(n), default, F(n), F(n), F(n * v), F(n * c), F(v * c)),
                                         "dEntropy without the forward's entropies");
        Assert.Throws<ArgumentException>(() => op.Backward(F(n * c), F(v * c), t, c, v, F(n), F(n), F(n), default, F(n * v), F(n * c), F(v * c - 1)),
                                         "dLmHead");
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

    private static (float[] H, float[] E, int[] Targets) Inputs(int n, int c, int v, int seed)
    {
        var h = RandomFloats(n * c, seed, 1.0);
        var e = RandomFloats(v * c, seed + 100, 1.0);
        var rng = new Random(seed);
        var targets = Enumerable.Range(0, n).Select(i => i % 4 == 3 ? TargetLogProbs.Ignored : rng.Next(v)).ToArray();
        return (h, e, targets);
    }
}
