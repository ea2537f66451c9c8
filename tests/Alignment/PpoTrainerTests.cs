using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Transformer.Model;

using static DistAlign.Tests.Alignment.TabularFixtures;

namespace DistAlign.Tests.Alignment;

/// <summary>PPO (RLHF and reverse KL) on the tabular policy against the closed-form optima, and its bookkeeping.</summary>
public class PpoTrainerTests
{
    private static PpoOptions Options(PpoObjective objective, double beta, double gamma = 0, EntropyBonus entropy = EntropyBonus.InReward, int steps = 400) => new()
    {
        Objective = objective,
        Beta = beta,
        Gamma = gamma,
        Entropy = entropy,
        Steps = steps,
        PromptsPerIteration = 512,
        Epochs = 4,
        Minibatches = 4,
        Sampling = new SamplingOptions(1),
        LearningRate = 0.05f,
        MinLearningRateFraction = 0.02f,
        GradientClip = 0,
        Seed = 7,
    };

    /// <summary>max over (x, y) of |π(y|x) − target(y|x)|, target ∝ π0^a · exp(R/b) per context.</summary>
    private static double Distance(TabularPolicy policy, TabularPolicy pi0, double[,] r, double a, double b)
    {
        double worst = 0;
        for (int x = 0; x < Contexts; x++)
        {
            var p = policy.Probabilities(x);
            var p0 = pi0.Probabilities(x);
            var target = Enumerable.Range(0, Responses).Select(y => Math.Pow(p0[y], a) * Math.Exp(r[x, y] / b)).ToArray();
            double z = target.Sum();
            for (int y = 0; y < Responses; y++) worst = Math.Max(worst, Math.Abs(p[y] - target[y] / z));
        }
        return worst;
    }

    private static void Run(PpoOptions options, out TabularPolicy policy, out TabularPolicy pi0, out AlignmentStepReport last)
    {
        policy = Initial();
        pi0 = (TabularPolicy)policy.Snapshot();
        var trainer = new PpoTrainer(policy, pi0, new KnownReward(Reward()), Prompts(1), options);
        last = null!;
        while (trainer.Step < options.Steps) last = trainer.TrainStep();
    }

    [Test]
    public void RlhfConvergesToReferenceTimesExpRewardOverBeta()
    {
        const double beta = 0.5;
        Run(Options(PpoObjective.Rlhf, beta), out var policy, out var pi0, out var last);
        double start = Distance(pi0, pi0, Reward(), 1, beta);
        double error = Distance(policy, pi0, Reward(), 1, beta);
        double ExpectedReward(TabularPolicy p) => Enumerable.Range(0, Contexts)
            .Average(x => p.Probabilities(x).Select((q, y) => q * Reward()[x, y]).Sum());
        double rewardBefore = ExpectedReward(pi0), rewardAfter = ExpectedReward(policy);
        TestContext.Out.WriteLine($"RLHF β={beta}: max |π − π0·e^(R/β)/Z| {start:F3} → {error:F4}; E[R] {rewardBefore:F3} → {rewardAfter:F3}; KL {last["objective/kl"]:F4}");
        Assert.That(error, Is.LessThan(0.02));
        Assert.That(rewardAfter, Is.GreaterThan(rewardBefore + 0.1), "the bandit's expected reward rises");
        Assert.That(last["objective/kl"], Is.LessThan(2.0 / beta), "KL(π‖π0) ≤ (max R − min R)/β at the optimum");
    }

    [TestCase(EntropyBonus.InReward)]
    [TestCase(EntropyBonus.Exact)]
    public void ReverseKlConvergesToTheTemperedClosedForm(EntropyBonus entropy)
    {
        const double beta = 0.3, gamma = 0.4;
        Run(Options(PpoObjective.ReverseKl, beta, gamma, entropy), out var policy, out var pi0, out _);
        double start = Distance(pi0, pi0, Reward(), beta / (beta + gamma), beta + gamma);
        double error = Distance(policy, pi0, Reward(), beta / (beta + gamma), beta + gamma);
        double rlhfError = Distance(policy, pi0, Reward(), 1, beta);
        TestContext.Out.WriteLine($"RKL ({entropy}) β={beta} γ={gamma}: max |π − π0^(β/(β+γ))·e^(R/(β+γ))/Z| {start:F3} → {error:F4} (vs RLHF's optimum {rlhfError:F3})");
        Assert.That(error, Is.LessThan(0.02));
        Assert.That(rlhfError, Is.GreaterThan(3 * error), "the reverse-KL optimum differs from RLHF's");
    }
}
