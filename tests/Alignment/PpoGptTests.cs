using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment;

/// <summary>PPO on the GPT: the value head's gradient through the shared backbone, a run that resumes bit-identically, reward that rises.</summary>
public class PpoGptTests : TemporaryRunFixture
{

    private static readonly GptConfig SmallConfig = new(Layers: 1, Heads: 2, Channels: 8, VocabSize: 17, MaxSequenceLength: 12);

    /// <summary>A small GPT with GPT-2 initialisation plus noise, so that no gradient is special.</summary>
    private static Gpt NoisyModel()
    {
        var model = new Gpt(SmallConfig);
        model.InitializeGpt2(5);
        var p = model.Parameters;
        var noise = Numerics.RandomFloats(p.Length, 6, 0.3);
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        return model;
    }

    [Test]
    public void ValueAndLogProbGradientsThroughTheSharedBackboneMatchFiniteDifferences()
    {
        var model = NoisyModel();
        using var policy = new GptPolicy(model, new AdamWSettings(WeightDecay: 0), ownsModel: true, withValueHead: true);
        var head = policy.ValueHead!;
        var headInit = Numerics.RandomFloats(head.Parameters.Length, 8, 0.5);
        headInit.CopyTo(head.Parameters, 0);
        List<PromptResponse> batch = [new([16, 3, 4], [5, 6]), new([16], [7, 8, 9, 10]), new([16, 2], [1])];
        int n = PolicyScores.TokenCount(batch);
        var a = Numerics.RandomFloats(n, 9, 1.0);   // L = Σ a_t ln π_t + Σ b_t V_t
        var b = Numerics.RandomFloats(n, 10, 1.0);

        policy.ZeroGradients();
        var lp = new float[n];
        var v = new float[n];
        policy.ScoreWithValues(batch, lp, v);
        policy.BackwardWithValues(a, b);
        var backbone = model.Gradients.ToArray();
        var headGradient = head.Gradients.ToArray();

        double Loss()
        {
            var l = new float[n];
            var vv = new float[n];
            policy.ScoreWithValues(batch, l, vv);
            double total = 0;
            for (int t = 0; t < n; t++) total += a[t] * (double)l[t] + b[t] * (double)vv[t];
            return total;
        }
        Numerics.AssertSampledGradient(model.Parameters, backbone, Loss, samples: 40, seed: 3);
        Numerics.AssertSampledGradient(head.Parameters, headGradient, Loss, samples: head.Parameters.Length, seed: 4);
    }

    [Test]
    public void ASeparateValueModelsGradientMatchesFiniteDifferences()
    {
        var model = NoisyModel();
        using var values = new GptPolicy(model, new AdamWSettings(WeightDecay: 0), ownsModel: true, withValueHead: true);
        Numerics.RandomFloats(values.ValueHead!.Parameters.Length, 8, 0.5).CopyTo(values.ValueHead.Parameters, 0);
        List<PromptResponse> batch = [new([16, 3, 4], [5, 6]), new([16], [7, 8, 9, 10])];
        int n = PolicyScores.TokenCount(batch);
        var b = Numerics.RandomFloats(n, 10, 1.0);
        values.ZeroGradients();
        var v = new float[n];
        values.ScoreValuesOnly(batch, v);
        values.BackwardValuesOnly(b);
        var analytic = model.Gradients.ToArray();
        double Loss()
        {
            var vv = new float[n];
            values.ScoreValuesOnly(batch, vv);
            double total = 0;
            for (int t = 0; t < n; t++) total += b[t] * (double)vv[t];
            return total;
        }
        Numerics.AssertSampledGradient(model.Parameters, analytic, Loss, samples: 40, seed: 3);
        // The values-only path agrees with the values read off the LM forward.
        var lp = new float[n];
        var v2 = new float[n];
        values.ScoreWithValues(batch, lp, v2);
        Numerics.AssertClose(v, Numerics.ToDouble(v2), 1e-6, 1e-6, "values");
    }

    private static PpoOptions Options(string objective) => new()
    {
        Objective = objective == "rlhf" ? PpoObjective.Rlhf : PpoObjective.ReverseKl,
        Beta = 0.05,
        Gamma = objective == "rlhf" ? 0 : 0.1,
        Entropy = objective == "rkl-exact" ? EntropyBonus.Exact : EntropyBonus.InReward,
        Steps = 4,
        PromptsPerIteration = 6,
        Epochs = 2,
        Minibatches = 2,
        Sampling = new SamplingOptions(5, EndOfText: Gpt2Tokenizer.FromSpec(TinyAlignmentSetup.TokenizerSpec).EndOfText),
        MissingEndPenalty = -1f,
        LearningRate = 3e-3f,
        Seed = 13,
    };

    private float[] Run(string outDir, string objective, int stopAfter, bool resume, string modelPath, List<int[]> prompts)
    {
        var (model, _) = GptCheckpoint.LoadModel(modelPath);
        bool separate = objective.EndsWith("-separate", StringComparison.Ordinal);
        using var gpt = new GptPolicy(model, new AdamWSettings(), ownsModel: true, withValueHead: !separate);
        using var reference = gpt.Snapshot();
        IValuePolicy policy = gpt;
        GptPolicy? valueModel = null;
        if (separate)
        {
            var valueGpt = new Gpt(model.Config);
            model.Parameters.CopyTo(valueGpt.Parameters);
            valueModel = new GptPolicy(valueGpt, new AdamWSettings(), ownsModel: true, withValueHead: true);
            policy = new PolicyWithValueModel(gpt, valueModel);
        }
        var trainer = new PpoTrainer(policy, reference, new TinyAlignmentSetup.EvenTokenReward(), prompts, Options(objective.Replace("-separate", "")));
        var run = new PpoRun(trainer, policy, outDir, TinyAlignmentSetup.TokenizerSpec, $"{{\"objective\":\"{objective}\"}}", checkpointEvery: 2);
        run.Start(resume);
        while (trainer.Step < stopAfter) run.Step();
        float[] result = separate ? [.. model.Parameters.ToArray(), .. valueModel!.Model.Parameters.ToArray(), .. valueModel.ValueHead!.Parameters]
                                  : [.. model.Parameters.ToArray(), .. gpt.ValueHead!.Parameters];
        valueModel?.Dispose();
        return result;
    }

    [TestCase("rlhf-separate")]
    [TestCase("rlhf")]
    [TestCase("rkl")]
    [TestCase("rkl-exact")]
    public void RunsAndResumesBitIdentically(string objective)
    {
        string modelPath = Path.Combine(RunDirectory, "pi0.safetensors");
        TinyAlignmentSetup.WriteModel(modelPath);
        var prompts = TinyAlignmentSetup.Pairs(TinyAlignmentSetup.Examples()).Select(p => p.Prompt).ToList();

        string straight = Path.Combine(RunDirectory, "straight"), split = Path.Combine(RunDirectory, "split");
        float[] w1 = Run(straight, objective, 4, resume: false, modelPath, prompts);
        Run(split, objective, 2, resume: false, modelPath, prompts);
        float[] w2 = Run(split, objective, 4, resume: true, modelPath, prompts);

        var m1 = AlignmentRun.ReadMetrics(Path.Combine(straight, AlignmentTrainer.MetricsFileName));
        var m2 = AlignmentRun.ReadMetrics(Path.Combine(split, AlignmentTrainer.MetricsFileName));
        Assert.That(m1, Has.Count.EqualTo(4));
        Assert.That(TinyAlignmentSetup.DeterministicColumns(m2), Is.EqualTo(TinyAlignmentSetup.DeterministicColumns(m1)));
        Assert.That(w2, Is.EqualTo(w1), "final weights and value head must be bit-identical after resume");
        foreach (var key in new[] { "objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/approxkl_avg",
                                    "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/ratio", "rollout_seconds", "train_seconds" })
            Assert.That(m1[0].ContainsKey(key), key);
        Assert.That(m1.All(r => r.Values.All(v => v is null || double.IsFinite(v.Value))));
        Assert.That(m1[0]["objective/kl"], Is.EqualTo(0).Within(1e-4), "the first rollout comes from π = π0");
    }

    [Test]
    public void RlhfRaisesTheRewardOfATinyGptWhileTheKlStaysBounded()
    {
        string modelPath = Path.Combine(RunDirectory, "pi0.safetensors");
        TinyAlignmentSetup.WriteModel(modelPath);
        var prompts = TinyAlignmentSetup.Pairs(TinyAlignmentSetup.Examples()).Select(p => p.Prompt).ToList();
        var (model, _) = GptCheckpoint.LoadModel(modelPath);
        using var policy = new GptPolicy(model, new AdamWSettings(WeightDecay: 0), ownsModel: true, withValueHead: true);
        using var reference = policy.Snapshot();
        var options = Options("rlhf") with
        {
            Steps = 50, PromptsPerIteration = 24, Epochs = 4, Minibatches = 2, Beta = 0.1, LearningRate = 1e-2f, MissingEndPenalty = null,
            Sampling = new SamplingOptions(4),
        };
        var trainer = new PpoTrainer(policy, reference, new TinyAlignmentSetup.EvenTokenReward(), prompts, options);
        var reports = new List<AlignmentStepReport>();
        while (trainer.Step < options.Steps) reports.Add(trainer.TrainStep());
        // E[R̂] under π0 and under the trained π, each from 480 fresh samples (standard error ≈ 0.012).
        double MeanReward(IPolicy sampler)
        {
            var many = Enumerable.Range(0, 20).SelectMany(_ => prompts).ToList();
            var samples = sampler.Sample(many, options.Sampling, 999);
            var rewards = new float[many.Count];
            new TinyAlignmentSetup.EvenTokenReward().Score(many.Select((q, i) => new PromptResponse(q, samples[i].Tokens)).ToList(), rewards);
            return rewards.Average();
        }
        double before = MeanReward(reference), after = MeanReward(policy);
        double kl = reports.TakeLast(3).Average(r => r["objective/kl"]);
        TestContext.Out.WriteLine($"E[R̂]: {before:F3} → {after:F3}; KL(π‖π0) per response at the end {kl:F3} nats (4 tokens)");
        Assert.That(after, Is.GreaterThan(before + 0.08));
        Assert.That(kl, Is.LessThan(4 * 0.5 / options.Beta), "KL stays below the reward range over β");
        Assert.That(kl, Is.GreaterThan(0));
    }
}
