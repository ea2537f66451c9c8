using DistAlign.Alignment.Experiments;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Reward;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Tests.Alignment.Experiments;

/// <summary>The tabular known-target experiment: data, metric, reward fit, gradients, methods, slopes, outputs, determinism.</summary>
public class TabularExperimentTests
{
    [Test]
    public void LabelFrequenciesMatchTheTargetPreferenceProbabilities()
    {
        // 2 contexts × 3 responses with spread-out logits, so σ(γΔ) is far from ½; each ordered cell gets thousands of pairs.
        var problem = TabularProblem.Create(seed: 7, contexts: 2, responses: 3, logitStd: 1.0, gamma: 0.5);
        var pairs = problem.DrawPairs(120_000);
        var data = new TabularPairCounts(2, 3, pairs);
        int checkedCells = 0;
        for (int x = 0; x < 2; x++)
            for (int a = 0; a < 3; a++)
                for (int b = a + 1; b < 3; b++)
                {
                    int aWins = data[x, a, b], bWins = data[x, b, a], total = aWins + bWins;
                    double p = problem.PreferenceProbability(x, a, b);
                    double bound = 4.5 * Math.Sqrt(p * (1 - p) / total);
                    TestContext.Out.WriteLine($"x={x} {a}≻{b}: {aWins}/{total} = {(double)aWins / total:F4}, σ(γΔ) = {p:F4} ± {bound:F4}");
                    Assert.That(total, Is.GreaterThan(2000));
                    Assert.That((double)aWins / total, Is.EqualTo(p).Within(bound));
                    checkedCells++;
                }
        Assert.That(checkedCells, Is.EqualTo(6));
        // x is uniform and a ~ μ = π0: the first response of every pair drawn, before ordering, cannot be seen, but the
        // context frequency can.
        double share = pairs.Count(q => q.Context == 0) / (double)pairs.Length;
        Assert.That(share, Is.EqualTo(0.5).Within(4.5 * Math.Sqrt(0.25 / pairs.Length)));
    }

    [Test]
    public void SamplerMarginalsFollowPi0OrUniform()
    {
        foreach (var sampler in new[] { TabularSampler.Pi0, TabularSampler.Uniform })
        {
            var problem = TabularProblem.Create(seed: 3, contexts: 1, responses: 4, logitStd: 1.0, sampler: sampler);
            var pairs = problem.DrawPairs(80_000);
            for (int y = 0; y < 4; y++)
            {
                // Each pair holds two independent draws from μ; the label only orders them.
                double frequency = pairs.Sum(p => (p.Chosen == y ? 1 : 0) + (p.Rejected == y ? 1 : 0)) / (2.0 * pairs.Length);
                double mu = sampler == TabularSampler.Uniform ? 0.25 : Math.Exp(problem.ReferenceLogProb(0, y));
                Assert.That(problem.SamplerProbability(0, y), Is.EqualTo(mu).Within(1e-12));
                Assert.That(frequency, Is.EqualTo(mu).Within(4.5 * Math.Sqrt(mu * (1 - mu) / (2.0 * pairs.Length)) * 1.5), $"{sampler} y={y}");
            }
        }
    }

    [Test]
    public void ForwardKlMatchesAHandComputation()
    {
        var problem = TabularProblem.Create(seed: 11, contexts: 2, responses: 2, logitStd: 0.7);
        float[] logits = [0.3f, -0.2f, 1.0f, 0.0f];
        double expected = 0;
        for (int x = 0; x < 2; x++)
        {
            double t0 = problem.TargetLogits[2 * x], t1 = problem.TargetLogits[2 * x + 1];
            double p0 = Math.Exp(t0) / (Math.Exp(t0) + Math.Exp(t1)), p1 = 1 - p0;
            double q0 = Math.Exp(logits[2 * x]) / (Math.Exp(logits[2 * x]) + Math.Exp(logits[2 * x + 1])), q1 = 1 - q0;
            expected += (p0 * Math.Log(p0 / q0) + p1 * Math.Log(p1 / q1)) / 2;
        }
        Assert.That(problem.ForwardKl(logits), Is.EqualTo(expected).Within(1e-12));
        var target = problem.TargetLogits.Select(v => (float)v).ToArray();
        Assert.That(problem.ForwardKl(problem.TargetLogits), Is.EqualTo(0).Within(1e-15));
        Assert.That(problem.ForwardKl(target), Is.EqualTo(0).Within(1e-12));
    }

    [Test]
    public void CountWeightedRewardFitMatchesTheRewardModelOnTheFullList()
    {
        var problem = TabularProblem.Create(seed: 5, contexts: 3, responses: 4, logitStd: 1.0);
        var pairs = problem.DrawPairs(400);
        var full = new TabularRewardModel(3, 4);
        full.Fit([.. pairs.Select(p => p.ToTokens())], steps: 300);
        var counted = TabularReward.Fit(new TabularPairCounts(3, 4, pairs), steps: 300);
        for (int i = 0; i < 12; i++) Assert.That(counted.Rewards[i], Is.EqualTo(full.Rewards[i]).Within(2e-4), $"cell {i}");
        Assert.That(counted.GradientNorm, Is.LessThan(1e-3));
    }

    [Test]
    public void CountGroupsGiveTheGradientOfTheFullPairList()
    {
        // OfflinePreferenceObjective over all n pairs vs the distinct pairs grouped by count with gradientScale = c·m/n.
        var problem = TabularProblem.Create(seed: 9, contexts: 2, responses: 4, logitStd: 0.5);
        var pairs = problem.DrawPairs(500);
        var data = new TabularPairCounts(2, 4, pairs);
        var (policy, reference) = TabularMethods.StartAtReference(problem);
        using var _p = policy;
        using var _r = reference;
        for (int i = 0; i < policy.Logits.Length; i++) policy.Logits[i] += 0.1f * (i % 3 - 1);
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: 0.5));
        policy.ZeroGradients();
        objective.Accumulate(policy, [.. pairs.Select(p => p.ToTokens())], [], null, 0);
        var expected = policy.GradientsForTests.ToArray();
        policy.ZeroGradients();
        foreach (var (scale, group) in TabularMethods.GroupByCount(data)) objective.Accumulate(policy, group, [], null, 0, scale);
        var grouped = policy.GradientsForTests.ToArray();
        Assert.That(expected.Select(Math.Abs).Max(), Is.GreaterThan(1e-3));
        for (int i = 0; i < expected.Length; i++) Assert.That(grouped[i], Is.EqualTo(expected[i]).Within(2e-6), $"logit {i}");
    }

    [Test]
    public void ExactKlGradientMatchesFiniteDifferences()
    {
        var problem = TabularProblem.Create(seed: 2, contexts: 2, responses: 3, logitStd: 0.8);
        var (policy, reference) = TabularMethods.StartAtReference(problem);
        using var _p = policy;
        using var _r = reference;
        float[] shift = [0.4f, -0.3f, 0.1f, -0.5f, 0.2f, 0.6f];
        for (int i = 0; i < 6; i++) policy.Logits[i] += shift[i];
        var all = TabularMethods.AllSequences(2, 3);
        var referenceLogProbs = TabularMethods.LogProbs(reference, all);
        const double beta = 0.7;
        policy.ZeroGradients();
        double kl = TabularMethods.AccumulateExactKl(policy, all, referenceLogProbs, 3, beta);
        var gradient = policy.GradientsForTests.ToArray();

        double Kl(double[] logits)
        {
            double total = 0;
            var lp = TabularProblem.LogSoftmaxRows(logits, 3);
            var lq = TabularProblem.LogSoftmaxRows(problem.ReferenceLogits, 3);
            for (int i = 0; i < 6; i++) total += Math.Exp(lp[i]) * (lp[i] - lq[i]);
            return total / 2;
        }
        var at = policy.Logits.ToArray().Select(v => (double)v).ToArray();
        Assert.That(kl, Is.EqualTo(Kl(at)).Within(1e-6));
        for (int i = 0; i < 6; i++)
        {
            var plus = (double[])at.Clone();
            var minus = (double[])at.Clone();
            plus[i] += 1e-4;
            minus[i] -= 1e-4;
            double numeric = beta * (Kl(plus) - Kl(minus)) / 2e-4;
            Assert.That(gradient[i], Is.EqualTo(numeric).Within(1e-5), $"logit {i}");
        }
    }

    [Test]
    public void SlopeFitRecoversAKnownPowerLaw()
    {
        double[] n = [256, 512, 1024, 2048, 4096];
        var (slope, se) = TabularExperiment.FitSlope([.. n.Select(v => Math.Log(v))], [.. n.Select(v => Math.Log(3.0 / v))]);
        Assert.That(slope, Is.EqualTo(-1).Within(1e-12));
        Assert.That(se, Is.EqualTo(0).Within(1e-9));
        // With alternating ±5% noise the slope moves a little and gets a nonzero standard error.
        var (noisy, noisySe) = TabularExperiment.FitSlope([.. n.Select(v => Math.Log(v))], [.. n.Select((v, i) => Math.Log(3.0 / v * (i % 2 == 0 ? 1.05 : 0.95)))]);
        Assert.That(noisy, Is.EqualTo(-1).Within(0.05));
        Assert.That(noisySe, Is.GreaterThan(0));
        var (mean, standardError) = TabularExperiment.MeanAndStandardError([1.0, 2.0, 3.0, 4.0]);
        Assert.That(mean, Is.EqualTo(2.5));
        Assert.That(standardError, Is.EqualTo(Math.Sqrt(5.0 / 3.0 / 4.0)).Within(1e-15));
    }

    [Test]
    public void ClosedFormsAreTheOptimaTheyClaim()
    {
        // RKL at β = 0 is exp(R̂/γ); RLHF at β = γ with R̂ = γ ln π* is π0·π* normalised.
        var problem = TabularProblem.Create(seed: 4, contexts: 2, responses: 3, logitStd: 0.5);
        var reward = TabularReward.FromValues(2, 3, [.. Enumerable.Range(0, 6).Select(i => (float)(0.5 * problem.TargetLogProb(i / 3, i % 3)))]);
        var data = new TabularPairCounts(2, 3, problem.DrawPairs(10));
        var input = new TabularRunInput(problem, data, reward, new TabularTrainingSchedule());
        var rkl = new ClosedFormReverseKl().Fit(input, 0);
        Assert.That(problem.ForwardKl(rkl.Logits), Is.EqualTo(0).Within(1e-12));
        var rlhf = new ClosedFormRlhf().Fit(input, 0.5);
        var expected = Enumerable.Range(0, 6).Select(i => problem.ReferenceLogits[i] + problem.TargetLogProb(i / 3, i % 3)).ToArray();
        Assert.That(problem.ForwardKl(rlhf.Logits), Is.EqualTo(problem.ForwardKl(expected)).Within(1e-6));
    }

    [Test]
    public void TheRlhfFloorLiesBetweenZeroAndTheBestOfItsSimpleCandidates()
    {
        var problem = TabularProblem.Create(seed: 8, logitStd: 0.3);
        double floor = TabularExperiment.RlhfFloor(problem);
        // β = γ gives π ∝ π0·π*; β → ∞ gives π0. The floor is at most either and above 0 (π0 is not uniform).
        var product = Enumerable.Range(0, problem.TargetLogits.Length)
            .Select(i => problem.ReferenceLogits[i] + problem.TargetLogProb(i / problem.Responses, i % problem.Responses)).ToArray();
        TestContext.Out.WriteLine($"floor {floor:E3}, π0·π* {problem.ForwardKl(product):E3}, π0 {problem.ForwardKl(problem.ReferenceLogits):E3}");
        Assert.That(floor, Is.GreaterThan(0));
        Assert.That(floor, Is.LessThanOrEqualTo(problem.ForwardKl(product) * (1 + 1e-3)), "the 400-point β grid lands near β = γ");
        Assert.That(floor, Is.LessThan(problem.ForwardKl(problem.ReferenceLogits)));
    }

    [Test]
    public void DistillationAndRebelReachTheirTabularOptima()
    {
        // With a known R̂: distillation (β = 0) → softmax(R̂/γ); REBEL after T rounds → π0·exp(TηR̂), RLHF at β = 1/(Tη).
        // The default 100-step schedule, on logits 5× as spread as the experiment's (larger moves, harder).
        var problem = TabularProblem.Create(seed: 6, contexts: 3, responses: 4, logitStd: 0.5);
        var reward = TabularReward.FromValues(3, 4, [.. Enumerable.Range(0, 12).Select(i => (float)(0.5 * problem.TargetLogProb(i / 4, i % 4)))]);
        var input = new TabularRunInput(problem, new TabularPairCounts(3, 4, problem.DrawPairs(10)), reward, new TabularTrainingSchedule());
        var distilled = new Distillation().Fit(input, 0);
        TestContext.Out.WriteLine($"distillation: KL(π*‖π̂) = {problem.ForwardKl(distilled.Logits):E2}, ‖∇‖ = {distilled.GradientNorm:E1}");
        Assert.That(problem.ForwardKl(distilled.Logits), Is.LessThan(2e-5));
        const double eta = 0.5;
        var rebel = new Rebel().Fit(input, eta);
        var rlhf = new ClosedFormRlhf().Fit(input, 1.0 / (Rebel.Iterations * eta));
        double worst = 0;
        for (int x = 0; x < 3; x++)
        {
            var a = TabularProblem.LogSoftmaxRows([.. rebel.Logits.Skip(4 * x).Take(4).Select(v => (double)v)], 4);
            var b = TabularProblem.LogSoftmaxRows([.. rlhf.Logits.Skip(4 * x).Take(4).Select(v => (double)v)], 4);
            for (int y = 0; y < 4; y++) worst = Math.Max(worst, Math.Abs(a[y] - b[y]));
        }
        TestContext.Out.WriteLine($"REBEL vs π0·exp(TηR̂): max |Δ ln π| = {worst:E2}, ‖∇‖ = {rebel.GradientNorm:E1}");
        Assert.That(worst, Is.LessThan(5e-3));
    }

    private static TabularExperimentOptions Tiny(int threads) => new()
    {
        Ns = [32, 64, 128], Seeds = 2, Threads = threads, Schedule = new TabularTrainingSchedule(Steps: 10), RewardSteps = 50,
    };

    [Test]
    public void ATinyRunWritesFiniteTablesAndAPlot()
    {
        var result = TabularExperiment.Run(Tiny(threads: 2));
        string dir = Directory.CreateTempSubdirectory("distalign-tabular-").FullName;
        try
        {
            var paths = TabularReport.WriteAll(result, dir);
            Assert.That(paths.Select(Path.GetFileName), Is.EqualTo(TabularReport.Files));
            foreach (var path in paths) Assert.That(new FileInfo(path).Length, Is.GreaterThan(100), path);
            var png = File.ReadAllBytes(Path.Combine(dir, "kl_vs_n.png"));
            Assert.That(png.Take(4), Is.EqualTo(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }));
            var summary = File.ReadAllLines(Path.Combine(dir, "summary.csv"));
            int methods = TabularMethods.All().Count + 1;
            Assert.That(summary, Has.Length.EqualTo(1 + 3 * methods));
            foreach (var line in summary.Skip(1))
            {
                var fields = line.Split(',');
                Assert.That(double.IsFinite(double.Parse(fields[4], System.Globalization.CultureInfo.InvariantCulture)), line);
                Assert.That(double.Parse(fields[4], System.Globalization.CultureInfo.InvariantCulture), Is.GreaterThanOrEqualTo(0), line);
            }
            int expectedRuns = 2 * 3 * TabularMethods.All().Sum(m => m.Grid.Count);
            Assert.That(File.ReadAllLines(Path.Combine(dir, "runs.csv")), Has.Length.EqualTo(1 + expectedRuns));
            var markdown = File.ReadAllText(Path.Combine(dir, "results.md"));
            Assert.That(markdown, Does.Contain("| 128 |").And.Contain("PMLE β=0").And.Contain("Log–log slopes"));
            Assert.That(result.Slopes.Select(s => s.Method), Is.EquivalentTo(result.Summary.Select(r => r.Method).Distinct()));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Test]
    public void TwoRunsAreBitIdenticalWhateverTheThreadCount()
    {
        var a = TabularExperiment.Run(Tiny(threads: 2));
        var b = TabularExperiment.Run(Tiny(threads: 2));
        var c = TabularExperiment.Run(Tiny(threads: 1));
        Assert.That(a.Runs, Has.Count.EqualTo(b.Runs.Count));
        for (int i = 0; i < a.Runs.Count; i++)
        {
            Assert.That(b.Runs[i], Is.EqualTo(a.Runs[i]));
            Assert.That(c.Runs[i], Is.EqualTo(a.Runs[i]));
        }
        Assert.That(TabularReport.SummaryCsv(b), Is.EqualTo(TabularReport.SummaryCsv(a)));
    }

    [Test]
    public void PreferenceMleImprovesWithMoreData()
    {
        var result = TabularExperiment.Run(new TabularExperimentOptions
        {
            Ns = [64, 8192], Seeds = 2, Methods = [new PreferenceMle()], Threads = 2,
        });
        double Kl(string method, int n) => result.Summary.First(r => r.Method == method && r.N == n).MeanKl;
        TestContext.Out.WriteLine($"PMLE β=0: {Kl(TabularExperiment.UntunedPmle, 64):E2} → {Kl(TabularExperiment.UntunedPmle, 8192):E2}; tuned: {Kl("PMLE", 64):E2} → {Kl("PMLE", 8192):E2}");
        Assert.That(Kl(TabularExperiment.UntunedPmle, 8192), Is.LessThan(Kl(TabularExperiment.UntunedPmle, 64) / 10));
        Assert.That(Kl("PMLE", 8192), Is.LessThan(Kl("PMLE", 64)));
    }

    [Test]
    public void ThePpoCheckTrainsRlhfAndRklAtTheirTunedBeta()
    {
        var result = TabularExperiment.Run(new TabularExperimentOptions
        {
            Ns = [4096], Seeds = 1, Methods = [new ClosedFormRlhf(), new ClosedFormReverseKl()], PpoCheck = true, PpoIterations = 100, Threads = 2,
        });
        foreach (var (closedForm, ppo) in new[] { ("RLHF", "RLHF-PPO@tuned"), ("RKL", "RKL-PPO@tuned") })
        {
            var exact = result.Summary.Single(r => r.Method == closedForm);
            var trained = result.Summary.Single(r => r.Method == ppo);
            TestContext.Out.WriteLine($"{closedForm}: closed form {exact.MeanKl:E3}, PPO {trained.MeanKl:E3} at β = {trained.Parameter}");
            Assert.That(trained.Parameter, Is.EqualTo(exact.Parameter));
            // PPO is stochastic; it must land near the optimum it targets: within 10% of KL(π*‖π0) of the closed form's KL.
            Assert.That(trained.MeanKl, Is.EqualTo(exact.MeanKl).Within(0.1 * result.ReferenceKl));
        }
    }
}
