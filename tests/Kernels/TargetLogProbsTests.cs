using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

public class TargetLogProbsTests
{
    private static int[] Targets(int n, int vocab, int seed)
    {
        var t = RandomInts(n, vocab, seed);
        for (int i = 2; i < n; i += 3) t[i] = TargetLogProbs.Ignored;
        return t;
    }

    [Test]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        const int n = 4, vocab = 7;
        var logits = D(RandomFloats(n * vocab, 1, 3.0));
        var targets = Targets(n, vocab, 2);
        var g = D(RandomFloats(n, 3));
        double Loss() => Dot(g, ReferenceTargetLogProbs.Forward(logits, targets, vocab).LogProbs);
        AssertClose(ReferenceTargetLogProbs.Backward(logits, targets, vocab, g), FiniteDifferenceGradient(Loss, logits), 1e-6, 1e-6, "dlogits");
    }

    [TestCase(0, 5)]
    [TestCase(1, 1)]
    [TestCase(3, 7)]
    [TestCase(5, 1030)]
    [TestCase(7, 3000)]   // crosses a 2048-entry chunk: the running max is rescaled
    [TestCase(4, 2053)]   // a last chunk of 5 entries: its one vector overlaps the chunk before
    [TestCase(3, 4195)]   // two chunk boundaries, a 99-entry last chunk (a partial vector)
    public void ForwardAndInPlaceBackwardMatchReference(int n, int vocab)
    {
        var logits = RandomFloats(n * vocab, 1, 4.0);
        // A late maximum forces the online pass to rescale its running sum.
        for (int i = 0; i < n; i++) logits[i * vocab + vocab - 1] += 20f;
        var targets = Targets(n, vocab, 2);
        var lp = new float[n];
        var lse = new float[n];
        TargetLogProbs.Forward(logits, targets, vocab, lp, lse);
        var r = ReferenceTargetLogProbs.Forward(D(logits), targets, vocab);
        AssertClose(lp, r.LogProbs, 1e-5, 1e-5, "logprob");
        AssertClose(lse, r.Lse, 1e-5, 1e-5, "logsumexp");

        var dlp = RandomFloats(n, 3);
        var expected = ReferenceTargetLogProbs.Backward(D(logits), targets, vocab, D(dlp));
        var buffer = (float[])logits.Clone();
        TargetLogProbs.Backward(buffer, targets, vocab, lse, dlp);
        AssertClose(buffer, expected, 1e-6, 1e-4, "dlogits (in place)");
    }

    /// <summary>
    /// The forward's sum uses a cheaper exp whose per-term error grows with |logit − max| (see
    /// TargetLogProbs.ExpOfNonPositive); the log-sum-exp must still be within a few 10⁻⁷ of fp64 over a full
    /// GPT-2 vocabulary, whatever the spread: flat rows (every term 1), uniform spreads from 1 to 40 nats,
    /// a one-hot row, a row whose weight sits 15 nats below the max (where the per-term error is largest
    /// among terms that still count), and a row at a large offset (|logit| ≈ 1e3).
    /// </summary>
    [Test]
    public void LogSumExpOverAFullVocabularyIsWithinAFewTenMillionthsOfFp64()
    {
        const int vocab = 50257;
        var rng = new Random(5);
        var rows = new List<float[]>
        {
            Enumerable.Repeat(0.25f, vocab).ToArray(),
            Enumerable.Range(0, vocab).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(),
            Enumerable.Range(0, vocab).Select(_ => (float)(rng.NextDouble() * 10 - 5)).ToArray(),
            Enumerable.Range(0, vocab).Select(_ => (float)(rng.NextDouble() * 40 - 20)).ToArray(),
            Enumerable.Range(0, vocab).Select(i => i == 777 ? 10f : -10f).ToArray(),
            Enumerable.Range(0, vocab).Select(i => i == 5 ? 15f : (float)(rng.NextDouble() * 0.01)).ToArray(),
            Enumerable.Range(0, vocab).Select(_ => (float)(1000 + rng.NextDouble() * 6 - 3)).ToArray(),
        };
        LogSumExpsWithinFp64(rows, vocab, i => i * 101 % vocab);
    }

    /// <summary>
    /// The forward over <paramref name="rows"/> (row i's target: <paramref name="target"/>(i)), each log-sum-exp held to fp64:
    /// fp32 holds ln Σ to half an ulp of |lse| at best (6e-8 relative), and 5e-7 absolute is allowed on top. Returns the lse.
    /// </summary>
    private static float[] LogSumExpsWithinFp64(List<float[]> rows, int vocab, Func<int, int> target)
    {
        var logits = rows.SelectMany(r => r).ToArray();
        int n = rows.Count;
        var targets = Enumerable.Range(0, n).Select(target).ToArray();
        var lse = new float[n];
        TargetLogProbs.Forward(logits, targets, vocab, new float[n], lse);
        var r = ReferenceTargetLogProbs.Forward(D(logits), targets, vocab);
        for (int i = 0; i < n; i++)
        {
            double allowed = 5e-7 + 1.2e-7 * Math.Abs(r.Lse[i]);
            Assert.That(Math.Abs(lse[i] - r.Lse[i]), Is.LessThanOrEqualTo(allowed), $"row {i}: lse {lse[i]} vs fp64 {r.Lse[i]}");
        }
        return lse;
    }

    /// <summary>
    /// The online pass sums each chunk under the running max and finds the chunk's max in the same loop: a max that rises a
    /// little per chunk is rescaled after the chunk, one that jumps past the headroom sends the chunk round again, and chunks
    /// of −∞ (a masked vocabulary) before any finite logit add nothing. Every case against fp64, as the full-vocabulary test.
    /// </summary>
    [Test]
    public void RisingMaximaAndMaskedChunksMatchFp64()
    {
        const int vocab = 50257;   // 25 chunks of 2048
        var rng = new Random(9);
        var rows = new List<float[]>
        {
            Enumerable.Range(0, vocab).Select(i => 30f * i / vocab).ToArray(),                                   // +1.2 per chunk
            Enumerable.Range(0, vocab).Select(i => 6f * (i / 2048) + (float)rng.NextDouble()).ToArray(),         // +6 per chunk
            Enumerable.Range(0, vocab).Select(i => i < 3 * 2048 + 5 ? float.NegativeInfinity : (float)(rng.NextDouble() * 2 - 1)).ToArray(),
            Enumerable.Range(0, vocab).Select(i => i == vocab - 3 ? 2.5f : float.NegativeInfinity).ToArray(),
            Enumerable.Range(0, vocab).Select(i => i == vocab - 1 ? 50f : (float)(rng.NextDouble() * 2 - 1)).ToArray(),
            Enumerable.Range(0, vocab).Select(i => i % 3 == 0 ? float.NegativeInfinity : (float)(rng.NextDouble() * 8 - 4)).ToArray(),
        };
        var lse = LogSumExpsWithinFp64(rows, vocab, i => vocab - 3 - i * 101);
        Assert.That(lse[3], Is.EqualTo(2.5f), "one finite logit among −∞: lse is that logit");

        var masked = Enumerable.Repeat(float.NegativeInfinity, vocab).ToArray();
        var maskedLse = new float[1];
        TargetLogProbs.Forward(masked, [TargetLogProbs.Ignored], vocab, new float[1], maskedLse);
        Assert.That(maskedLse[0], Is.EqualTo(float.NegativeInfinity), "a row of −∞ only: log 0");
    }

    [Test]
    public void HugeLogitsGiveFiniteLogProbsAndGradients()
    {
        const int n = 6, vocab = 50;
        var rng = new Random(1);
        var logits = Enumerable.Range(0, n * vocab).Select(_ => rng.Next(2) == 0 ? -1e4f : 1e4f).ToArray();
        for (int i = 0; i < vocab; i++) logits[i] = -1e4f;   // a row of all −1e4
        var targets = RandomInts(n, vocab, 2);
        var lp = new float[n];
        var lse = new float[n];
        TargetLogProbs.Forward(logits, targets, vocab, lp, lse);
        AssertAllFinite(lp, "logprob");
        var r = ReferenceTargetLogProbs.Forward(D(logits), targets, vocab);
        AssertClose(lp, r.LogProbs, 1e-2, 1e-6, "logprob");   // |logit| = 1e4: fp32 ulp ≈ 1e-3
        var dlp = RandomFloats(n, 3);
        var expected = ReferenceTargetLogProbs.Backward(D(logits), targets, vocab, D(dlp));
        TargetLogProbs.Backward(logits, targets, vocab, lse, dlp);
        AssertAllFinite(logits, "dlogits");
        AssertClose(logits, expected, 1e-4, 1e-3, "dlogits");
    }

    [Test]
    public void SingleTokenVocabularyHasLogProbZeroAndNoGradient()
    {
        float[] logits = [3f, -2f, 1e4f];
        int[] targets = [0, 0, TargetLogProbs.Ignored];
        var lp = new float[3];
        var lse = new float[3];
        TargetLogProbs.Forward(logits, targets, 1, lp, lse);
        Assert.That(lp, Is.All.EqualTo(0f));
        TargetLogProbs.Backward(logits, targets, 1, lse, [1f, -2f, 5f]);
        Assert.That(logits, Is.All.EqualTo(0f));
    }

    [Test]
    public void IgnoredRowsHaveZeroGradient()
    {
        const int n = 4, vocab = 9;
        var logits = RandomFloats(n * vocab, 1);
        int[] targets = [TargetLogProbs.Ignored, 3, TargetLogProbs.Ignored, 8];
        var lp = new float[n];
        var lse = new float[n];
        TargetLogProbs.Forward(logits, targets, vocab, lp, lse);
        Assert.That(lp[0], Is.EqualTo(0f));
        TargetLogProbs.Backward(logits, targets, vocab, lse, [1f, 1f, 1f, 1f]);
        Assert.That(logits[..vocab], Is.All.EqualTo(0f));
        Assert.That(logits[(2 * vocab)..(3 * vocab)], Is.All.EqualTo(0f));
        Assert.That(logits.AsSpan(vocab, vocab).ToArray().Sum(), Is.EqualTo(0f).Within(1e-6f), "softmax gradient rows sum to 0");
    }

    [Test]
    public void CrossEntropyLossIsMinusMeanOverKeptTokens()
    {
        float[] lp = [-1f, 0f, -3f, -2f];
        int[] targets = [4, TargetLogProbs.Ignored, 1, 0];
        var d = new float[4];
        float loss = TargetLogProbs.CrossEntropyLoss(lp, targets, d);
        Assert.That(loss, Is.EqualTo(2f).Within(1e-6f));
        Assert.That(d, Is.EqualTo(new[] { -1f / 3, 0f, -1f / 3, -1f / 3 }).Within(1e-7f));
        Assert.That(TargetLogProbs.CrossEntropyLoss([0f], [TargetLogProbs.Ignored], new float[1]), Is.EqualTo(0f));
    }

    [TestCase(5)]
    [TestCase(-2)]
    public void BadTargetsAreRejected(int target) =>
        Assert.That(() => TargetLogProbs.Forward(new float[10], [0, target], 5, new float[2], new float[2]),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("index 1"));

    [Test]
    public void ResultsDoNotDependOnThreadCount()
    {
        const int n = 7, vocab = 2100;
        var logits = RandomFloats(n * vocab, 1, 3.0);
        var targets = Targets(n, vocab, 2);
        var dlp = RandomFloats(n, 3);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
            WithThreads(threads, () =>
            {
                var lp = new float[n];
                var lse = new float[n];
                var buffer = (float[])logits.Clone();
                TargetLogProbs.Forward(buffer, targets, vocab, lp, lse);
                TargetLogProbs.Backward(buffer, targets, vocab, lse, dlp);
                var all = lp.Concat(lse).Concat(buffer).ToArray();
                if (first == null) first = all; else AssertBitIdentical(first, all, $"{threads} threads");
            });
    }
}
