using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;

using static DistAlign.Tests.Alignment.TabularFixtures;

namespace DistAlign.Tests.Alignment;

/// <summary>
/// The offline objectives on the tabular policy, where their optima have closed forms: with preferences
/// P(a ≻ b | x) = σ(R(x,a) − R(x,b)), the preference MLE (γ, β = 0) converges to π ∝ exp(R/γ) and DPO
/// (β) to π ∝ π0·exp(R/β).
/// </summary>
public class OfflineObjectiveTests
{
    /// <summary>
    /// The population in finite form: for every context and unordered pair {a, b}, M labelled copies of which
    /// round(M·σ(R_a − R_b)) say a ≻ b. Its MLE equals the population optimum up to that rounding.
    /// </summary>
    private static List<PreferencePair> Pairs(double[,] r, int copies)
    {
        var pairs = new List<PreferencePair>();
        for (int x = 0; x < Contexts; x++)
            for (int a = 0; a < Responses; a++)
                for (int b = a + 1; b < Responses; b++)
                {
                    int aWins = (int)Math.Round(copies / (1 + Math.Exp(-(r[x, a] - r[x, b]))));
                    for (int i = 0; i < copies; i++)
                        pairs.Add(i < aWins ? new PreferencePair([x], [a], [b]) : new PreferencePair([x], [b], [a]));
                }
        return pairs;
    }

    /// <summary>Full-batch Adam on the objective; returns the final metrics.</summary>
    private static OfflineStepMetrics Train(OfflinePreferenceObjective objective, TabularPolicy policy, List<PreferencePair> pairs,
                                            float[] referenceLogProbs, int steps, float lr)
    {
        OfflineStepMetrics last = null!;
        for (int step = 1; step <= steps; step++)
        {
            policy.ZeroGradients();
            last = objective.Accumulate(policy, pairs, referenceLogProbs, reference: null, sampleSeed: (ulong)step);
            policy.OptimizerStep(step, lr);
        }
        return last;
    }

    private static double MaxAbsDifference(TabularPolicy policy, Func<int, double[]> expected)
    {
        double worst = 0;
        for (int x = 0; x < Contexts; x++)
        {
            var p = policy.Probabilities(x);
            var q = expected(x);
            for (int y = 0; y < Responses; y++) worst = Math.Max(worst, Math.Abs(p[y] - q[y]));
        }
        return worst;
    }

    private static double[] Softmax(Func<int, double> logit)
    {
        var e = Enumerable.Range(0, Responses).Select(y => logit(y)).ToArray();
        double max = e.Max();
        var p = e.Select(v => Math.Exp(v - max)).ToArray();
        double z = p.Sum();
        return p.Select(v => v / z).ToArray();
    }

    [Test]
    public void DpoAtThePolicyEqualToTheReferenceGivesLn2AndZeroRewards()
    {
        using var policy = Initial();
        var pairs = Pairs(Reward(), copies: 3);
        var reference = OfflinePreferenceObjective.ReferenceLogProbs(policy, pairs);
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.1));
        policy.ZeroGradients();
        var m = objective.Accumulate(policy, pairs, reference, null, 1);
        Assert.That((float)m.Pairwise.Loss, Is.EqualTo((float)Math.Log(2)));
        Assert.That(m.Pairwise.RewardsChosen, Is.EqualTo(0));
        Assert.That(m.Pairwise.RewardsMargins, Is.EqualTo(0));
    }

    [Test]
    public void PreferenceMleConvergesToExpRewardOverGamma()
    {
        const double gamma = 0.5;
        var r = Reward();
        var pairs = Pairs(r, copies: 200);
        using var policy = Initial();
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: gamma));
        Train(objective, policy, pairs, [], steps: 600, lr: 0.05f);
        double error = MaxAbsDifference(policy, x => Softmax(y => r[x, y] / gamma));
        TestContext.Out.WriteLine($"max |π − softmax(R/γ)| = {error:E2}");
        Assert.That(error, Is.LessThan(5e-3));
    }

    [Test]
    public void DpoConvergesToTheReferenceTiltedByExpRewardOverBeta()
    {
        const double beta = 2.0;
        var r = Reward();
        var pairs = Pairs(r, copies: 200);
        using var policy = Initial();
        using var pi0 = (TabularPolicy)policy.Snapshot();
        var reference = OfflinePreferenceObjective.ReferenceLogProbs(pi0, pairs);
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: beta));
        Train(objective, policy, pairs, reference, steps: 600, lr: 0.05f);
        double error = MaxAbsDifference(policy, x =>
        {
            var p0 = pi0.Probabilities(x);
            return Softmax(y => Math.Log(p0[y]) + r[x, y] / beta);
        });
        TestContext.Out.WriteLine($"max |π − softmax(ln π0 + R/β)| = {error:E2}");
        Assert.That(error, Is.LessThan(5e-3));
    }

    [Test]
    public void PmleWithTheKlTermMovesTowardTheReference()
    {
        // β > 0 pulls the MLE optimum back toward π0: KL(π‖π0) at the end must be below the β = 0 run's.
        const double gamma = 0.5;
        var r = Reward();
        var pairs = Pairs(r, copies: 20);
        double KlToReference(TabularPolicy p, TabularPolicy p0)
        {
            double kl = 0;
            for (int x = 0; x < Contexts; x++)
            {
                var a = p.Probabilities(x);
                var b = p0.Probabilities(x);
                for (int y = 0; y < Responses; y++) kl += a[y] * Math.Log(a[y] / b[y]);
            }
            return kl / Contexts;
        }
        double Run(double beta)
        {
            using var policy = Initial();
            using var pi0 = (TabularPolicy)policy.Snapshot();
            var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: gamma),
                new KlRegularizer(beta, SamplesPerPrompt: 8, MaxNewTokens: 1));
            for (int step = 1; step <= 300; step++)
            {
                policy.ZeroGradients();
                objective.Accumulate(policy, pairs, [], pi0, (ulong)step);
                policy.OptimizerStep(step, 0.05f);
            }
            return KlToReference(policy, pi0);
        }
        double free = Run(0), regularised = Run(1.0);
        TestContext.Out.WriteLine($"KL(π‖π0): β = 0 → {free:F4}, β = 1 → {regularised:F4}");
        Assert.That(regularised, Is.LessThan(0.7 * free));
    }

    [Test]
    public void TheTabularGradientMatchesFiniteDifferences()
    {
        using var policy = Initial();
        var batch = new List<PromptResponse> { new([0], [1]), new([0], [3]), new([2], [4]) };
        var a = new float[] { 0.3f, -1.2f, 0.7f };
        var b = new float[] { -0.4f, 0.9f, 0.2f };
        var lp = new float[3];
        var ent = new float[3];
        policy.ZeroGradients();
        policy.Score(batch, lp, ent);
        policy.Backward(a, b);
        var logits = policy.Logits.ToArray();
        double Loss()
        {
            var l = new float[3];
            var e = new float[3];
            policy.Score(batch, l, e);
            double s = 0;
            for (int i = 0; i < 3; i++) s += a[i] * l[i] + b[i] * e[i];
            return s;
        }
        var grad = GradientOf(policy);
        for (int i = 0; i < logits.Length; i++)
        {
            float saved = policy.Logits[i];
            policy.Logits[i] = saved + 1e-2f;
            double up = Loss();
            policy.Logits[i] = saved - 1e-2f;
            double down = Loss();
            policy.Logits[i] = saved;
            Assert.That(grad[i], Is.EqualTo((up - down) / 2e-2).Within(2e-3), $"logit {i}");
        }
    }

    private static float[] GradientOf(TabularPolicy policy) => policy.GradientsForTests.ToArray();
}

/// <summary>The tabular reward model recovers R up to a per-context constant.</summary>
public class TabularRewardModelTests
{
    [Test]
    public void BradleyTerryFitRecoversTheRewardUpToAPerContextConstant()
    {
        const int contexts = 3, responses = 5;
        var rng = new Random(4);
        var r = new double[contexts, responses];
        for (int x = 0; x < contexts; x++)
            for (int y = 0; y < responses; y++) r[x, y] = rng.NextDouble() * 2 - 1;
        // Every unordered pair 200 times, round(200·σ(R_a − R_b)) of them won by a.
        var pairs = new List<DistAlign.Alignment.Data.PreferencePair>();
        for (int x = 0; x < contexts; x++)
            for (int a = 0; a < responses; a++)
                for (int b = a + 1; b < responses; b++)
                {
                    int aWins = (int)Math.Round(200 / (1 + Math.Exp(-(r[x, a] - r[x, b]))));
                    for (int i = 0; i < 200; i++)
                        pairs.Add(i < aWins ? new([x], [a], [b]) : new([x], [b], [a]));
                }
        var model = new DistAlign.Alignment.Reward.TabularRewardModel(contexts, responses);
        double loss = model.Fit(pairs, steps: 800, learningRate: 0.05f, l2: 1e-6);
        double worst = 0;
        for (int x = 0; x < contexts; x++)
        {
            // Compare centred rows: the pairs identify R only up to a constant per context.
            double meanFit = 0, meanTrue = 0;
            for (int y = 0; y < responses; y++) { meanFit += model[x, y]; meanTrue += r[x, y]; }
            meanFit /= responses;
            meanTrue /= responses;
            for (int y = 0; y < responses; y++)
                worst = Math.Max(worst, Math.Abs(model[x, y] - meanFit - (r[x, y] - meanTrue)));
        }
        TestContext.Out.WriteLine($"BT loss {loss:F4}; max |centred R̂ − centred R| = {worst:E2}");
        Assert.That(worst, Is.LessThan(0.02));
    }
}
