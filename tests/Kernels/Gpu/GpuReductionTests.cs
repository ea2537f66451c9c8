using DistAlign.Kernels.Gpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.Gpu.GpuTest;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// Ops with group reductions (LayerNorm, target log-probs, gradient norm) and AdamW on the CPU simulator.
/// Tolerances are the CPU tests' (fp32 against fp64 references).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuReductionTests(string backend) : GpuFixture(backend)
{
    [Test]
    public void TheSimulatorReducesWithSeveralThreadsPerGroup()
    {
        int size = GpuLaunch.ReductionGroupSize(Accelerator);
        TestContext.Out.WriteLine($"CPU simulator: {Accelerator.MaxNumThreadsPerGroup} threads per group max, reductions use {size}");
        Assert.That(size, Is.GreaterThanOrEqualTo(4), "the reduction trees must be exercised with more than one thread");
    }

    [TestCase(0, 3)]
    [TestCase(1, 1)]
    [TestCase(4, 3)]
    [TestCase(5, 13)]
    [TestCase(7, 77)]
    [TestCase(3, 300)]   // more channels than threads in a group: strided per-thread partials
    public void LayerNormForwardAndAccumulatingBackwardMatchReference(int n, int c)
    {
        var x = RandomFloats(n * c, 1, 2.0);
        for (int i = 0; i < x.Length; i++) x[i] += 3f;   // a non-zero mean
        var w = RandomFloats(c, 2);
        var b = RandomFloats(c, 3);
        using var dx = Up(x);
        using var dw = Up(w);
        using var db = Up(b);
        using var dout = Up(new float[n * c]);
        using var dmean = Up(new float[n]);
        using var drstd = Up(new float[n]);
        Ops.LayerNorm.Forward(V(dx, x), V(dw, w), V(db, b), V(dout, n * c), V(dmean, n), V(drstd, n));
        var r = ReferenceLayerNorm.Forward(D(x), D(w), D(b));
        AssertClose(Down(dout, n * c), r.Out, 1e-5, 1e-4, "out");
        AssertClose(Down(dmean, n), r.Mean, 1e-6, 1e-5, "mean");
        AssertClose(Down(drstd, n), r.Rstd, 1e-6, 1e-4, "rstd");

        var g = RandomFloats(n * c, 4);
        var gxBefore = RandomFloats(n * c, 5);
        var gwBefore = RandomFloats(c, 6);
        var gbBefore = RandomFloats(c, 7);
        var (rdx, rdw, rdb) = ReferenceLayerNorm.Backward(D(g), D(x), D(w));
        float[] RunBackward()
        {
            using var dg = Up(g);
            using var gx = Up(gxBefore);
            using var gw = Up(gwBefore);
            using var gb = Up(gbBefore);
            Ops.LayerNorm.Backward(V(dg, g), V(dx, x), V(dw, w), V(dmean, n), V(drstd, n), V(gx, n * c), V(gw, c), V(gb, c));
            var gxOut = Down(gx, n * c);
            var gwOut = Down(gw, c);
            var gbOut = Down(gb, c);
            AssertClose(gxOut, Plus(gxBefore, rdx), 2e-5, 1e-4, "dx (accumulated)");
            AssertClose(gwOut, Plus(gwBefore, rdw), 2e-5, 1e-4, "dw (accumulated)");
            AssertClose(gbOut, Plus(gbBefore, rdb), 2e-5, 1e-4, "db (accumulated)");
            return [.. gxOut, .. gwOut, .. gbOut];
        }
        AssertBitIdentical(RunBackward(), RunBackward(), "layernorm backward rerun");
    }

    [TestCase(0, 5)]
    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(5, 1030)]   // many entries per thread, late maximum: the online sums are rescaled
    [TestCase(4, 1088)]   // a multiple of 4 × the simulator's 16 threads: every value, the late maximum too, in the four-value loop
    public void TargetLogProbsForwardAndInPlaceBackwardMatchReference(int n, int vocab)
    {
        var logits = RandomFloats(n * vocab, 1, 4.0);
        for (int i = 0; i < n; i++) logits[i * vocab + vocab - 1] += 20f;
        var targets = RandomInts(n, vocab, 2);
        if (n > 2) targets[1] = DistAlign.Kernels.Cpu.TargetLogProbs.Ignored;
        var dlp = RandomFloats(n, 3);
        var (lp, lse, grad) = RunTargetLogProbs(logits, targets, vocab, dlp);
        var r = ReferenceTargetLogProbs.Forward(D(logits), targets, vocab);
        AssertClose(lp, r.LogProbs, 1e-5, 1e-5, "logprob");
        AssertClose(lse, r.Lse, 1e-5, 1e-5, "logsumexp");
        AssertClose(grad, ReferenceTargetLogProbs.Backward(D(logits), targets, vocab, D(dlp)), 1e-6, 1e-4, "dlogits (in place)");
        var again = RunTargetLogProbs(logits, targets, vocab, dlp);
        AssertBitIdentical(lse, again.Lse, "logsumexp rerun");
        AssertBitIdentical(grad, again.Grad, "dlogits rerun");
    }

    [Test]
    public void HugeLogitsGiveFiniteLogProbsAndGradients()
    {
        const int n = 6, vocab = 50;
        var rng = new Random(1);
        var logits = Enumerable.Range(0, n * vocab).Select(_ => rng.Next(2) == 0 ? -1e4f : 1e4f).ToArray();
        for (int i = 0; i < vocab; i++) logits[i] = -1e4f;   // a row of all −1e4
        var targets = RandomInts(n, vocab, 2);
        var dlp = RandomFloats(n, 3);
        var (lp, _, grad) = RunTargetLogProbs(logits, targets, vocab, dlp);
        AssertAllFinite(lp, "logprob");
        AssertClose(lp, ReferenceTargetLogProbs.Forward(D(logits), targets, vocab).LogProbs, 1e-2, 1e-6, "logprob");   // fp32 ulp at 1e4 ≈ 1e-3
        AssertAllFinite(grad, "dlogits");
        AssertClose(grad, ReferenceTargetLogProbs.Backward(D(logits), targets, vocab, D(dlp)), 1e-4, 1e-3, "dlogits");
    }

    [TestCase(0, 5, 8)]
    [TestCase(1, 1, 64)]
    [TestCase(4, 37, 40)]
    [TestCase(3, 61, 64)]
    [TestCase(5, 1030, 1088)]
    public void TargetLogProbsWithARowStrideEqualUnpaddedAndLeaveThePaddingAlone(int n, int vocab, int stride)
    {
        var logits = RandomFloats(n * vocab, 4, 4.0);
        var targets = RandomInts(n, vocab, 5);
        if (n > 2) targets[1] = DistAlign.Kernels.Cpu.TargetLogProbs.Ignored;
        var dlp = RandomFloats(n, 6);
        var unpadded = RunTargetLogProbs(logits, targets, vocab, dlp);
        var padded = new float[n * stride];
        Array.Fill(padded, float.NaN);   // the padding: NaN if it were ever read as data, and must stay NaN (never written)
        for (int r = 0; r < n; r++) Array.Copy(logits, r * vocab, padded, r * stride, vocab);

        using var dl = Up(padded);
        using var dt = Up(targets);
        using var dlpOut = Up(new float[n]);
        using var dlse = Up(new float[n]);
        using var dg = Up(dlp);
        Ops.TargetLogProbs.Forward(V(dl, padded), V(dt, n), vocab, stride, V(dlpOut, n), V(dlse, n));
        AssertBitIdentical(unpadded.Lp, Down(dlpOut, n), "logprob, padded vs unpadded");
        AssertBitIdentical(unpadded.Lse, Down(dlse, n), "logsumexp, padded vs unpadded");
        Ops.TargetLogProbs.Backward(V(dl, padded), V(dt, n), vocab, stride, V(dlse, n), V(dg, n));
        var grad = Down(dl, padded.Length);
        for (int r = 0; r < n; r++)
        {
            AssertBitIdentical(unpadded.Grad[(r * vocab)..((r + 1) * vocab)], grad[(r * stride)..(r * stride + vocab)], $"dlogits row {r}");
            Assert.That(grad[(r * stride + vocab)..((r + 1) * stride)].All(float.IsNaN), $"row {r}'s padding was written");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.TargetLogProbs.Forward(V(dl, padded), V(dt, n), vocab, vocab - 1, V(dlpOut, n), V(dlse, n)),
                                                   "stride below V");
        if (n > 0)
            Assert.Throws<ArgumentException>(() => Ops.TargetLogProbs.Forward(V(dl, padded.Length - 1), V(dt, n), vocab, stride, V(dlpOut, n), V(dlse, n)),
                                             "logits shorter than [N, stride]");
    }

    private static (float[] Lp, float[] Lse, float[] Grad) RunTargetLogProbs(float[] logits, int[] targets, int vocab, float[] dlp)
    {
        int n = targets.Length;
        using var dl = Up(logits);
        using var dt = Up(targets);
        using var dlpOut = Up(new float[n]);
        using var dlse = Up(new float[n]);
        using var dg = Up(dlp);
        Ops.TargetLogProbs.Forward(V(dl, logits), V(dt, n), vocab, V(dlpOut, n), V(dlse, n));
        var lp = Down(dlpOut, n);
        var lse = Down(dlse, n);
        Ops.TargetLogProbs.Backward(V(dl, logits), V(dt, n), vocab, V(dlse, n), V(dg, n));
        return (lp, lse, Down(dl, logits.Length));
    }

    [TestCase(0, 0.0f)]
    [TestCase(1, 0.1f)]
    [TestCase(77, 0.01f)]
    public void AdamWStepsMatchReference(int n, float weightDecay)
    {
        const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
        var p = RandomFloats(n, 1);
        var rp = D(p);
        var rm = new double[n];
        var rv = new double[n];
        using var dp = Up(p);
        using var dm = Up(new float[n]);
        using var dv = Up(new float[n]);
        for (int t = 1; t <= 5; t++)
        {
            var g = RandomFloats(n, 10 + t);
            if (n > 0) g[0] = 0f;
            using var dg = Up(g);
            Ops.AdamW.Step(V(dp, n), V(dg, n), V(dm, n), V(dv, n), t, lr, beta1, beta2, eps, weightDecay);
            ReferenceAdamW.Step(rp, D(g), rm, rv, t, lr, beta1, beta2, eps, weightDecay);
            AssertClose(Down(dp, n), rp, 1e-6, 1e-5, $"p after step {t}");
            AssertClose(Down(dm, n), rm, 1e-7, 1e-5, $"m after step {t}");
            AssertClose(Down(dv, n), rv, 1e-7, 1e-5, $"v after step {t}");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.AdamW.Step(V(dp, n), V(dp, n), V(dm, n), V(dv, n), 0, lr));
    }

    [Test]
    public void GradientNormMatchesReferenceAndIsBitIdenticalRunToRun()
    {
        var a = RandomFloats(1001, 1);
        var b = RandomFloats(37, 2, 10.0);
        var empty = Array.Empty<float>();
        using var da = Up(a);
        using var db = Up(b);
        using var de = Up(empty);
        double norm = Ops.GradientNorm.GlobalNorm(V(da, a), V(db, b), V(de, 0));
        Assert.That(norm, Is.EqualTo(ReferenceGradientNorm.Norm(D(a), D(b))).Within(1e-12).Percent);
        double again = Ops.GradientNorm.GlobalNorm(V(da, a), V(db, b), V(de, 0));
        Assert.That(BitConverter.DoubleToInt64Bits(again), Is.EqualTo(BitConverter.DoubleToInt64Bits(norm)), "rerun");
        Assert.That(Ops.GradientNorm.GlobalNorm(), Is.EqualTo(0.0));
    }

    [TestCase(1.0f)]     // clips
    [TestCase(1e6f)]     // does not clip: scale 1, values unchanged
    public void ClipByGlobalNormScalesOnTheDevice(float maxNorm)
    {
        var a = RandomFloats(300, 1);
        var b = RandomFloats(17, 2);
        using var da = Up(a);
        using var db = Up(b);
        var clip = Ops.GradientNorm.ClipByGlobalNorm(maxNorm, V(da, a), V(db, b));
        double norm = ReferenceGradientNorm.Norm(D(a), D(b));
        double scale = ReferenceGradientNorm.ClipScale(norm, maxNorm);
        Assert.That(clip.Norm, Is.EqualTo(norm).Within(1e-10).Percent);
        Assert.That(clip.Scale, Is.EqualTo((float)scale).Within(1e-6).Percent);
        AssertClose(Down(da, a.Length), D(a).Select(x => x * scale).ToArray(), 1e-7, 1e-6, "a");
        AssertClose(Down(db, b.Length), D(b).Select(x => x * scale).ToArray(), 1e-7, 1e-6, "b");
        if (maxNorm > 1e5f) AssertBitIdentical(a, Down(da, a.Length), "unclipped values are unchanged");
    }

    [Test]
    public void NonFiniteGradientsLeaveTheScaleAtOne()
    {
        var a = RandomFloats(50, 1);
        a[7] = float.NaN;
        using var da = Up(a);
        var clip = Ops.GradientNorm.ClipByGlobalNorm(1f, V(da, a));
        Assert.That(clip.IsFinite, Is.False);
        Assert.That(clip.Scale, Is.EqualTo(1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.GradientNorm.ClipByGlobalNorm(0f, V(da, a)));
    }
}
