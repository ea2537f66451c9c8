using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// The on-policy objectives on the GPU against the CPU, at the tiny odd shape of <see cref="GpuGptPolicyTests"/> (1 layer,
/// 2 heads, C = 12, V = 37, T = 16): GPU <see cref="GptPolicy"/>'s value head (shared and values-only, as a separate value
/// model) against <see cref="GptPolicy"/>'s, and one distill step, one REBEL step and one PPO iteration (rlhf, rkl with the
/// entropy in the reward, rlhf with a separate value model) with π, π0 and the value model on GpuGptPolicy and R̂'s backbone
/// on a <see cref="GpuGpt"/>, against the same step on CPU policies and a CPU reward model. Sampling decodes on the device
/// (GpuGptDecoder) with the CPU sampler's draws, so the samples are the CPU's (log-probs up to fp32 rounding); everything
/// after them differs only by fp32 summation order.
/// Tolerances: log-probs and values |Δ| ≤ 1e-5·max(1, |cpu|); gradients and weights after AdamW max|Δ| ≤ 1e-5 + 1e-4·max|cpu|
/// per tensor (<see cref="GpuVersusCpu"/>); step metrics within 1e-4·max(1, |cpu|).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuOnPolicyTests(string backend) : TinyGpuPolicyFixture(backend)
{
    private GptPolicy GpuPolicy(Gpt host, bool withValueHead = false) =>
        new(host, new AdamWSettings(), ownsModel: true, withValueHead: withValueHead, Device);

    private static List<PromptResponse> Sequences()
    {
        var random = new Random(5);
        int[] Tokens(int n) => [.. Enumerable.Range(0, n).Select(_ => random.Next(Config.VocabSize))];
        (int Prompt, int Response)[] lengths = [(3, 5), (2, 4), (6, 1), (1, 7), (4, 3), (5, 6), (2, 2)];
        return [.. lengths.Select(l => new PromptResponse(Tokens(l.Prompt), Tokens(l.Response)))];
    }

    private static List<int[]> Prompts()
    {
        var random = new Random(9);
        return [.. Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 1 + i % 4).Select(_ => random.Next(Config.VocabSize)).ToArray())];
    }

    private void AssertValuesClose(ReadOnlySpan<float> gpu, ReadOnlySpan<float> cpu, string what)
    {
        double worst = 0;
        for (int i = 0; i < cpu.Length; i++)
        {
            double d = Math.Abs((double)gpu[i] - cpu[i]), scale = Math.Max(1, Math.Abs(cpu[i]));
            worst = Math.Max(worst, d / scale);
            Assert.That(d, Is.LessThanOrEqualTo(1e-5 * scale), $"{what} {i}: gpu {gpu[i]:R} vs cpu {cpu[i]:R}");
        }
        TestContext.Out.WriteLine($"[{Backend}] {what}: worst |Δ|/max(1,|cpu|) = {worst:E2} over {cpu.Length}");
    }

    /// <summary>
    /// Shared value head: ScoreWithValues' log-probs and values, BackwardWithValues' backbone and head gradients, the joint clip's
    /// norm, and the weights and head after one clipped AdamW step agree with the CPU policy's; then the values-only path of a
    /// separate value model does too, and a snapshot and a weight copy carry the head.
    /// </summary>
    [Test]
    public void AValueHeadScoresBacksUpClipsAndStepsAsTheCpuPolicysDoes()
    {
        var sequences = Sequences();
        int tokens = PolicyScores.TokenCount(sequences);
        using var cpu = new GptPolicy(HostModel(), new AdamWSettings(), ownsModel: true, withValueHead: true);
        using var gpu = GpuPolicy(CopyOf(cpu.Model), withValueHead: true);
        RandomFloats(Config.Channels + 1, 8, 0.5).CopyTo(cpu.ValueHead!.Parameters, 0);   // a non-zero head: ∂L/∂h reaches the backbone
        cpu.ValueHead.Parameters.CopyTo(gpu.ValueHead!.Parameters, 0);

        float[] cpuLogProbs = new float[tokens], gpuLogProbs = new float[tokens], cpuValues = new float[tokens], gpuValues = new float[tokens];
        cpu.ScoreWithValues(sequences, cpuLogProbs, cpuValues);
        gpu.ScoreWithValues(sequences, gpuLogProbs, gpuValues);
        AssertValuesClose(gpuLogProbs, cpuLogProbs, "log-probs");
        AssertValuesClose(gpuValues, cpuValues, "values");

        var dLogProbs = RandomFloats(tokens, 17);
        var dValues = RandomFloats(tokens, 18);
        cpu.ZeroGradients();
        gpu.ZeroGradients();
        cpu.BackwardWithValues(dLogProbs, dValues);
        gpu.BackwardWithValues(dLogProbs, dValues);
        Assert.That(gpu.FirstNonFiniteGradient(), Is.Null);
        gpu.Engine.CopyStateTo(gpu.Model);   // the device gradients into the host model
        GpuVersusCpu.AssertEveryGradientClose(Backend, cpu.Model, gpu.Model);
        GpuVersusCpu.AssertTensorClose(Backend, gpu.ValueHead.Gradients, cpu.ValueHead.Gradients, "value head gradient");
        Assert.That(cpu.ValueHead.Gradients.Max(g => Math.Abs(g)), Is.GreaterThan(0));

        double cpuNorm = cpu.ClipGradients(0.05f), gpuNorm = gpu.ClipGradients(0.05f);
        Assert.That(cpuNorm, Is.GreaterThan(0.05), "the test must exercise clipping");
        Assert.That(gpuNorm, Is.EqualTo(cpuNorm).Within(RelativeTolerance * cpuNorm), "one global norm over backbone and head");
        cpu.OptimizerStep(1, 1e-2f);
        gpu.OptimizerStep(1, 1e-2f);
        gpu.CopyToHost();
        GpuVersusCpu.AssertTensorClose(Backend, gpu.Model.Parameters, cpu.Model.Parameters, "weights after one clipped AdamW step");
        GpuVersusCpu.AssertTensorClose(Backend, gpu.ValueHead.Parameters, cpu.ValueHead.Parameters, "value head after one clipped AdamW step");
        GpuVersusCpu.AssertTensorClose(Backend, gpu.ValueHead.AdamV, cpu.ValueHead.AdamV, "value head AdamW v");
        Assert.That(gpu.ValueHead.Parameters, Is.Not.EqualTo(RandomFloats(Config.Channels + 1, 8, 0.5)), "the head moved");

        // a separate value model: backbone and head alone
        cpu.ZeroGradients();
        gpu.ZeroGradients();
        cpu.ScoreValuesOnly(sequences, cpuValues);
        gpu.ScoreValuesOnly(sequences, gpuValues);
        AssertValuesClose(gpuValues, cpuValues, "values only");
        cpu.BackwardValuesOnly(dValues);
        gpu.BackwardValuesOnly(dValues);
        Assert.That(gpu.FirstNonFiniteGradient(), Is.Null);
        gpu.Engine.CopyStateTo(gpu.Model);   // the device gradients into the host model
        GpuVersusCpu.AssertEveryGradientClose(Backend, cpu.Model, gpu.Model, "values-only gradient");
        GpuVersusCpu.AssertTensorClose(Backend, gpu.ValueHead.Gradients, cpu.ValueHead.Gradients, "values-only head gradient");

        // snapshots and weight copies carry the head
        using var snapshot = (GptPolicy)gpu.Snapshot();
        Assert.That(snapshot.ValueHead!.Parameters, Is.EqualTo(gpu.ValueHead.Parameters));
        Assert.That(snapshot.ValueHead.AdamM, Is.All.EqualTo(0f));
        Array.Clear(snapshot.ValueHead.Parameters);
        snapshot.CopyWeightsFrom(gpu);
        Assert.That(snapshot.ValueHead.Parameters, Is.EqualTo(gpu.ValueHead.Parameters));
        using var plain = GpuPolicy(HostModel());
        Assert.Throws<InvalidOperationException>(() => plain.ScoreWithValues(sequences, gpuLogProbs, gpuValues));
    }

    /// <summary>
    /// Per-token entropies H(π(· | prefix)) from Score and ScoreWithValues, and the gradient of a loss on log-probs, entropies and
    /// values (BackwardWithValues: the value head's rows scattered on the device) and on log-probs and entropies (Backward), as the
    /// CPU policy's; an entropy gradient without entropies in the forward is refused.
    /// </summary>
    [Test]
    public void EntropiesAndTheirGradientAreTheCpuPolicys()
    {
        var sequences = Sequences();
        int tokens = PolicyScores.TokenCount(sequences);
        using var cpu = new GptPolicy(HostModel(), new AdamWSettings(), ownsModel: true, withValueHead: true);
        using var gpu = GpuPolicy(CopyOf(cpu.Model), withValueHead: true);
        RandomFloats(Config.Channels + 1, 8, 0.5).CopyTo(cpu.ValueHead!.Parameters, 0);
        cpu.ValueHead.Parameters.CopyTo(gpu.ValueHead!.Parameters, 0);
        float[] cpuLogProbs = new float[tokens], gpuLogProbs = new float[tokens], cpuValues = new float[tokens], gpuValues = new float[tokens];
        float[] cpuEntropies = new float[tokens], gpuEntropies = new float[tokens];
        var dLogProbs = RandomFloats(tokens, 17);
        var dValues = RandomFloats(tokens, 18);
        var dEntropies = RandomFloats(tokens, 19);

        cpu.ScoreWithValues(sequences, cpuLogProbs, cpuValues, cpuEntropies);
        gpu.ScoreWithValues(sequences, gpuLogProbs, gpuValues, gpuEntropies);
        AssertValuesClose(gpuLogProbs, cpuLogProbs, "log-probs (with entropies)");
        AssertValuesClose(gpuValues, cpuValues, "values (with entropies)");
        AssertValuesClose(gpuEntropies, cpuEntropies, "entropies");
        Assert.That(cpuEntropies, Is.All.GreaterThan(0.5f), "a near-uniform tiny model: entropies near ln V");
        cpu.ZeroGradients();
        gpu.ZeroGradients();
        cpu.BackwardWithValues(dLogProbs, dValues, dEntropies);
        gpu.BackwardWithValues(dLogProbs, dValues, dEntropies);
        Assert.That(gpu.FirstNonFiniteGradient(), Is.Null);
        gpu.Engine.CopyStateTo(gpu.Model);   // the device gradients into the host model
        GpuVersusCpu.AssertEveryGradientClose(Backend, cpu.Model, gpu.Model, "gradient of log-probs, values and entropies");
        GpuVersusCpu.AssertTensorClose(Backend, gpu.ValueHead.Gradients, cpu.ValueHead.Gradients, "value head gradient (with entropies)");

        // the entropy term alone moves the gradient: Backward with and without it differ, each as on the CPU
        cpu.Score(sequences, cpuLogProbs, cpuEntropies);
        gpu.Score(sequences, gpuLogProbs, gpuEntropies);
        AssertValuesClose(gpuEntropies, cpuEntropies, "entropies (Score)");
        cpu.ZeroGradients();
        gpu.ZeroGradients();
        cpu.Backward(dLogProbs, dEntropies);
        gpu.Backward(dLogProbs, dEntropies);
        Assert.That(gpu.FirstNonFiniteGradient(), Is.Null);
        gpu.Engine.CopyStateTo(gpu.Model);   // the device gradients into the host model
        GpuVersusCpu.AssertEveryGradientClose(Backend, cpu.Model, gpu.Model, "gradient of log-probs and entropies");
        var withEntropy = gpu.Model.Gradients.ToArray();
        gpu.ZeroGradients();
        gpu.Backward(dLogProbs);
        Assert.That(gpu.FirstNonFiniteGradient(), Is.Null);
        gpu.Engine.CopyStateTo(gpu.Model);   // the device gradients into the host model
        Assert.That(gpu.Model.Gradients.ToArray(), Is.Not.EqualTo(withEntropy), "∂L/∂H reaches the weights");

        gpu.Score(sequences, gpuLogProbs);
        Assert.Throws<InvalidOperationException>(() => gpu.Backward(dLogProbs, dEntropies), "no entropies in the last forward");
    }

    private RewardModel CpuReward()
    {
        var backbone = HostModel(seed: 31);
        var rm = new RewardModel(backbone, new AdamWSettings(), ownsBackbone: true);
        RandomFloats(Config.Channels, 32, 1.0).CopyTo(rm.HeadWeight);
        return rm;
    }

    // R̂ with its backbone on the device, the same weights and head as CpuReward().
    private RewardModel GpuReward()
    {
        var rm = new RewardModel(HostModel(seed: 31), new AdamWSettings(), ownsBackbone: true, Device);
        RandomFloats(Config.Channels, 32, 1.0).CopyTo(rm.HeadWeight);
        return rm;
    }

    private static IEnumerable<KeyValuePair<string, double>> Deterministic(AlignmentStepReport r) =>
        r.Metrics.Where(m => !m.Key.EndsWith("seconds", StringComparison.Ordinal) && !m.Key.EndsWith("per_second", StringComparison.Ordinal));

    private void AssertFollows(AlignmentStepReport actual, AlignmentStepReport expected)
    {
        var cpu = Deterministic(expected).ToList();
        var gpu = Deterministic(actual).ToDictionary();
        Assert.That(gpu.Keys, Is.EquivalentTo(cpu.Select(m => m.Key)));
        TestContext.Out.WriteLine($"[{Backend}] " + string.Join(", ", cpu.Select(m => $"{m.Key} cpu {m.Value:G6} gpu {gpu[m.Key]:G6}")));
        foreach (var (key, value) in cpu)
            Assert.That(gpu[key], Is.EqualTo(value).Within(RelativeTolerance * Math.Max(1, Math.Abs(value))), key);
    }

    private static List<PreferencePair> PromptPairs() =>
        [.. Prompts().Select((p, i) => new PreferencePair(p, [1 + i, 2], [3 + i]))];

    /// <summary>One distill step (pairs sampled from π, with the sampled KL to π0) and one REBEL step: metrics and weights as on the CPU.</summary>
    [TestCase("distill")]
    [TestCase("rebel")]
    public void AnOnPolicyPairStepFollowsTheCpuPolicies(string objective)
    {
        var options = new AlignmentTrainingOptions
        {
            Objective = AlignmentObjective.OnPolicy,
            Loss = objective == "distill" ? new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: 0.5)
                                          : new PairwiseLossSettings(PairwiseLossVariant.Rebel, Eta: 2),
            Kl = objective == "distill" ? new KlRegularizer(Beta: 0.5, SamplesPerPrompt: 2, MaxNewTokens: 3) : null,
            Sampling = new SamplingOptions(4), Steps = 1, BatchPairs = 3, LearningRate = 1e-2f, WarmupSteps = 0, GradientClip = 0.5f,
            EvalFraction = 0, Seed = 4,
        }.Validate();
        AlignmentStepReport Step(GptPolicy policy, IRewardFunction reward)
        {
            using var reference = policy.Snapshot();
            return new AlignmentTrainer(policy, reference, PromptPairs(), null, options, reward).TrainStep();
        }
        using var cpu = new GptPolicy(HostModel(), new AdamWSettings(), ownsModel: true);
        using var cpuReward = CpuReward();
        var expected = Step(cpu, cpuReward);
        using var gpu = GpuPolicy(HostModel());
        using (var gpuReward = GpuReward())
        {
            var actual = Step(gpu, gpuReward);
            AssertFollows(actual, expected);
        }
        Assert.That(expected["grad_norm"], Is.GreaterThan(0.5), "clipping must be active");
        gpu.CopyToHost();
        GpuVersusCpu.AssertTensorClose(Backend, gpu.Model.Parameters, cpu.Model.Parameters, $"weights after one {objective} step");
    }

    /// <summary>
    /// One PPO iteration (a rollout of 4 prompts, 1 epoch × 2 minibatches): rkl (entropy in the reward, and exact: the entropies and
    /// their gradient from the device's LM head) with the shared value head and rlhf with a separate value model (rlhf with the shared head runs end to end in <c>OnPolicyCudaCliTests</c>); every deterministic
    /// metric as on the CPU, and the update of the weights and value heads: ‖w_gpu − w_cpu‖₂ ≤ 1e-3·‖w_cpu − w_0‖₂. (Not per element:
    /// AdamW moves an element with a near-zero gradient by about ±lr whatever its size, so fp32 summation order can flip a few.)
    /// </summary>
    [TestCase("rkl")]
    [TestCase("rkl-exact")]
    [TestCase("rlhf-separate")]
    public void APpoIterationFollowsTheCpuPolicies(string objective)
    {
        bool separate = objective.EndsWith("-separate", StringComparison.Ordinal);
        var options = new PpoOptions
        {
            Objective = objective.StartsWith("rkl", StringComparison.Ordinal) ? PpoObjective.ReverseKl : PpoObjective.Rlhf,
            Beta = 0.05, Gamma = objective.StartsWith("rkl", StringComparison.Ordinal) ? 0.1 : 0, Steps = 1, PromptsPerIteration = 4,
            Epochs = 1, Minibatches = 2, Sampling = new SamplingOptions(4), LearningRate = 1e-2f, GradientClip = 0.5f, Seed = 13,
            Entropy = objective == "rkl-exact" ? EntropyBonus.Exact : EntropyBonus.InReward,
        }.Validate();
        var initial = new List<float>();   // w_0, read at the start of the first (CPU) iteration
        (AlignmentStepReport Report, float[] Weights) Iterate(Func<Gpt, bool, GptPolicy> create, IRewardFunction reward)
        {
            using var policy = create(HostModel(), !separate);
            using var reference = policy.Snapshot();
            using var valueModel = separate ? create(HostModel(seed: 41), true) : null;
            if (initial.Count == 0) Weights(policy, valueModel, initial);
            IValuePolicy trained = valueModel is null ? policy : new PolicyWithValueModel(policy, valueModel);
            var report = new PpoTrainer(trained, reference, reward, Prompts(), options).TrainStep();
            policy.CopyToHost();
            valueModel?.CopyToHost();
            return (report, Weights(policy, valueModel, []));
        }
        // π's weights, the value head, the separate value model's backbone
        static float[] Weights(GptPolicy policy, GptPolicy? valueModel, List<float> into)
        {
            into.AddRange(policy.Model.Parameters.ToArray());
            into.AddRange((valueModel ?? policy).ValueHead!.Parameters);
            if (valueModel is not null) into.AddRange(valueModel.Model.Parameters.ToArray());
            return [.. into];
        }
        using var cpuReward = CpuReward();
        var (expected, cpuWeights) = Iterate((m, head) => new GptPolicy(m, new AdamWSettings(), ownsModel: true, withValueHead: head), cpuReward);
        using (var gpuReward = GpuReward())
        {
            var (actual, gpuWeights) = Iterate((m, head) => GpuPolicy(m, head), gpuReward);
            AssertFollows(actual, expected);
            GpuVersusCpu.AssertUpdateClose(Backend, initial.ToArray(), cpuWeights, gpuWeights, $"{objective}: weights and value heads after one iteration");
        }
        Assert.That(expected["objective/scores"], Is.Not.EqualTo(0), "R̂ scores the rollout");
        Assert.That(expected["loss/value_avg"], Is.GreaterThan(0), "the value head trains");
    }
}
