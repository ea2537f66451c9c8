using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment;

/// <summary>A tiny GPT and a small preference set, shared by the trainer and CLI tests.</summary>
internal static class TinyAlignmentSetup
{
    public const string TokenizerSpec = "gpt2-k2000";
    public static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 16, VocabSize: 2257, MaxSequenceLength: 32);

    private static readonly string[] Subjects = ["the whale", "a ship", "the sea", "old sailors", "the captain", "a harpoon", "the wind", "a storm"];

    /// <summary>Twelve pairs: a short question, a "good" and a "bad" answer.</summary>
    public static List<PreferenceExample> Examples(int count = 12, string salt = "")
    {
        var list = new List<PreferenceExample>();
        for (int i = 0; i < count; i++)
        {
            string s = Subjects[i % Subjects.Length];
            list.Add(new PreferenceExample($"Tell me about {s}{salt} {i}.", $"It is fine and calm {i}.", $"No {i}."));
        }
        return list;
    }

    public static void WriteJsonl(string path, List<PreferenceExample> examples) => PreferenceJsonl.Write(path, examples);

    /// <summary>Writes an initialised tiny GPT to <paramref name="path"/> as π0.</summary>
    public static void WriteModel(string path, ulong seed = 7)
    {
        using var model = new Gpt(Config);
        model.InitializeGpt2(seed);
        GptCheckpoint.SaveModel(path, model, TokenizerSpec);
    }

    public static List<PreferencePair> Pairs(List<PreferenceExample> examples)
    {
        var tok = Gpt2Tokenizer.FromSpec(TokenizerSpec);
        var data = PreferenceTokenizer.Tokenize(examples, tok, new TruncationOptions { MaxPromptTokens = 12, MaxResponseTokens = 8 });
        return [.. data.Examples.Select(e => new PreferencePair(e.PromptIds, e.ChosenIds, e.RejectedIds))];
    }

    /// <summary>Every metric that must repeat exactly on resume (timings excluded).</summary>
    public static List<string> DeterministicColumns(List<Dictionary<string, double?>> rows) =>
        [.. rows.Select(r => string.Join(";", r.Where(kv => !kv.Key.EndsWith("seconds", StringComparison.Ordinal) && !kv.Key.EndsWith("per_second", StringComparison.Ordinal))
                                               .Select(kv => $"{kv.Key}={kv.Value:R}")))];

    /// <summary>A known reward for on-policy tests: the share of response tokens whose id is even, minus ½.</summary>
    public sealed class EvenTokenReward : IRewardFunction
    {
        public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> rewards)
        {
            for (int i = 0; i < sequences.Count; i++)
                rewards[i] = (float)(sequences[i].Response.Count(t => t % 2 == 0) / (double)sequences[i].Response.Length - 0.5);
        }
    }
}

/// <summary>The alignment training loop on a tiny GPT: each objective runs, resumes bit-identically, stops on NaN.</summary>
public class AlignmentTrainerTests : TemporaryRunFixture
{

    private static AlignmentTrainingOptions OptionsFor(string objective) => objective switch
    {
        "sft" => new AlignmentTrainingOptions { Objective = AlignmentObjective.Sft },
        "dpo" => new AlignmentTrainingOptions { Loss = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.5), GradientAccumulation = 2 },
        "ipo" => new AlignmentTrainingOptions { Loss = new PairwiseLossSettings(PairwiseLossVariant.Ipo, Beta: 0.5) },
        "pmle" => new AlignmentTrainingOptions
        {
            Loss = new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: 1.0),
            Kl = new KlRegularizer(Beta: 0.1, SamplesPerPrompt: 2, MaxNewTokens: 4, EndOfText: Gpt2Tokenizer.FromSpec(TinyAlignmentSetup.TokenizerSpec).EndOfText),
        },
        "distill" => new AlignmentTrainingOptions
        {
            Objective = AlignmentObjective.OnPolicy,
            Loss = new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: 0.5),
            Sampling = new SamplingOptions(4),
            Kl = new KlRegularizer(Beta: 0.1, SamplesPerPrompt: 2, MaxNewTokens: 4, EndOfText: Gpt2Tokenizer.FromSpec(TinyAlignmentSetup.TokenizerSpec).EndOfText),
        },
        "distill-dataset" => new AlignmentTrainingOptions
        {
            Objective = AlignmentObjective.OnPolicy,
            Loss = new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: 0.5),
            PairSource = PairSource.Dataset,
        },
        "rebel" => new AlignmentTrainingOptions
        {
            Objective = AlignmentObjective.OnPolicy,
            Loss = new PairwiseLossSettings(PairwiseLossVariant.Rebel, Eta: 2.0),
            Sampling = new SamplingOptions(4),
        },
        _ => throw new ArgumentException(objective),
    };

    /// <summary>Runs <paramref name="stopAfter"/> steps of a 4-step run into <paramref name="outDir"/> (resuming when asked); returns the final weights.</summary>
    private float[] Run(string outDir, string objective, int stopAfter, bool resume, string modelPath, List<PreferencePair> pairs, string cacheDir)
    {
        var options = OptionsFor(objective) with
        {
            Steps = 4, BatchPairs = 3, LearningRate = 3e-3f, WarmupSteps = 1, EvalFraction = 0.25, EvaluateEvery = 2, Seed = 11,
        };
        var (model, _) = GptCheckpoint.LoadModel(modelPath);
        using var policy = new GptPolicy(model, new AdamWSettings(), ownsModel: true);
        using var reference = policy.Snapshot();
        float[]? refs = options.UsesReferenceLogProbs ? ReferenceLogProbs.Get(reference, pairs, cacheDir, null, out _) : null;
        var trainer = new AlignmentTrainer(policy, reference, pairs, refs, options, new TinyAlignmentSetup.EvenTokenReward());
        var run = new AlignmentRun(trainer, policy, outDir, TinyAlignmentSetup.TokenizerSpec, $"{{\"objective\":\"{objective}\"}}", checkpointEvery: 2);
        run.Start(resume);
        while (trainer.Step < stopAfter) run.Step();
        return model.Parameters.ToArray();
    }

    [TestCase("sft")]
    [TestCase("dpo")]
    [TestCase("ipo")]
    [TestCase("pmle")]
    [TestCase("distill")]
    [TestCase("distill-dataset")]
    [TestCase("rebel")]
    public void RunsAndResumesBitIdentically(string objective)
    {
        string modelPath = Path.Combine(RunDirectory, "pi0.safetensors");
        TinyAlignmentSetup.WriteModel(modelPath);
        var pairs = TinyAlignmentSetup.Pairs(TinyAlignmentSetup.Examples());
        string cache = Path.Combine(RunDirectory, "cache");

        string straight = Path.Combine(RunDirectory, "straight"), split = Path.Combine(RunDirectory, "split");
        float[] w1 = Run(straight, objective, 4, resume: false, modelPath, pairs, cache);
        Run(split, objective, 2, resume: false, modelPath, pairs, cache);
        float[] w2 = Run(split, objective, 4, resume: true, modelPath, pairs, cache);

        var m1 = AlignmentRun.ReadMetrics(Path.Combine(straight, AlignmentTrainer.MetricsFileName));
        var m2 = AlignmentRun.ReadMetrics(Path.Combine(split, AlignmentTrainer.MetricsFileName));
        Assert.That(m1, Has.Count.EqualTo(4));
        Assert.That(TinyAlignmentSetup.DeterministicColumns(m2), Is.EqualTo(TinyAlignmentSetup.DeterministicColumns(m1)));
        Assert.That(w2, Is.EqualTo(w1), "final weights must be bit-identical after resume");
        Assert.That(m1.All(r => r["loss"] is double l && double.IsFinite(l)));
        foreach (var key in new[] { "step", "lr", "grad_norm", "tokens_per_second", "elapsed_seconds" })
            Assert.That(m1[0].ContainsKey(key), key);
        Assert.That(m1[1].ContainsKey("eval_loss") && m1[3].ContainsKey("eval_loss"));
        string[] expected = objective switch
        {
            "sft" => ["mean_token_logp"],
            "pmle" => ["logits", "accuracy", "logps/chosen", "objective/kl", "pairwise_loss"],
            "distill" => ["objective/scores", "objective/kl", "pairwise_loss", "bernoulli_kl", "accuracy"],
            "distill-dataset" => ["objective/scores", "bernoulli_kl", "accuracy"],
            "rebel" => ["objective/scores", "regression_error"],
            _ => ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"],
        };
        foreach (var key in expected) Assert.That(m1[0].ContainsKey(key), key);
        Assert.That(File.ReadAllText(Path.Combine(split, GptCheckpoint.LatestFileName)).Trim(), Is.EqualTo("step-00000004"));
    }

    [Test]
    public void ReferenceCacheHitsOnTheSameModelAndDataAndMissesWhenTheDataChanges()
    {
        var pairs = TinyAlignmentSetup.Pairs(TinyAlignmentSetup.Examples());
        var changed = TinyAlignmentSetup.Pairs(TinyAlignmentSetup.Examples(salt: "!"));
        using var model = new Gpt(TinyAlignmentSetup.Config);
        model.InitializeGpt2(3);
        using var policy = new GptPolicy(model, new AdamWSettings());
        string cache = Path.Combine(RunDirectory, "cache");
        var lines = new List<string>();
        var a = ReferenceLogProbs.Get(policy, pairs, cache, lines.Add, out bool hit1);
        var b = ReferenceLogProbs.Get(policy, pairs, cache, lines.Add, out bool hit2);
        ReferenceLogProbs.Get(policy, changed, cache, lines.Add, out bool hit3);
        Assert.That((hit1, hit2, hit3), Is.EqualTo((false, true, false)));
        Assert.That(b, Is.EqualTo(a));
        Assert.That(lines, Is.EqualTo(new[] { "reference log-probs: computed", "reference log-probs: cached (hit)", "reference log-probs: computed" }));
    }

    [Test]
    public void ANonFiniteLossStopsBeforeTheStepAndKeepsTheLastCheckpoint()
    {
        var pairs = TinyAlignmentSetup.Pairs(TinyAlignmentSetup.Examples());
        using var model = new Gpt(TinyAlignmentSetup.Config);
        model.InitializeGpt2(3);
        using var policy = new GptPolicy(model, new AdamWSettings(WeightDecay: 0f));
        var options = new AlignmentTrainingOptions
        {
            Objective = AlignmentObjective.Sft, Steps = 20, BatchPairs = 2, LearningRate = 1e30f, WarmupSteps = 0, GradientClip = 0,
            EvalFraction = 0, EvaluateEvery = 0,
        };
        var trainer = new AlignmentTrainer(policy, null, pairs, null, options);
        string outDir = Path.Combine(RunDirectory, "nan");
        var run = new AlignmentRun(trainer, policy, outDir, TinyAlignmentSetup.TokenizerSpec, "{}", checkpointEvery: 1);
        run.Start(resume: false);
        var e = Assert.Throws<NonFiniteValueException>(() => run.RunToEnd())!;
        Assert.That(e.Step, Is.GreaterThan(1));
        Assert.That(trainer.Step, Is.EqualTo(e.Step - 1));
        string latest = GptCheckpoint.LatestTraining(outDir)!;
        Assert.That(Path.GetFileName(latest), Is.EqualTo($"step-{e.Step - 1:D8}"));
        using var check = new Gpt(TinyAlignmentSetup.Config);
        var (state, _) = GptCheckpoint.LoadTraining(latest, check);
        Assert.That(state.Step, Is.EqualTo(e.Step - 1));
        Assert.That(AlignmentRun.ReadMetrics(run.MetricsPath), Has.Count.EqualTo(e.Step - 1));
    }

    [Test]
    public void SplitIsDeterministicAndDisjoint()
    {
        var (train, eval) = AlignmentTrainer.Split(20, 0.25, 5);
        var (train2, eval2) = AlignmentTrainer.Split(20, 0.25, 5);
        Assert.That(eval, Has.Length.EqualTo(5));
        Assert.That(train.Concat(eval).Order(), Is.EqualTo(Enumerable.Range(0, 20)));
        Assert.That(train2, Is.EqualTo(train));
        Assert.That(eval2, Is.EqualTo(eval));
    }
}
