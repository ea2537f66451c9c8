using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;

using static DistAlign.Tests.Alignment.TabularFixtures;

namespace DistAlign.Tests.Alignment;

/// <summary>Preference distillation and REBEL on the tabular policy with a known reward.</summary>
public class OnPolicyObjectiveTests
{
    [TestCase(PairSource.Policy)]
    [TestCase(PairSource.Reference)]
    public void DistillationWithoutKlConvergesToExpRewardOverGamma(PairSource source)
    {
        const double gamma = 0.5;
        var r = Reward();
        using var policy = Initial();
        using var pi0 = policy.Snapshot();
        var objective = new OnPolicyPreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: gamma),
            new KnownReward(r), new SamplingOptions(1), source: source);
        var prompts = Prompts(200);
        for (int step = 1; step <= 800; step++)
        {
            policy.ZeroGradients();
            objective.Accumulate(policy, pi0, prompts, (ulong)step);
            policy.OptimizerStep(step, step < 600 ? 0.03f : 0.005f);
        }
        double worst = 0;
        for (int x = 0; x < Contexts; x++)
        {
            var p = policy.Probabilities(x);
            var target = Enumerable.Range(0, Responses).Select(y => Math.Exp(r[x, y] / gamma)).ToArray();
            double z = target.Sum();
            for (int y = 0; y < Responses; y++) worst = Math.Max(worst, Math.Abs(p[y] - target[y] / z));
        }
        TestContext.Out.WriteLine($"pairs from {source}: max |π − softmax(R/γ)| = {worst:E2}");
        Assert.That(worst, Is.LessThan(0.03));
    }

    [Test]
    public void RebelRaisesTheExpectedRewardTowardItsMaximum()
    {
        var r = Reward();
        using var policy = Initial();
        double ExpectedReward()
        {
            double e = 0;
            for (int x = 0; x < Contexts; x++)
            {
                var p = policy.Probabilities(x);
                for (int y = 0; y < Responses; y++) e += p[y] * r[x, y];
            }
            return e / Contexts;
        }
        double best = Enumerable.Range(0, Contexts).Average(x => Enumerable.Range(0, Responses).Max(y => r[x, y]));
        double before = ExpectedReward();
        var objective = new OnPolicyPreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Rebel, Eta: 1.0),
            new KnownReward(r), new SamplingOptions(1));
        var prompts = Prompts(64);
        OnPolicyStepMetrics first = null!;
        for (int step = 1; step <= 300; step++)
        {
            policy.ZeroGradients();
            var m = objective.Accumulate(policy, null, prompts, (ulong)step);
            if (step == 1) first = m;
            policy.OptimizerStep(step, 0.05f);
        }
        double after = ExpectedReward();
        TestContext.Out.WriteLine($"E[R]: {before:F3} → {after:F3} (max {best:F3})");
        Assert.That(first.Pairwise.RegressionError, Is.GreaterThan(0), "the anchor equals the policy at the start: only −ηΔR remains");
        Assert.That(after - before, Is.GreaterThan(0.8 * (best - before)));
    }

    [Test]
    public void DistillationWithTheKlTermStaysCloserToTheReference()
    {
        const double gamma = 0.5;
        var r = Reward();
        double Run(double beta)
        {
            using var policy = Initial();
            using var pi0 = (TabularPolicy)policy.Snapshot();
            var objective = new OnPolicyPreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: gamma),
                new KnownReward(r), new SamplingOptions(1), new KlRegularizer(beta, SamplesPerPrompt: 4, MaxNewTokens: 1));
            var prompts = Prompts(50);
            for (int step = 1; step <= 300; step++)
            {
                policy.ZeroGradients();
                objective.Accumulate(policy, pi0, prompts, (ulong)step);
                policy.OptimizerStep(step, 0.03f);
            }
            double kl = 0;
            for (int x = 0; x < Contexts; x++)
            {
                var a = policy.Probabilities(x);
                var b = pi0.Probabilities(x);
                for (int y = 0; y < Responses; y++) kl += a[y] * Math.Log(a[y] / b[y]);
            }
            return kl / Contexts;
        }
        double free = Run(0), regularised = Run(1.0);
        TestContext.Out.WriteLine($"KL(π‖π0): β = 0 → {free:F4}, β = 1 → {regularised:F4}");
        Assert.That(regularised, Is.LessThan(0.7 * free));
    }

    [Test]
    public void MisconfigurationsAreRefused()
    {
        var reward = new KnownReward(Reward());
        Assert.Throws<ArgumentException>(() => new OnPolicyPreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid), reward, new SamplingOptions(1)));
        Assert.Throws<ArgumentException>(() => new OnPolicyPreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Rebel), reward, new SamplingOptions(1), source: PairSource.Reference));
        Assert.Throws<ArgumentException>(() => new OnPolicyPreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Distillation), reward, new SamplingOptions(0)));
    }
}
