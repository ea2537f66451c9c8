using DistAlign.Alignment.Experiments;
using DistAlign.Alignment.Policies;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment.Experiments;

/// <summary>The task (pairs from π0 labelled by P*) and the evaluator, on a tiny GPT where the answers are known.</summary>
public class KnownTargetEvaluatorTests
{
    private static KnownTargetTask MakeTask(Gpt model, double gamma = 1.0) =>
        new(new TiltedTarget(model, KnownTargetModelTests.TinyWeights(), temperature: 0.5),
            new KnownTargetSettings { Gamma = gamma, ResponseTokens = 5, TrainPrompts = 3, EvalPrompts = 4 },
            [[16, 1], [16, 2], [7]], [[16, 3], [16, 4], [5, 6], [9]], endOfText: 16);

    [Test]
    public void TheReferenceHasNoKlToItselfAndTheTargetsForwardKl()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var task = MakeTask(model);
        var evaluator = new KnownTargetEvaluator(task, samplesPerPrompt: 64, seed: 1);
        using var pi0 = new GptPolicy(model, new AdamWSettings());
        var e = evaluator.Evaluate(new PolicyResponseModel(pi0));
        Assert.That(e.KlToReference.Mean, Is.EqualTo(0).Within(1e-4), "KL(π0 ‖ π0)");
        var (targetKl, _) = task.TargetKl(samplesPerPrompt: 64, seed: 7);
        TestContext.Out.WriteLine($"KL(π*‖π0): evaluator {e.ForwardKl}, TargetKl {targetKl}; reverse {e.ReverseKl}; win {e.WinRate}");
        Assert.That(e.ForwardKl.Mean, Is.GreaterThan(0.1));
        Assert.That(Math.Abs(e.ForwardKl.Mean - targetKl.Mean),
            Is.LessThan(4 * Math.Sqrt(e.ForwardKl.StandardError * e.ForwardKl.StandardError + targetKl.StandardError * targetKl.StandardError)),
            "two independent estimates of KL(π* ‖ π0) agree within their standard errors");
        Assert.That(e.ReverseKl.Mean, Is.GreaterThan(0));
        Assert.That(e.WinRate.Mean, Is.EqualTo(0.5).Within(4 * e.WinRate.StandardError + 1e-3), "π0 against π0");
        Assert.That(e.TokenEntropy, Is.GreaterThan(0).And.LessThan(Math.Log(17)));
        Assert.That(e.Distinct1, Is.GreaterThan(0).And.LessThanOrEqualTo(1));
    }

    [Test]
    public void TheTargetItselfHasZeroKlAndBeatsTheReference()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var task = MakeTask(model);
        var evaluator = new KnownTargetEvaluator(task, samplesPerPrompt: 64, seed: 1);
        var e = evaluator.Evaluate(task.Target);
        Assert.That(e.ForwardKl.Mean, Is.EqualTo(0).Within(1e-6), "KL(π* ‖ π*) forward");
        Assert.That(e.ReverseKl.Mean, Is.EqualTo(0).Within(1e-6), "KL(π* ‖ π*) reverse");
        Assert.That(e.KlToReference.Mean, Is.GreaterThan(0.1));
        Assert.That(e.WinRate.Mean, Is.GreaterThan(0.5 + 2 * e.WinRate.StandardError), "π* beats π0 under P*");
        using var pi0 = new GptPolicy(model, new AdamWSettings());
        var e0 = evaluator.Evaluate(new PolicyResponseModel(pi0));
        Assert.That(e.LexiconReward.Mean, Is.GreaterThan(e0.LexiconReward.Mean), "tilting toward w raises the lexicon reward");
    }

    [Test]
    public void StandardErrorShrinksLikeOneOverRootSamples()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var task = MakeTask(model);
        using var pi0 = new GptPolicy(model, new AdamWSettings());
        var small = new KnownTargetEvaluator(task, samplesPerPrompt: 8, seed: 2).Evaluate(new PolicyResponseModel(pi0));
        var large = new KnownTargetEvaluator(task, samplesPerPrompt: 128, seed: 3).Evaluate(new PolicyResponseModel(pi0));
        double ratio = small.ForwardKl.StandardError / large.ForwardKl.StandardError;
        TestContext.Out.WriteLine($"forward KL: 32 samples {small.ForwardKl}, 512 samples {large.ForwardKl}, SE ratio {ratio:F2} (√16 = 4)");
        Assert.That(ratio, Is.InRange(2.0, 8.0));
        Assert.That(small.ForwardKl.Count, Is.EqualTo(32));
        Assert.That(Math.Abs(small.ForwardKl.Mean - large.ForwardKl.Mean), Is.LessThan(4 * small.ForwardKl.StandardError));
    }

    [Test]
    public void PairsAreLabelledByTheTruePreferenceModel()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var task = MakeTask(model, gamma: 1.0);
        var drawn = task.DrawPairs(3000, seed: 4);
        Assert.That(drawn.Pairs, Has.Count.EqualTo(3000));
        Assert.That(drawn.MeanLabelMargin, Is.InRange(0.0, 0.5));
        // With labels ~ Bernoulli(P*), the preferred response has the higher ln π* with probability ½ + E|P* − ½|.
        Assert.That(drawn.AgreementWithTarget, Is.EqualTo(0.5 + drawn.MeanLabelMargin).Within(4 * Math.Sqrt(0.25 / 3000)));
        Assert.That(drawn.Pairs[0].Prompt, Is.EqualTo(new[] { 16, 1 }));
        Assert.That(drawn.Pairs[1].Prompt, Is.EqualTo(new[] { 16, 2 }));
        var sharper = MakeTask(model, gamma: 20).DrawPairs(500, seed: 4);
        Assert.That(sharper.MeanLabelMargin, Is.GreaterThan(drawn.MeanLabelMargin), "a larger γ gives labels further from coin flips");
        Assert.That(task.DrawPairs(50, seed: 4).Pairs.Select(p => p.Chosen), Is.EqualTo(drawn.Pairs.Take(50).Select(p => p.Chosen)), "deterministic in the seed");
    }

    [Test]
    public void DistinctCountsNGramsWithinResponses()
    {
        var s = new List<PromptResponse> { new([1], [5, 6, 5, 6]), new([1], [5, 7]) };
        Assert.That(KnownTargetEvaluator.Distinct(s, 1), Is.EqualTo(3.0 / 6));
        Assert.That(KnownTargetEvaluator.Distinct(s, 2), Is.EqualTo(3.0 / 4));   // (5,6) (6,5) (5,7)
    }
}
