using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

/// <summary>
/// A hand-made batch for the pairwise losses: 5 sequences, 4 pairs, sequences 0, 1 and 2 each shared by two
/// pairs. Log-probs around −20, log-ratios chosen so β·h spans both sides of 0 and of the hinge's kink at 1.
/// </summary>
internal sealed class PairwiseLossCase
{
    public float[] Logps = [-18.5f, -31.25f, -22.0f, -40.75f, -19.5f];
    public float[] RefLogps = null!;
    public int[] TokenCounts = [7, 12, 4, 15, 9];
    public float[] Rewards = [0.8f, -0.35f, 1.6f, -1.1f, 0.25f];
    public int[] Chosen = [0, 2, 0, 4];
    public int[] Rejected = [1, 1, 3, 2];
    public float[] Labels = [0.9f, 0.35f, 1.0f, 0.0f];

    public PairwiseLossCase()
    {
        // ln π − ln π0 per sequence: h = 20, 11, 27, −2.5 for the four pairs.
        float[] ratio = [12f, -8f, 3f, -15f, 0.5f];
        RefLogps = new float[Logps.Length];
        for (int i = 0; i < ratio.Length; i++) RefLogps[i] = Logps[i] - ratio[i];
    }

    /// <summary>A seeded random batch: log-probs ~ −20 ± 6, log-ratios ± 8, rewards ± 1, random (possibly repeated) pairs.</summary>
    public static PairwiseLossCase Random(int seed, int sequences, int pairs)
    {
        var rng = new Random(seed);
        var c = new PairwiseLossCase
        {
            Logps = new float[sequences], RefLogps = new float[sequences], TokenCounts = new int[sequences],
            Rewards = new float[sequences], Chosen = new int[pairs], Rejected = new int[pairs], Labels = new float[pairs],
        };
        for (int j = 0; j < sequences; j++)
        {
            c.Logps[j] = (float)(-20 + 12 * (rng.NextDouble() - 0.5));
            c.RefLogps[j] = c.Logps[j] - (float)(16 * (rng.NextDouble() - 0.5));
            c.TokenCounts[j] = rng.Next(1, 40);
            c.Rewards[j] = (float)(2 * (rng.NextDouble() - 0.5));
        }
        for (int i = 0; i < pairs; i++)
        {
            c.Chosen[i] = rng.Next(sequences);
            c.Rejected[i] = rng.Next(sequences);
            c.Labels[i] = (float)rng.NextDouble();
        }
        return c;
    }

    public int Sequences => Logps.Length;
    public int Pairs => Chosen.Length;

    /// <summary>Keeps only the first <paramref name="pairs"/> pairs.</summary>
    public PairwiseLossCase Take(int pairs)
    {
        Chosen = Chosen[..pairs];
        Rejected = Rejected[..pairs];
        Labels = Labels[..pairs];
        return this;
    }

    public PairwiseLossBatch Batch => new()
    {
        Logps = Logps, RefLogps = RefLogps, TokenCounts = TokenCounts, Rewards = Rewards,
        Chosen = Chosen, Rejected = Rejected, Labels = Labels,
    };

    public ReferencePairwiseInputs Reference => new(
        ToDouble(Logps), ToDouble(RefLogps), TokenCounts, ToDouble(Rewards), Chosen, Rejected, ToDouble(Labels));

    /// <summary>Every variant with representative scalars (non-trivial ε, γ, η, m, c).</summary>
    public static IEnumerable<PairwiseLossSettings> AllSettings()
    {
        yield return new(PairwiseLossVariant.DpoSigmoid, Beta: 0.1);
        yield return new(PairwiseLossVariant.DpoConservative, Beta: 0.1, Epsilon: 0.1);
        yield return new(PairwiseLossVariant.DpoRobust, Beta: 0.1, Epsilon: 0.2);
        yield return new(PairwiseLossVariant.DpoHinge, Beta: 0.1);
        yield return new(PairwiseLossVariant.Ipo, Beta: 0.25);
        yield return new(PairwiseLossVariant.Pmle, Gamma: 0.5);
        yield return new(PairwiseLossVariant.Distillation, Gamma: 0.3);
        yield return new(PairwiseLossVariant.Rebel, Eta: 4.0);
        yield return new(PairwiseLossVariant.RewardModel, Margin: 0.5, Centring: 0.01);
    }

    /// <summary>The per-sequence values the variant differentiates (rewards for the reward model, log-probs otherwise).</summary>
    public float[] Differentiated(PairwiseLossSettings s) => s.DifferentiatesRewards ? Rewards : Logps;

    /// <summary>Finite-difference gradient of the reference mean loss with respect to <see cref="Differentiated"/>.</summary>
    public double[] FiniteDifferenceGradientOfMean(PairwiseLossSettings s)
    {
        var x = Reference;
        var wrt = s.DifferentiatesRewards ? x.Rewards! : x.Logps;
        return FiniteDifferenceGradient(() => ReferencePairwiseLosses.MeanLoss(s, x), wrt);
    }
}

public class PairwiseBradleyTerryLossTests
{
    private static IEnumerable<TestCaseData> Variants() =>
        PairwiseLossCase.AllSettings().Select(s => new TestCaseData(s).SetArgDisplayNames(s.Variant.ToString()));

    /// <summary>Runs the CPU kernel; returns per-pair losses, metrics and the accumulated gradient (seeded with <paramref name="before"/>).</summary>
    internal static (float[] Losses, PairwiseLossMetrics Metrics, float[] Gradient) Run(PairwiseLossSettings s, PairwiseLossCase c, float[] before)
    {
        var losses = new float[c.Pairs];
        var gradient = (float[])before.Clone();
        var metrics = s.DifferentiatesRewards
            ? PairwiseBradleyTerryLoss.ForwardBackward(s, c.Batch, losses, [], gradient)
            : PairwiseBradleyTerryLoss.ForwardBackward(s, c.Batch, losses, gradient, []);
        return (losses, metrics, gradient);
    }

    internal static void AssertMetricsMatchReference(PairwiseLossMetrics metrics, Dictionary<string, double> expected, double tolerance)
    {
        var actual = metrics.Named().ToDictionary(m => m.Name, m => m.Value);
        Assert.That(actual.Keys, Is.EquivalentTo(expected.Keys), "metric names");
        foreach (var (name, value) in expected)
            Assert.That(actual[name], Is.EqualTo(value).Within(tolerance).Or.EqualTo(value).Within(tolerance).Percent, name);
    }

    [TestCaseSource(nameof(Variants))]
    public void LossMetricsAndGradientMatchReference(PairwiseLossSettings s)
    {
        var c = new PairwiseLossCase();
        var before = RandomFloats(c.Sequences, 7);
        var (losses, metrics, gradient) = Run(s, c, before);

        AssertClose(losses, ReferencePairwiseLosses.PairLosses(s, c.Reference), 1e-6, 1e-6, "per-pair loss");
        Assert.That(metrics.Loss, Is.EqualTo(ReferencePairwiseLosses.MeanLoss(s, c.Reference)).Within(1e-9), "mean loss");
        Assert.That(metrics.Pairs, Is.EqualTo(c.Pairs));
        AssertMetricsMatchReference(metrics, ReferencePairwiseLosses.Metrics(s, c.Reference), 1e-9);
        AssertClose(gradient, KernelTest.Plus(before, c.FiniteDifferenceGradientOfMean(s)), 1e-6, 1e-5, "gradient (accumulated)");
    }

    [TestCaseSource(nameof(Variants))]
    public void RandomBatchWithManySharedSequencesMatchesReference(PairwiseLossSettings s)
    {
        var c = PairwiseLossCase.Random(11, 40, 150);
        var before = RandomFloats(c.Sequences, 8);
        var (losses, metrics, gradient) = Run(s, c, before);
        AssertClose(losses, ReferencePairwiseLosses.PairLosses(s, c.Reference), 1e-6, 1e-6, "per-pair loss");
        AssertMetricsMatchReference(metrics, ReferencePairwiseLosses.Metrics(s, c.Reference), 1e-9);
        AssertClose(gradient, KernelTest.Plus(before, c.FiniteDifferenceGradientOfMean(s)), 1e-6, 1e-5, "gradient (accumulated)");
    }

    [TestCaseSource(nameof(Variants))]
    public void SinglePairMatchesReference(PairwiseLossSettings s)
    {
        var c = new PairwiseLossCase().Take(1);
        var (losses, metrics, gradient) = Run(s, c, new float[c.Sequences]);
        AssertClose(losses, ReferencePairwiseLosses.PairLosses(s, c.Reference), 1e-6, 1e-6, "loss");
        AssertMetricsMatchReference(metrics, ReferencePairwiseLosses.Metrics(s, c.Reference), 1e-9);
        AssertClose(gradient, c.FiniteDifferenceGradientOfMean(s), 1e-6, 1e-5, "gradient");
        for (int j = 2; j < c.Sequences; j++) Assert.That(gradient[j], Is.Zero, $"sequence {j} is in no pair");
    }

    [TestCaseSource(nameof(Variants))]
    public void NoPairsGiveZeroLossAndNoGradient(PairwiseLossSettings s)
    {
        var c = new PairwiseLossCase().Take(0);
        var before = RandomFloats(c.Sequences, 3);
        var (losses, metrics, gradient) = Run(s, c, before);
        Assert.That(losses, Is.Empty);
        Assert.That(metrics.Loss, Is.Zero);
        Assert.That(metrics.Named().All(m => m.Value == 0.0), "all metrics 0");
        Assert.That(gradient, Is.EqualTo(before), "gradient untouched");
    }

    [TestCaseSource(nameof(Variants))]
    public void ForwardEqualsForwardBackwardsLossesAndTouchesNoGradient(PairwiseLossSettings s)
    {
        var c = new PairwiseLossCase();
        var losses = new float[c.Pairs];
        var metrics = PairwiseBradleyTerryLoss.Forward(s, c.Batch, losses);
        var (expectedLosses, expectedMetrics, _) = Run(s, c, new float[c.Sequences]);
        Assert.That(losses, Is.EqualTo(expectedLosses));
        Assert.That(metrics, Is.EqualTo(expectedMetrics));
    }

    [TestCaseSource(nameof(Variants))]
    public void ExtremeLogitsGiveFiniteLossAndGradient(PairwiseLossSettings s)
    {
        foreach (float sign in new[] { 1f, -1f })
        {
            var c = new PairwiseLossCase().Take(1);
            // Make the differentiated difference ±1e4 / (the variant's scale) so z = ±1e4.
            double scale = s.Variant switch
            {
                PairwiseLossVariant.Pmle or PairwiseLossVariant.Distillation => s.Gamma,
                PairwiseLossVariant.Rebel or PairwiseLossVariant.RewardModel => 1.0,
                _ => s.Beta,
            };
            float delta = (float)(sign * 1e4 / scale);
            var values = c.Differentiated(s);
            values[0] = values[1] + delta;
            if (s.UsesReference) { c.RefLogps[0] = c.Logps[1]; c.RefLogps[1] = c.Logps[1]; }
            if (s.Variant == PairwiseLossVariant.Rebel) c.Rewards[0] = c.Rewards[1];
            var (losses, metrics, gradient) = Run(s, c, new float[c.Sequences]);
            KernelTest.AssertAllFinite(losses, $"loss at z = {sign}e4");
            KernelTest.AssertAllFinite(gradient, $"gradient at z = {sign}e4");
            Assert.That(double.IsFinite(metrics.Loss), $"mean loss at z = {sign}e4");
            AssertClose(losses, ReferencePairwiseLosses.PairLosses(s, c.Reference), 1e-6, 1e-6, $"loss at z = {sign}e4");
            AssertClose(gradient, AnalyticSaturatedGradient(s, c, sign), 1e-6, 1e-6, $"gradient at z = {sign}e4");
        }
    }

    /// <summary>Closed-form gradient of the single pair (0, 1) when z = ±1e4, where σ(−z) is 0 or 1 to fp64.</summary>
    private static double[] AnalyticSaturatedGradient(PairwiseLossSettings s, PairwiseLossCase c, float sign)
    {
        var x = c.Reference;
        double dChosen;
        bool positive = sign > 0;
        switch (s.Variant)
        {
            case PairwiseLossVariant.DpoSigmoid: dChosen = positive ? 0 : -s.Beta; break;
            case PairwiseLossVariant.DpoConservative: dChosen = s.Beta * (positive ? s.Epsilon : -(1 - s.Epsilon)); break;
            case PairwiseLossVariant.DpoRobust: dChosen = s.Beta * (positive ? -s.Epsilon : -(1 - s.Epsilon)) / (1 - 2 * s.Epsilon); break;
            case PairwiseLossVariant.DpoHinge: dChosen = positive ? 0 : -s.Beta; break;
            case PairwiseLossVariant.Ipo:
            {
                double hbar = (x.Logps[0] - x.RefLogps![0]) / x.TokenCounts![0] - (x.Logps[1] - x.RefLogps[1]) / x.TokenCounts[1];
                double r = hbar - 1 / (2 * s.Beta);
                var g = new double[c.Sequences];
                g[0] = 2 * r / x.TokenCounts[0];
                g[1] = -2 * r / x.TokenCounts[1];
                return g;
            }
            case PairwiseLossVariant.Pmle: dChosen = positive ? 0 : -s.Gamma; break;
            case PairwiseLossVariant.Distillation: dChosen = s.Gamma * ((positive ? 1 : 0) - x.Labels![0]); break;
            case PairwiseLossVariant.Rebel: dChosen = 2 * ((x.Logps[0] - x.RefLogps![0]) - (x.Logps[1] - x.RefLogps[1])); break;
            case PairwiseLossVariant.RewardModel:
            {
                double centre = 2 * s.Centring * (x.Rewards![0] + x.Rewards[1]);
                var g = new double[c.Sequences];
                g[0] = (positive ? 0 : -1) + centre;
                g[1] = (positive ? 0 : 1) + centre;
                return g;
            }
            default: throw new ArgumentOutOfRangeException(nameof(s));
        }
        var grad = new double[c.Sequences];
        grad[0] = dChosen;
        grad[1] = -dChosen;
        return grad;
    }

    [Test]
    public void DpoAtPolicyEqualToReferenceIsExactlyLn2WithZeroRewards()
    {
        var c = new PairwiseLossCase();
        c.RefLogps = (float[])c.Logps.Clone();
        var s = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.1);
        var (losses, metrics, gradient) = Run(s, c, new float[c.Sequences]);
        float ln2 = (float)Math.Log(2.0);
        Assert.That(losses, Is.All.EqualTo(ln2), "per-pair loss is fp32 ln 2");
        Assert.That((float)metrics.Loss, Is.EqualTo(ln2), "mean loss is fp32 ln 2");
        Assert.That(metrics.RewardsChosen, Is.EqualTo(0.0));
        Assert.That(metrics.RewardsRejected, Is.EqualTo(0.0));
        Assert.That(metrics.RewardsMargins, Is.EqualTo(0.0));
        Assert.That(metrics.RewardsAccuracies, Is.EqualTo(0.0));
        // dL/dz = −½ for every pair: ∓β/(2P) per occurrence.
        AssertClose(gradient, c.FiniteDifferenceGradientOfMean(s), 1e-7, 1e-6, "gradient at π = π0");
    }

    [Test]
    public void SoftLabelEqualToTheModelsProbabilityGivesZeroGradient()
    {
        var c = new PairwiseLossCase();
        var s = new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: 0.3);
        for (int i = 0; i < c.Pairs; i++)
            c.Labels[i] = (float)ReferencePairwiseLosses.Sigmoid(s.Gamma * ((double)c.Logps[c.Chosen[i]] - c.Logps[c.Rejected[i]]));
        var (_, metrics, gradient) = Run(s, c, new float[c.Sequences]);
        foreach (float g in gradient) Assert.That(Math.Abs(g), Is.LessThanOrEqualTo(1e-7), "σ(z) − p ≈ 0");
        Assert.That(Math.Abs(metrics.BernoulliKl), Is.LessThan(1e-12), "KL(Bern(p) ‖ Bern(σ(z))) ≈ 0");
    }

    [Test]
    public void ConservativeAndRobustWithZeroEpsilonEqualSigmoid()
    {
        var c = new PairwiseLossCase();
        var before = RandomFloats(c.Sequences, 5);
        var sigmoid = Run(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.2), c, before);
        foreach (var variant in new[] { PairwiseLossVariant.DpoConservative, PairwiseLossVariant.DpoRobust })
        {
            var other = Run(new PairwiseLossSettings(variant, Beta: 0.2, Epsilon: 0.0), c, before);
            Assert.That(other.Losses, Is.EqualTo(sigmoid.Losses), $"{variant} loss");
            Assert.That(other.Gradient, Is.EqualTo(sigmoid.Gradient), $"{variant} gradient");
            Assert.That(other.Metrics with { Variant = PairwiseLossVariant.DpoSigmoid }, Is.EqualTo(sigmoid.Metrics), $"{variant} metrics");
        }
    }

    [Test]
    public void IpoUsesPerTokenMeans()
    {
        var c = new PairwiseLossCase().Take(1);
        var s = new PairwiseLossSettings(PairwiseLossVariant.Ipo, Beta: 0.25);
        var (losses, _, gradient) = Run(s, c, new float[c.Sequences]);
        // Pair (0, 1): ratios 12 and −8 over 7 and 12 tokens; target 1/(2β) = 2.
        double hbar = 12.0 / 7 - (-8.0) / 12, r = hbar - 2.0;
        Assert.That(losses[0], Is.EqualTo(r * r).Within(1e-6));
        Assert.That(gradient[0], Is.EqualTo(2 * r / 7).Within(1e-7));
        Assert.That(gradient[1], Is.EqualTo(-2 * r / 12).Within(1e-7));
    }

    [Test]
    public void PmleScalesByGammaAndIgnoresTheReference()
    {
        var c = new PairwiseLossCase().Take(1);
        var s = new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: 0.05);
        var (losses, metrics, gradient) = Run(s, c, new float[c.Sequences]);
        double z = 0.05 * (-18.5 + 31.25);
        Assert.That(metrics.Logits, Is.EqualTo(z).Within(1e-12));
        Assert.That(losses[0], Is.EqualTo(Math.Log(1 + Math.Exp(-z))).Within(1e-7));
        Assert.That(gradient[0], Is.EqualTo(-0.05 / (1 + Math.Exp(z))).Within(1e-8));
        c.RefLogps[0] += 100f;
        Assert.That(Run(s, c, new float[c.Sequences]).Losses, Is.EqualTo(losses), "no reference inside σ");
    }

    [Test]
    public void RewardModelMarginAndCentring()
    {
        var c = new PairwiseLossCase().Take(1);
        var s = new PairwiseLossSettings(PairwiseLossVariant.RewardModel, Margin: 0.5, Centring: 0.1);
        var (losses, metrics, gradient) = Run(s, c, new float[c.Sequences]);
        double ra = 0.8f, rb = -0.35f, u = ra - rb - 0.5, sum = ra + rb;
        Assert.That(losses[0], Is.EqualTo(Math.Log(1 + Math.Exp(-u)) + 0.1 * sum * sum).Within(1e-7));
        Assert.That(gradient[0], Is.EqualTo(-1 / (1 + Math.Exp(u)) + 0.2 * sum).Within(1e-7));
        Assert.That(gradient[1], Is.EqualTo(1 / (1 + Math.Exp(u)) + 0.2 * sum).Within(1e-7));
        Assert.That(metrics.Accuracy, Is.EqualTo(1.0));
        Assert.That(metrics.Margin, Is.EqualTo(ra - rb).Within(1e-12));
        Assert.That(metrics.MeanReward, Is.EqualTo(sum / 2).Within(1e-12));
    }

    [Test]
    public void RewardModelReadsRewardsWithoutLogps()
    {
        var c = new PairwiseLossCase();
        var s = new PairwiseLossSettings(PairwiseLossVariant.RewardModel);
        var batch = new PairwiseLossBatch { Rewards = c.Rewards, Chosen = c.Chosen, Rejected = c.Rejected };
        var losses = new float[c.Pairs];
        var dRewards = new float[c.Sequences];
        var metrics = PairwiseBradleyTerryLoss.ForwardBackward(s, batch, losses, [], dRewards);
        Assert.That(metrics.Loss, Is.EqualTo(ReferencePairwiseLosses.MeanLoss(s, c.Reference)).Within(1e-9));
        AssertClose(dRewards, c.FiniteDifferenceGradientOfMean(s), 1e-6, 1e-5, "dRewards");
    }

    [Test]
    public void RebelResidualIsZeroWhenTheLogRatioGapEqualsEtaTimesTheRewardGap()
    {
        var c = new PairwiseLossCase().Take(1);
        var s = new PairwiseLossSettings(PairwiseLossVariant.Rebel, Eta: 2.0);
        // Log-ratio gap 12 − (−8) = 20 = η·(R₁ − R₂) with R₁ − R₂ = 10.
        c.Rewards[0] = 10.5f;
        c.Rewards[1] = 0.5f;
        var (losses, metrics, gradient) = Run(s, c, new float[c.Sequences]);
        Assert.That(losses[0], Is.Zero);
        Assert.That(metrics.RegressionError, Is.Zero);
        Assert.That(gradient, Is.All.Zero);
    }

    [Test]
    public void SharedSequencesAccumulateInPairOrder()
    {
        var c = new PairwiseLossCase();
        var s = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.1);
        var a = Run(s, c, new float[c.Sequences]).Gradient;
        var b = Run(s, c, new float[c.Sequences]).Gradient;
        Assert.That(b, Is.EqualTo(a), "bit-identical on repeat");
        // Sequence 1 is rejected in pairs 0 (z = 2) and 1 (z = 1.1): each adds β·σ(−z)/P in fp32, pair 0 first.
        float expected = 0f;
        foreach (double z in new[] { 0.1 * 20.0, 0.1 * 11.0 })
            expected += (float)(0.1 * ReferencePairwiseLosses.Sigmoid(-z) / 4);
        Assert.That(a[1], Is.EqualTo(expected).Within(1e-9));
    }

    [Test]
    public void BadInputsAreRejectedWithClearErrors()
    {
        var s = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid);
        void Call(PairwiseLossSettings settings, PairwiseLossCase c) =>
            PairwiseBradleyTerryLoss.ForwardBackward(settings, c.Batch, new float[c.Pairs], new float[c.Sequences], new float[c.Sequences]);

        var bad = new PairwiseLossCase();
        bad.Chosen[2] = 5;
        Assert.That(() => Call(s, bad), Throws.InstanceOf<ArgumentException>().With.Message.Contains("chosen index 5"));
        bad = new PairwiseLossCase();
        bad.Rejected[0] = -1;
        Assert.That(() => Call(s, bad), Throws.InstanceOf<ArgumentException>().With.Message.Contains("rejected index -1"));
        bad = new PairwiseLossCase();
        bad.Labels[1] = 1.5f;
        Assert.That(() => Call(new(PairwiseLossVariant.Distillation), bad), Throws.InstanceOf<ArgumentException>().With.Message.Contains("soft label"));
        bad = new PairwiseLossCase();
        bad.Labels[1] = float.NaN;
        Assert.That(() => Call(new(PairwiseLossVariant.Distillation), bad), Throws.InstanceOf<ArgumentException>());
        Assert.That(() => Call(new(PairwiseLossVariant.DpoRobust, Epsilon: 0.5), new PairwiseLossCase()),
            Throws.InstanceOf<ArgumentException>().With.Message.Contains("[0, 0.5)"));
        Assert.That(() => Call(new(PairwiseLossVariant.DpoConservative, Epsilon: -0.1), new PairwiseLossCase()), Throws.InstanceOf<ArgumentException>());
        Assert.That(() => Call(new(PairwiseLossVariant.DpoSigmoid, Beta: 0), new PairwiseLossCase()), Throws.InstanceOf<ArgumentException>());
        bad = new PairwiseLossCase();
        bad.TokenCounts[3] = 0;
        Assert.That(() => Call(new(PairwiseLossVariant.Ipo), bad), Throws.InstanceOf<ArgumentException>().With.Message.Contains("token count"));
        bad = new PairwiseLossCase();
        bad.RefLogps = bad.RefLogps[..3];
        Assert.That(() => Call(s, bad), Throws.InstanceOf<ArgumentException>().With.Message.Contains("refLogps"));
        var ok = new PairwiseLossCase();
        Assert.That(() => PairwiseBradleyTerryLoss.ForwardBackward(s, ok.Batch, new float[ok.Pairs], new float[2], []),
            Throws.InstanceOf<ArgumentException>().With.Message.Contains("dLogps"));
        var before = new float[ok.Sequences];
        Assert.That(() => PairwiseBradleyTerryLoss.ForwardBackward(s, ok.Batch, new float[ok.Pairs + 1], before, []), Throws.InstanceOf<ArgumentException>());
        Assert.That(before, Is.All.Zero, "nothing written on a failed call");
    }
}
