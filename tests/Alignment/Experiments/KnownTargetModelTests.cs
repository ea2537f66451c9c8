using DistAlign.Alignment.Experiments;
using DistAlign.Alignment.Policies;
using DistAlign.Tests.Reference;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment.Experiments;

/// <summary>The tilted target π* ∝ π0·exp(w/τ): normalised, exact against an fp64 GPT, sampled exactly, π0 at τ = ∞.</summary>
public class KnownTargetModelTests
{
    internal static readonly GptConfig Tiny = new(Layers: 1, Heads: 2, Channels: 8, VocabSize: 17, MaxSequenceLength: 12);

    internal static Gpt TinyModel(int seed = 5)
    {
        var model = new Gpt(Tiny);
        model.InitializeGpt2((ulong)seed);
        var p = model.Parameters;
        var noise = Numerics.RandomFloats(p.Length, seed + 1, 0.4);
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        return model;
    }

    /// <summary>A tilt that matters: a few tokens pushed up or down by up to 2 nats at τ = 1.</summary>
    internal static float[] TinyWeights() => [0, 2f, 0, -1.5f, 0, 0, 1f, 0, 0, -2f, 0, 0.5f, 0, 0, 0, 1.5f, 0];

    private static readonly List<PromptResponse> Batch =
    [
        new([16, 3, 4], [5, 6]),
        new([16], [7, 8, 9, 10]),
        new([16, 1, 2, 3, 4, 5], [11, 12, 13]),
        new([16, 2], [1]),
    ];

    [Test]
    public void NextTokenDistributionSumsToOne()
    {
        using var model = TinyModel();
        var target = new TiltedTarget(model, TinyWeights(), temperature: 0.7);
        foreach (var prompt in new[] { new[] { 16 }, new[] { 16, 3, 9, 1 } })
        {
            var all = Enumerable.Range(0, Tiny.VocabSize).Select(v => new PromptResponse(prompt, [v])).ToList();
            var lp = new float[all.Count];
            target.Score(all, lp);
            double sum = lp.Sum(x => Math.Exp(x));
            Assert.That(sum, Is.EqualTo(1.0).Within(1e-5), $"Σ_v π*(v | {string.Join(",", prompt)})");
        }
    }

    [Test]
    public void LogProbsMatchTheFp64ReferenceTiltedByHand()
    {
        using var model = TinyModel();
        var reference = new ReferenceGpt(Tiny.Layers, Tiny.Heads, Tiny.Channels, Tiny.VocabSize, Tiny.MaxSequenceLength);
        foreach (var t in model.Layout.Tensors)
        {
            var dst = reference.Parameters[t.Name];
            for (int i = 0; i < dst.Length; i++) dst[i] = model.Parameters[(int)t.Offset + i];
        }
        var weights = TinyWeights();
        const double tau = 0.8;
        var target = new TiltedTarget(model, weights, tau);
        var lp = new float[PolicyScores.TokenCount(Batch)];
        var lp0 = new float[lp.Length];
        var entropy = new float[lp.Length];
        target.Score(Batch, lp, lp0, entropy);

        var expected = new List<double>();
        var expected0 = new List<double>();
        var expectedEntropy = new List<double>();
        foreach (var (prompt, response) in Batch)
        {
            int[] seq = [.. prompt, .. response];
            int len = seq.Length - 1;
            var logits = reference.Logits(seq[..len], Enumerable.Range(0, len).ToArray(), new int[len], 1, len);
            for (int i = 0; i < response.Length; i++)
            {
                int pos = prompt.Length - 1 + i, v = Tiny.VocabSize;
                var row = logits.AsSpan(pos * v, v).ToArray();
                var tilted = row.Select((l, k) => l + weights[k] / tau).ToArray();
                double z = Math.Log(tilted.Sum(Math.Exp)), z0 = Math.Log(row.Sum(Math.Exp));
                expected.Add(tilted[response[i]] - z);
                expected0.Add(row[response[i]] - z0);
                expectedEntropy.Add(-tilted.Sum(l => Math.Exp(l - z) * (l - z)));
            }
        }
        Numerics.AssertClose(lp, expected.ToArray(), 1e-4, 1e-4, "ln π*");
        Numerics.AssertClose(lp0, expected0.ToArray(), 1e-4, 1e-4, "ln π0");
        Numerics.AssertClose(entropy, expectedEntropy.ToArray(), 1e-4, 1e-4, "H(π*)");
    }

    [Test]
    public void SampledLogProbsEqualTheExactScores()
    {
        using var model = TinyModel();
        var target = new TiltedTarget(model, TinyWeights(), temperature: 0.5);
        var prompts = new List<int[]> { new[] { 16 }, new[] { 16, 4, 2 }, new[] { 3, 3, 3, 3, 3 } };
        var samples = target.Sample(prompts, new SamplingOptions(MaxNewTokens: 6, EndOfText: 16), seed: 9);
        var batch = prompts.Select((p, i) => new PromptResponse(p, samples[i].Tokens)).ToList();
        var lp = new float[PolicyScores.TokenCount(batch)];
        target.Score(batch, lp);
        var sampled = samples.SelectMany(s => s.LogProbs).ToArray();
        Numerics.AssertClose(sampled, Numerics.ToDouble(lp), 1e-4, 1e-4, "sampling log-probs vs Score");
        foreach (var s in samples) Assert.That(s.Tokens.Length is > 0 and <= 6 && (s.Tokens.Length == 6 || s.Ended), Is.True);
    }

    [Test]
    public void SamplingFrequenciesFollowTheTiltedDistribution()
    {
        using var model = TinyModel();
        var target = new TiltedTarget(model, TinyWeights(), temperature: 0.5);
        const int draws = 6000;
        var prompt = new[] { 16, 2 };
        var samples = target.Sample(Enumerable.Repeat(prompt, draws).ToList(), new SamplingOptions(MaxNewTokens: 1), seed: 3);
        var all = Enumerable.Range(0, Tiny.VocabSize).Select(v => new PromptResponse(prompt, [v])).ToList();
        var lp = new float[all.Count];
        target.Score(all, lp);
        var counts = new int[Tiny.VocabSize];
        foreach (var s in samples) counts[s.Tokens[0]]++;
        for (int v = 0; v < counts.Length; v++)
        {
            double p = Math.Exp(lp[v]);
            double sd = Math.Sqrt(p * (1 - p) / draws);
            Assert.That((double)counts[v] / draws, Is.EqualTo(p).Within(5 * sd + 1e-3), $"token {v}");
        }
        // And the tilt matters: π0's distribution is far from it somewhere.
        var policyLp = new float[all.Count];
        new GptPolicy(model, new AdamWSettings()).Score(all, policyLp);
        Assert.That(Enumerable.Range(0, lp.Length).Max(v => Math.Abs(lp[v] - policyLp[v])), Is.GreaterThan(0.5));
    }

    [Test]
    public void InfiniteTemperatureIsTheReferenceModel()
    {
        using var model = TinyModel();
        var target = new TiltedTarget(model, TinyWeights(), double.PositiveInfinity);
        var lp = new float[PolicyScores.TokenCount(Batch)];
        var lp0 = new float[lp.Length];
        target.Score(Batch, lp, lp0, default);
        var policy = new float[lp.Length];
        new GptPolicy(model, new AdamWSettings()).Score(Batch, policy);
        Numerics.AssertClose(lp, Numerics.ToDouble(lp0), 0, 0, "ln π* = ln π0 at τ = ∞");
        Numerics.AssertClose(lp, Numerics.ToDouble(policy), 2e-5, 2e-5, "ln π* vs the policy's fused LM head");
        var prompts = new List<int[]> { new[] { 16, 1 }, new[] { 16 } };
        var a = target.Sample(prompts, new SamplingOptions(5), seed: 4);
        var b = Sampler.Generate(model, prompts, new SamplingOptions(5), seed: 4);
        for (int r = 0; r < prompts.Count; r++) Assert.That(a[r].Tokens, Is.EqualTo(b[r].Tokens), "same draws as π0's sampler");
    }

    [Test]
    public void LexiconWeightsLandOnWholeWordTokens()
    {
        var tok = Gpt2Tokenizer.FromSpec("gpt2-k2000");
        var lexicon = ShippedData.VaderLexicon();
        var w = LexiconTilt.TokenWeights(tok, lexicon);
        int good = tok.Encode(" good").Single();
        Assert.That(w[good], Is.EqualTo(lexicon["good"]));
        int comma = tok.Encode(",").Single();
        Assert.That(w[comma], Is.Zero);
        Assert.That(w[tok.EndOfText], Is.Zero);
        int scored = w.Count(x => x != 0);
        TestContext.Out.WriteLine($"{scored} of {tok.VocabSize} tokens carry a lexicon score");
        Assert.That(scored, Is.GreaterThan(50));
    }

    [Test]
    public void BadInputsAreRefused()
    {
        using var model = TinyModel();
        Assert.Throws<ArgumentException>(() => new TiltedTarget(model, new float[3], 1));
        Assert.Throws<ArgumentException>(() => new TiltedTarget(model, TinyWeights(), 0));
        var target = new TiltedTarget(model, TinyWeights(), 1);
        Assert.Throws<ArgumentException>(() => target.Sample([new[] { 1 }], new SamplingOptions(3, Temperature: 0.5f), 1));
    }
}
