using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment;

/// <summary>The GPT as a policy: packed scoring equals scoring each sequence alone, and its gradients are right.</summary>
public class GptPolicyTests
{
    private static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 8, VocabSize: 17, MaxSequenceLength: 12);

    private static GptPolicy MakePolicy()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(5);
        var p = model.Parameters;
        var noise = Numerics.RandomFloats(p.Length, 6, 0.3);
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        return new GptPolicy(model, new AdamWSettings(WeightDecay: 0), ownsModel: true);
    }

    private static readonly List<PromptResponse> Batch =
    [
        new([16, 3, 4], [5, 6]),
        new([16], [7, 8, 9, 10]),
        new([16, 1, 2, 3, 4, 5], [11, 12, 13]),   // 8 positions: does not fit after the others, starts a new row
        new([16, 2], [1]),
    ];

    [Test]
    public void PackedScoresEqualEachSequenceScoredAlone()
    {
        using var policy = MakePolicy();
        var packed = new float[PolicyScores.TokenCount(Batch)];
        var entropies = new float[packed.Length];
        policy.Score(Batch, packed, entropies);
        int at = 0;
        foreach (var s in Batch)
        {
            var alone = new float[s.Response.Length];
            var aloneEntropy = new float[s.Response.Length];
            policy.Score([s], alone, aloneEntropy);
            Numerics.AssertClose(packed.AsSpan(at, alone.Length), Numerics.ToDouble(alone), 1e-5, 1e-5, "log-probs");
            Numerics.AssertClose(entropies.AsSpan(at, alone.Length), Numerics.ToDouble(aloneEntropy), 1e-5, 1e-5, "entropies");
            at += alone.Length;
        }
    }

    [Test]
    public void SequenceLogProbGradientMatchesFiniteDifferences()
    {
        using var policy = MakePolicy();
        var weights = new float[] { 0.7f, -1.1f, 0.4f, 2.0f };
        var tokens = new float[PolicyScores.TokenCount(Batch)];
        policy.ZeroGradients();
        policy.Score(Batch, tokens);
        var dTokens = new float[tokens.Length];
        PolicyScores.ScatterPerSequence(Batch, weights, dTokens);
        policy.Backward(dTokens);
        var analytic = policy.Model.Gradients.ToArray();

        double Loss()
        {
            var t = new float[tokens.Length];
            policy.Score(Batch, t);
            var sums = new float[Batch.Count];
            PolicyScores.SumPerSequence(Batch, t, sums, default);
            double l = 0;
            for (int s = 0; s < sums.Length; s++) l += weights[s] * (double)sums[s];
            return l;
        }
        // fp32 model: central differences with a step that dwarfs rounding, on a spread of parameters.
        Numerics.AssertSampledGradient(policy.Model.Parameters, analytic, Loss, samples: 40, seed: 3);
    }

    [Test]
    public void DpoOnTheGptStartsAtLn2AndImprovesTheMargin()
    {
        using var policy = MakePolicy();
        using var reference = policy.Snapshot();
        var pairs = new List<PreferencePair>
        {
            new([16, 3], [5, 6, 7], [8, 9]),
            new([16, 4, 4], [1, 2], [3]),
            new([16], [10, 11], [12, 13, 14]),
        };
        var refLogps = OfflinePreferenceObjective.ReferenceLogProbs(reference, pairs);
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.5));
        policy.ZeroGradients();
        var first = objective.Accumulate(policy, pairs, refLogps, null, 1);
        Assert.That((float)first.Pairwise.Loss, Is.EqualTo((float)Math.Log(2)), "π = π0 at step 0: the same kernel scores both");
        Assert.That(first.Pairwise.RewardsMargins, Is.EqualTo(0));
        policy.OptimizerStep(1, 1e-2f);
        OfflineStepMetrics last = first;
        for (int step = 2; step <= 20; step++)
        {
            policy.ZeroGradients();
            last = objective.Accumulate(policy, pairs, refLogps, null, (ulong)step);
            policy.OptimizerStep(step, 1e-2f);
        }
        Assert.That(last.Pairwise.Loss, Is.LessThan(first.Pairwise.Loss * 0.8));
        Assert.That(last.Pairwise.RewardsMargins, Is.GreaterThan(0));
        Assert.That(last.Pairwise.RewardsAccuracies, Is.EqualTo(1.0));
    }

    [Test]
    public void PmleWithKlRunsOnTheGpt()
    {
        using var policy = MakePolicy();
        using var reference = policy.Snapshot();
        var pairs = new List<PreferencePair> { new([16, 3], [5, 6], [8, 9]), new([16, 4], [1, 2], [3]) };
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: 0.5),
            new KlRegularizer(0.1, SamplesPerPrompt: 2, MaxNewTokens: 4, EndOfText: 16));
        policy.ZeroGradients();
        var m = objective.Accumulate(policy, pairs, [], reference, 7);
        Assert.That(m.KlEstimate, Is.EqualTo(0).Within(1e-5), "π = π0: every f_i is 0");
        Assert.That(double.IsFinite(policy.ClipGradients(1f)));
    }

    [Test]
    public void SequencesThatDoNotFitTheContextAreRejected()
    {
        using var policy = MakePolicy();
        var tooLong = new List<PromptResponse> { new(new int[8], new int[6]) };
        Assert.Throws<ArgumentException>(() => policy.Score(tooLong, new float[6]));
        Assert.Throws<ArgumentException>(() => policy.Score([new PromptResponse([], [1])], new float[1]));
    }
}
