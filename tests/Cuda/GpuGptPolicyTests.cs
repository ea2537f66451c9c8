using DistAlign.Alignment.Benchmarks;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;
using ILGPU.Runtime;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// GPU <see cref="GptPolicy"/> against the CPU <see cref="GptPolicy"/> at a tiny odd shape (1 layer, 2 heads, C = 12,
/// V = 37, T = 16; several sequences packed per row, a length-1 response): token log-probs, every gradient tensor,
/// snapshots, weight copies, sampling after a step, DPO and PMLE+KL steps through <see cref="AlignmentTrainer"/>, and a
/// checkpoint resume that must be bit-identical to an uninterrupted GPU run. On the simulator and (skipped here) on CUDA.
/// The simulator costs about 1 s per training step at this size (kernel launches), so the runs are a few small steps each;
/// <see cref="GpuGptTests"/> covers two layers.
/// Tolerances (fp32; the GPU sums in other orders): log-probs |Δ| ≤ 1e-5·max(1, |cpu|); per gradient tensor and for
/// weights after AdamW, max|Δ| ≤ 1e-5 + 1e-4·max|cpu| (as <see cref="GpuGptTests"/>); step metrics within 1e-4·max(1, |cpu|).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuGptPolicyTests(string backend) : TinyGpuPolicyFixture(backend)
{
    private GptPolicy GpuPolicy(Gpt host, AdamWSettings? optimizer = null) =>
        new(host, optimizer ?? new AdamWSettings(), ownsModel: true, device: Device);

    /// <summary>Seven sequences, 1–6 prompt tokens and 1–7 response tokens (sequence 2's response is one token): three packed rows of T = 16.</summary>
    private static List<PromptResponse> Sequences()
    {
        var random = new Random(5);
        int[] Tokens(int n) => [.. Enumerable.Range(0, n).Select(_ => random.Next(Config.VocabSize))];
        (int Prompt, int Response)[] lengths = [(3, 5), (2, 4), (6, 1), (1, 7), (4, 3), (5, 6), (2, 2)];
        return [.. lengths.Select(l => new PromptResponse(Tokens(l.Prompt), Tokens(l.Response)))];
    }

    /// <summary>Twelve preference pairs over the tiny vocabulary, some sharing a prompt, some with one-token responses.</summary>
    private static List<PreferencePair> Pairs()
    {
        var random = new Random(9);
        int[] Tokens(int n) => [.. Enumerable.Range(0, n).Select(_ => random.Next(Config.VocabSize))];
        var pairs = new List<PreferencePair>();
        for (int i = 0; i < 12; i++)
            pairs.Add(new PreferencePair(Tokens(1 + i % 4), Tokens(1 + i % 5), Tokens(1 + (i * 3) % 6)));
        return pairs;
    }

    [Test]
    public void ScoresAndEveryGradientMatchTheCpuPolicyThenAClippedAdamWStepDoes()
    {
        var sequences = Sequences();
        int tokens = PolicyScores.TokenCount(sequences);
        using var cpu = new GptPolicy(HostModel(), new AdamWSettings(), ownsModel: true);
        using var gpu = GpuPolicy(CopyOf(cpu.Model));

        var cpuLogProbs = new float[tokens];
        var gpuLogProbs = new float[tokens];
        cpu.Score(sequences, cpuLogProbs);
        gpu.Score(sequences, gpuLogProbs);
        double worstLogProb = 0;
        for (int i = 0; i < tokens; i++)
        {
            double d = Math.Abs((double)gpuLogProbs[i] - cpuLogProbs[i]);
            worstLogProb = Math.Max(worstLogProb, d / Math.Max(1, Math.Abs(cpuLogProbs[i])));
            Assert.That(d, Is.LessThanOrEqualTo(1e-5 * Math.Max(1, Math.Abs(cpuLogProbs[i]))), $"token {i}: gpu {gpuLogProbs[i]:R} vs cpu {cpuLogProbs[i]:R}");
        }
        TestContext.Out.WriteLine($"[{Backend}] {tokens} response tokens in {sequences.Count} sequences; worst log-prob |Δ|/max(1,|cpu|) = {worstLogProb:E2}");

        var dTokens = RandomFloats(tokens, 17);
        cpu.ZeroGradients();
        gpu.ZeroGradients();
        cpu.Backward(dTokens);
        gpu.Backward(dTokens);
        Assert.That(gpu.FirstNonFiniteGradient(), Is.Null);
        gpu.Engine.CopyStateTo(gpu.Model);   // the device gradients into the host model
        AssertEveryGradientClose(cpu.Model, gpu.Model);

        double cpuNorm = cpu.ClipGradients(0.05f), gpuNorm = gpu.ClipGradients(0.05f);
        Assert.That(gpuNorm, Is.EqualTo(cpuNorm).Within(RelativeTolerance * cpuNorm));
        Assert.That(cpuNorm, Is.GreaterThan(0.05), "the test must exercise clipping");
        cpu.OptimizerStep(1, 1e-2f);
        gpu.OptimizerStep(1, 1e-2f);
        gpu.CopyToHost();
        AssertClose(gpu.Model.AdamV, cpu.Model.AdamV, "AdamW v after one step");
        AssertClose(gpu.Model.Parameters, cpu.Model.Parameters, "weights after one clipped AdamW step (weight decay 0.1 on the matrices)");
    }

    [Test]
    public void ASnapshotIsIndependentAndCopyWeightsFromMakesTheScoresEqual()
    {
        var sequences = Sequences().Take(3).ToList();
        int tokens = PolicyScores.TokenCount(sequences);
        using var policy = GpuPolicy(HostModel());
        var before = new float[tokens];
        policy.Score(sequences, before);
        using var snapshot = (GptPolicy)policy.Snapshot();
        Assert.That(snapshot.Engine, Is.Not.SameAs(policy.Engine), "a snapshot has its own engine");
        Assert.That(snapshot.Device, Is.SameAs(policy.Device), "on the same device");

        policy.ZeroGradients();
        policy.Score(sequences, new float[tokens]);
        policy.Backward(RandomFloats(tokens, 3));
        policy.OptimizerStep(1, 1e-2f);
        var after = new float[tokens];
        var frozen = new float[tokens];
        policy.Score(sequences, after);
        snapshot.Score(sequences, frozen);
        Assert.That(frozen, Is.EqualTo(before), "the snapshot keeps the weights it was taken with");
        Assert.That(after, Is.Not.EqualTo(before), "the step moved the policy");
        snapshot.CopyToHost();
        Assert.That(snapshot.Model.AdamM.ToArray(), Is.All.EqualTo(0f), "a snapshot starts with zero moments");

        snapshot.CopyWeightsFrom(policy);
        snapshot.Score(sequences, frozen);
        Assert.That(frozen, Is.EqualTo(after), "same weights, same device: bit-identical scores");
        // across engines the weights go through the host: a CPU policy's weights land on the device unchanged
        using var other = new GptPolicy(HostModel(seed: 12), new AdamWSettings(), ownsModel: true);
        snapshot.CopyWeightsFrom(other);
        var copied = new float[other.Model.Layout.TotalElements];
        snapshot.Engine.CopyParametersToHost(copied);
        Assert.That(copied, Is.EqualTo(other.Model.Parameters.ToArray()));
        using var otherShape = new GptPolicy(new Gpt(Config with { Channels = 16 }), new AdamWSettings(), ownsModel: true);
        Assert.Throws<ArgumentException>(() => snapshot.CopyWeightsFrom(otherShape));
    }

    [Test]
    public void SamplingAfterAnOptimizerStepDecodesTheUpdatedDeviceWeights()
    {
        using var policy = GpuPolicy(HostModel());
        int[][] prompts = [[1, 2, 3], [4], [5, 6]];
        var options = new SamplingOptions(5);
        var first = policy.Sample(prompts, options, seed: 21);

        var sequences = Sequences();
        int tokens = PolicyScores.TokenCount(sequences);
        policy.ZeroGradients();
        policy.Score(sequences, new float[tokens]);
        policy.Backward(RandomFloats(tokens, 4));
        policy.OptimizerStep(1, 5e-2f);

        // the updated weights, read straight off the device (not through the policy's mirror)
        using var stepped = new Gpt(Config);
        policy.Engine.CopyParametersToHost(stepped.Parameters);
        var expected = Sampler.Generate(stepped, prompts, options, seed: 21);
        var second = policy.Sample(prompts, options, seed: 21);
        for (int r = 0; r < prompts.Length; r++)
        {
            // decoded on the device (GpuGptDecoder): the CPU sampler's draws, log-probs equal up to fp32 rounding
            Assert.That(second[r].Tokens, Is.EqualTo(expected[r].Tokens), $"row {r}");
            Assert.That(second[r].LogProbs, Is.EqualTo(expected[r].LogProbs).Within(1e-5f), $"row {r}");
        }
        Assert.That(second.SelectMany(c => c.LogProbs), Is.Not.EqualTo(first.SelectMany(c => c.LogProbs)), "the step changed the distribution");
    }

    private static AlignmentTrainingOptions DpoOptions(int steps) => new()
    {
        Loss = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.5),
        Steps = steps, BatchPairs = 2, LearningRate = 1e-2f, WarmupSteps = 1, GradientClip = 0.5f, EvalFraction = 0.25, EvaluateEvery = 4, Seed = 4,
    };

    private static IEnumerable<KeyValuePair<string, double>> Deterministic(AlignmentStepReport r) =>
        r.Metrics.Where(m => !m.Key.EndsWith("seconds", StringComparison.Ordinal) && !m.Key.EndsWith("per_second", StringComparison.Ordinal));

    private void AssertFollows(IReadOnlyList<AlignmentStepReport> actual, IReadOnlyList<AlignmentStepReport> expected, params string[] metrics)
    {
        Assert.That(actual, Has.Count.EqualTo(expected.Count));
        for (int s = 0; s < expected.Count; s++)
        {
            TestContext.Out.WriteLine($"[{Backend}] step {s + 1}: " + string.Join(", ", metrics.Where(expected[s].Has).Select(m => $"{m} cpu {expected[s][m]:R} gpu {actual[s][m]:R}")));
            Assert.That(actual[s]["lr"], Is.EqualTo(expected[s]["lr"]));
            foreach (var m in metrics.Where(expected[s].Has))
                Assert.That(actual[s][m], Is.EqualTo(expected[s][m]).Within(RelativeTolerance * Math.Max(1, Math.Abs(expected[s][m]))), $"step {s + 1}: {m}");
        }
    }

    /// <summary>
    /// Four DPO steps through <see cref="AlignmentRun"/> (checkpoints every 2): on the CPU policy, on the GPU policy straight
    /// through, and on the GPU policy stopped after step 2 and resumed by a fresh policy from the checkpoint. The GPU run
    /// follows the CPU run within tolerance; the resumed run repeats the straight one bit for bit (its first two steps are
    /// a repeat from the same start, its last two a restore of weights and AdamW moments), metrics, weights and checkpoint.
    /// </summary>
    [Test]
    public void DpoStepsFollowTheCpuPolicyAndACheckpointResumeIsBitIdentical()
    {
        var pairs = Pairs();
        var options = DpoOptions(4);
        float[]? gpuRefs = null;   // ln π0 on the GPU, computed once for the three GPU runs (all start from the same π0)
        List<AlignmentStepReport> RunTo(GptPolicy policy, string folder, int stopAfter, bool resume)
        {
            using var reference = policy.Snapshot();
            var refs = !policy.Device.IsCpu ? gpuRefs ??= OfflinePreferenceObjective.ReferenceLogProbs(reference, pairs)
                                              : OfflinePreferenceObjective.ReferenceLogProbs(reference, pairs);
            var trainer = new AlignmentTrainer(policy, reference, pairs, refs, options);
            var run = new AlignmentRun(trainer, policy, folder, "gpt2-k2000", "{\"objective\":\"dpo\"}", checkpointEvery: 2);
            run.Start(resume);
            var reports = new List<AlignmentStepReport>();
            while (trainer.Step < stopAfter) reports.Add(run.Step());
            policy.CopyToHost();
            return reports;
        }
        string cpuFolder = Path.Combine(RunDirectory, "cpu"), straight = Path.Combine(RunDirectory, "straight"), resumed = Path.Combine(RunDirectory, "resumed");
        using var cpu = new GptPolicy(HostModel(), new AdamWSettings(), ownsModel: true);
        var expected = RunTo(cpu, cpuFolder, 4, resume: false);
        using var gpu = GpuPolicy(HostModel());
        var actual = RunTo(gpu, straight, 4, resume: false);
        List<AlignmentStepReport> repeated;
        using (var first = GpuPolicy(HostModel())) repeated = RunTo(first, resumed, 2, resume: false);
        using var second = GpuPolicy(HostModel());
        repeated.AddRange(RunTo(second, resumed, 4, resume: true));

        AssertFollows(actual, expected, "loss", "grad_norm", "rewards/margins", "eval_loss");
        Assert.That(expected.Max(r => r["grad_norm"]), Is.GreaterThan(options.GradientClip), "clipping must be active");
        Assert.That(expected[3].Has("eval_loss"), "the last step evaluates");
        using (var start = HostModel())
            GpuVersusCpu.AssertUpdateClose(Backend, start.Parameters, cpu.Model.Parameters, gpu.Model.Parameters, "weights after 4 DPO steps");
        for (int s = 0; s < 4; s++)
            Assert.That(Deterministic(repeated[s]), Is.EqualTo(Deterministic(actual[s])), $"step {s + 1} of the resumed run");
        Assert.That(second.Model.Parameters.ToArray(), Is.EqualTo(gpu.Model.Parameters.ToArray()), "weights after resuming at step 2");
        Assert.That(second.Model.AdamV.ToArray(), Is.EqualTo(gpu.Model.AdamV.ToArray()), "AdamW v after resuming at step 2");
        using var saved = new Gpt(Config);
        var (state, _) = GptCheckpoint.LoadTraining(GptCheckpoint.LatestTraining(straight)!, saved);
        Assert.That(state.Step, Is.EqualTo(4));
        Assert.That(saved.Parameters.ToArray(), Is.EqualTo(gpu.Model.Parameters.ToArray()), "the last checkpoint holds the device's weights");
        Assert.That(saved.AdamV.ToArray(), Is.EqualTo(gpu.Model.AdamV.ToArray()), "and its AdamW moments");
    }

    /// <summary>PMLE with its sampled KL to π0 (samples drawn on the host mirror, scored on the device): two steps as on the CPU.</summary>
    [Test]
    public void APmleStepWithTheSampledKlFollowsTheCpuPolicy()
    {
        var pairs = Pairs();
        var options = DpoOptions(2) with
        {
            Loss = new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: 1.0),
            Kl = new KlRegularizer(Beta: 0.5, SamplesPerPrompt: 2, MaxNewTokens: 3),
            EvalFraction = 0, LearningRate = 1e-2f,
        };
        List<AlignmentStepReport> Step(IPolicy policy)
        {
            using var reference = policy.Snapshot();
            var trainer = new AlignmentTrainer(policy, reference, pairs, null, options);
            return [trainer.TrainStep(), trainer.TrainStep()];
        }
        using var cpu = new GptPolicy(HostModel(), new AdamWSettings(), ownsModel: true);
        using var gpu = GpuPolicy(HostModel());
        var expected = Step(cpu);
        var actual = Step(gpu);
        // step 2 samples from the stepped policy: on the GPU that needs the mirror refreshed after step 1
        AssertFollows(actual, expected, "loss", "pairwise_loss", "objective/kl", "grad_norm");
        Assert.That(expected[1]["objective/kl"], Is.Not.EqualTo(0), "after one step π differs from π0");
        gpu.CopyToHost();
        AssertClose(gpu.Model.Parameters, cpu.Model.Parameters, "weights after 2 PMLE+KL steps");
    }

    /// <summary><c>bench dpo --device cuda</c>'s measurement on the GPU policy: timed steps, and the per-op breakdown of the extra profiled step.</summary>
    [Test]
    public void TheDpoStepBenchmarkTimesTheGpuPolicyAndBreaksItsStepDown()
    {
        var m = PreferenceStepBenchmark.Run(Config, pairs: 2, promptTokens: 3, responseTokens: 4, warmup: 0, steps: 1,
                                            device: Device);
        TestContext.Out.WriteLine($"[{Backend}] DPO {m.DpoMedianMilliseconds:F0} ms, SFT {m.SftMedianMilliseconds:F0} ms; " +
                                  string.Join(", ", m.DpoOpMillisecondsPerStep.Select(o => $"{o.Op} {o.Milliseconds:F0}")));
        Assert.That(m.Tokens, Is.EqualTo(16), "2 pairs × (4 chosen + 4 rejected)");
        Assert.That(m.DpoMilliseconds, Has.Length.EqualTo(1).And.All.GreaterThan(0));
        Assert.That(m.SftMilliseconds, Has.Length.EqualTo(1).And.All.GreaterThan(0));
        Assert.That(m.DpoOpMillisecondsPerStep.Select(o => o.Op), Does.Contain("matmul fwd").And.Contain("matmul bwd").And.Contain("clip + AdamW"),
                    "the breakdown comes from GpuGpt's profile");
        Assert.That(m.DpoOpMillisecondsPerStep.Where(o => o.Op != "clip + AdamW" && !o.Op.StartsWith("other", StringComparison.Ordinal)).Sum(o => o.Milliseconds),
                    Is.GreaterThan(0));
    }

    private void AssertEveryGradientClose(Gpt cpu, Gpt fromGpu) => GpuVersusCpu.AssertEveryGradientClose(Backend, cpu, fromGpu);

    private double AssertClose(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, string what) =>
        GpuVersusCpu.AssertTensorClose(Backend, actual, expected, what);
}
