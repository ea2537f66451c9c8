using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using DistAlign.Tests.TestSupport;

namespace DistAlign.Tests.Kernels;

/// <summary>
/// The fused LM head against an fp64 reference: log-probs and entropies from h·Eᵀ, and gradients of
/// L = Σ a·logprob + Σ b·entropy with respect to h and E by finite differences.
/// </summary>
public class SequenceLogProbsTests
{
    [TestCase(1, 1, 1)]
    [TestCase(7, 5, 13)]
    [TestCase(19, 9, 37)]
    public void ForwardMatchesTheReference(int n, int c, int v)
    {
        var (h, e, targets) = Inputs(n, c, v, seed: n);
        var logProbs = new float[n];
        var lse = new float[n];
        var entropy = new float[n];
        var scratch = new float[SequenceLogProbs.ScratchLength(n, v)];
        SequenceLogProbs.Forward(h, e, targets, c, v, scratch, logProbs, lse, entropy);
        var (refLp, refEnt) = ReferenceSequenceLogProbs.Forward(Numerics.ToDouble(h), Numerics.ToDouble(e), targets, c, v);
        Numerics.AssertClose(logProbs, refLp, 1e-5, 1e-5, "log-probs");
        Numerics.AssertClose(entropy, refEnt, 1e-5, 1e-5, "entropy");
    }

    [Test]
    public void GradientsOfLogProbsAndEntropyMatchFiniteDifferences([Values] bool withEntropy, [Values] bool fused)
    {
        int n = 6, c = 5, v = 11;
        var (h, e, targets) = Inputs(n, c, v, seed: 3);
        var a = Numerics.RandomFloats(n, 4);
        var b = withEntropy ? Numerics.RandomFloats(n, 5) : [];
        var scratch = new float[SequenceLogProbs.ScratchLength(n, v)];
        var logProbs = new float[n];
        var lse = new float[n];
        var entropy = new float[n];
        var dh = Numerics.RandomFloats(n * c, 6); // pre-filled: the backward accumulates
        var de = Numerics.RandomFloats(v * c, 7);
        var dh0 = (float[])dh.Clone();
        var de0 = (float[])de.Clone();
        if (fused && !withEntropy)
            SequenceLogProbs.ForwardBackward(h, e, targets, c, v, a, default, scratch, logProbs, lse, default, dh, de);
        else
        {
            SequenceLogProbs.Forward(h, e, targets, c, v, scratch, logProbs, lse, withEntropy ? entropy : default);
            SequenceLogProbs.Backward(h, e, targets, c, v, lse, withEntropy ? entropy : default, a, b, scratch, dh, de);
        }

        var hd = Numerics.ToDouble(h);
        var ed = Numerics.ToDouble(e);
        double Loss()
        {
            var (lp, ent) = ReferenceSequenceLogProbs.Forward(hd, ed, targets, c, v);
            double l = 0;
            for (int i = 0; i < n; i++) l += a[i] * lp[i] + (withEntropy ? b[i] * ent[i] : 0);
            return l;
        }
        var gh = Numerics.FiniteDifferenceGradient(Loss, hd);
        var ge = Numerics.FiniteDifferenceGradient(Loss, ed);
        for (int i = 0; i < gh.Length; i++) gh[i] += dh0[i];
        for (int i = 0; i < ge.Length; i++) ge[i] += de0[i];
        Numerics.AssertClose(dh, gh, 2e-5, 1e-4, "d hidden");
        Numerics.AssertClose(de, ge, 2e-5, 1e-4, "d lm head");
    }

    [Test]
    public void ChunksDoNotChangeTheResult()
    {
        // V large enough that ChunkRows < N: several chunks.
        int v = 70_001, c = 3, n = SequenceLogProbs.ChunkRows(70_001) * 2 + 3;
        var (h, e, targets) = Inputs(n, c, v, seed: 9);
        var scratch = new float[SequenceLogProbs.ScratchLength(n, v)];
        Assert.That(scratch.Length, Is.LessThan((long)n * v), "the scratch must be smaller than the full logits");
        var lp = new float[n];
        var lse = new float[n];
        SequenceLogProbs.Forward(h, e, targets, c, v, scratch, lp, lse, default);
        var full = new float[(long)n * v];
        Gemm.Multiply(Transpose.No, Transpose.Yes, n, v, c, 1f, h, c, e, c, 0f, full, v);
        var lp2 = new float[n];
        var lse2 = new float[n];
        TargetLogProbs.Forward(full, targets, v, lp2, lse2);
        Assert.That(lp, Is.EqualTo(lp2));
    }

    [Test]
    public void EqualWeightsGiveBitIdenticalLogProbs()
    {
        var (h, e, targets) = Inputs(9, 7, 23, seed: 2);
        var e2 = (float[])e.Clone();
        float[] Run(float[] head)
        {
            var lp = new float[9];
            SequenceLogProbs.Forward(h, head, targets, 7, 23, new float[SequenceLogProbs.ScratchLength(9, 23)], lp, new float[9], default);
            return lp;
        }
        Assert.That(Run(e2), Is.EqualTo(Run(e)));
    }

    [Test]
    public void PerSequenceSumsMeansAndTheirBackward()
    {
        var values = new float[] { 1, 2, 3, 4, 5, 6 };
        var sequence = new[] { 0, 0, 1, 1, 1, -1 };
        var targets = new[] { -1, 7, 7, 7, 7, 7 };
        var sums = new float[2];
        var counts = new int[2];
        SequenceLogProbs.SumBySequence(values, sequence, targets, sums, counts);
        Assert.That(sums, Is.EqualTo(new float[] { 2, 12 }));
        Assert.That(counts, Is.EqualTo(new[] { 1, 3 }));
        var d = new float[6];
        SequenceLogProbs.ScatterBySequence([10f, 20f], [3f, 6f], counts, sequence, targets, d);
        Assert.That(d, Is.EqualTo(new float[] { 0, 13, 22, 22, 22, 0 }));
    }

    [Test]
    public void ExtremeLogitsStayFinite()
    {
        int n = 3, c = 2, v = 5;
        var h = new float[] { 1e2f, -1e2f, 5e1f, 5e1f, 0, 0 };
        var e = new float[] { 1e2f, 0, -1e2f, 0, 0, 1e2f, 0, -1e2f, 1, 1 };
        var targets = new[] { 0, 2, 4 };
        var lp = new float[n];
        var ent = new float[n];
        var lse = new float[n];
        var scratch = new float[SequenceLogProbs.ScratchLength(n, v)];
        SequenceLogProbs.Forward(h, e, targets, c, v, scratch, lp, lse, ent);
        var dh = new float[n * c];
        var de = new float[v * c];
        SequenceLogProbs.Backward(h, e, targets, c, v, lse, ent, [1, 1, 1], [1, 1, 1], scratch, dh, de);
        Assert.That(lp.Concat(ent).Concat(dh).Concat(de), Has.All.Matches<float>(float.IsFinite));
    }

    private static (float[] H, float[] E, int[] Targets) Inputs(int n, int c, int v, int seed)
    {
        var h = Numerics.RandomFloats(n * c, seed, 1.0);
        var e = Numerics.RandomFloats(v * c, seed + 100, 1.0);
        var rng = new Random(seed);
        var targets = Enumerable.Range(0, n).Select(i => i % 4 == 3 ? -1 : rng.Next(v)).ToArray();
        return (h, e, targets);
    }
}
