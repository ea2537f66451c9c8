using DistAlign.Alignment.Data;
using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment;

/// <summary>The reward-model training loop: runs, checkpoints the head with the backbone, resumes bit-identically, stops on NaN.</summary>
[NonParallelizable]
public class RewardModelTrainerTests
{
    private string directory = "", modelPath = "";
    private int savedThreads;
    private List<PreferencePair> pairs = [];

    [SetUp]
    public void SetUp()
    {
        directory = Directory.CreateTempSubdirectory("distalign-rm-").FullName;
        savedThreads = CpuParallel.Threads;
        CpuParallel.Threads = 2;
        modelPath = Path.Combine(directory, "pi0.safetensors");
        TinyAlignmentSetup.WriteModel(modelPath);
        pairs = TinyAlignmentSetup.Pairs(TinyAlignmentSetup.Examples());
    }

    [TearDown]
    public void TearDown()
    {
        CpuParallel.Threads = savedThreads;
        Directory.Delete(directory, recursive: true);
    }

    private static readonly RewardTrainingOptions Small = new()
    {
        Loss = new PairwiseLossSettings(PairwiseLossVariant.RewardModel, Margin: 0.1, Centring: 0.01),
        Steps = 4, BatchPairs = 3, LearningRate = 3e-3f, WarmupSteps = 1, EvalFraction = 0.25, EvaluateEvery = 2, Seed = 11,
    };

    /// <summary>Runs a 4-step run up to <paramref name="stopAfter"/> steps into <paramref name="outDir"/>; writes the reward-model file at the end.</summary>
    private void Run(string outDir, int stopAfter, bool resume, string identity = "{\"run\":1}", RewardTrainingOptions? options = null)
    {
        var (gpt, _) = GptCheckpoint.LoadModel(modelPath);
        using var rm = new RewardModel(gpt, new AdamWSettings(WeightDecay: 0.1f), ownsBackbone: true);
        var trainer = new RewardModelTrainer(rm, pairs, options ?? Small);
        var run = new RewardModelRun(trainer, outDir, TinyAlignmentSetup.TokenizerSpec, identity, checkpointEvery: 2);
        run.Start(resume);
        while (trainer.Step < stopAfter) run.Step();
        rm.Save(Path.Combine(outDir, "rm.safetensors"), TinyAlignmentSetup.TokenizerSpec);
    }

    private static byte[] Bytes(string dir, params string[] parts) => File.ReadAllBytes(Path.Combine([dir, .. parts]));

    [Test]
    public void HalfAndResumeGivesTheSameMetricsAndBitIdenticalFiles()
    {
        string straight = Path.Combine(directory, "straight"), split = Path.Combine(directory, "split");
        Run(straight, 4, resume: false);
        Run(split, 2, resume: false);
        Run(split, 4, resume: true);

        var m1 = AlignmentRun.ReadMetrics(Path.Combine(straight, AlignmentTrainer.MetricsFileName));
        var m2 = AlignmentRun.ReadMetrics(Path.Combine(split, AlignmentTrainer.MetricsFileName));
        Assert.That(m1.Select(r => r["step"]), Is.EqualTo(new double?[] { 1, 2, 3, 4 }));
        Assert.That(TinyAlignmentSetup.DeterministicColumns(m2), Is.EqualTo(TinyAlignmentSetup.DeterministicColumns(m1)));
        foreach (var key in new[] { "loss", "accuracy", "margin", "mean_reward", "lr", "grad_norm", "tokens_per_second", "elapsed_seconds" })
            Assert.That(m1[0].ContainsKey(key), key);
        Assert.That(m1[0].ContainsKey("eval_loss"), Is.False);
        Assert.That(m1[1].ContainsKey("eval_loss") && m1[3].ContainsKey("eval_accuracy"));
        Assert.That(m1[0]["loss"], Is.EqualTo(Math.Log(1 + Math.Exp(0.1))).Within(1e-5), "zero head: R⁺ = R⁻ = 0, loss ln(1 + e^m)");

        Assert.That(Bytes(split, "rm.safetensors"), Is.EqualTo(Bytes(straight, "rm.safetensors")), "final reward model");
        foreach (var file in new[] { GptCheckpoint.ModelFileName, GptCheckpoint.StateFileName })
            Assert.That(Bytes(split, "step-00000004", file), Is.EqualTo(Bytes(straight, "step-00000004", file)), file);
        Assert.That(File.ReadAllText(Path.Combine(split, GptCheckpoint.LatestFileName)).Trim(), Is.EqualTo("step-00000004"));
    }

    [Test]
    public void ACheckpointHoldsTheHeadAndItsMomentsAndLoadsBack()
    {
        string outDir = Path.Combine(directory, "run");
        Run(outDir, 2, resume: false);
        string latest = GptCheckpoint.LatestTraining(outDir)!;
        // The step folder's model file is a reward-model file in its own right.
        var loaded = RewardModel.Load(Path.Combine(latest, GptCheckpoint.ModelFileName), new AdamWSettings());
        using (loaded.Model) Assert.That(loaded.Model.HeadWeight.ToArray().Any(w => w != 0f), "the head trained away from zero");

        var gpt = new Gpt(TinyAlignmentSetup.Config);
        using var rm = new RewardModel(gpt, new AdamWSettings(), ownsBackbone: true);
        var (state, options) = rm.LoadTraining(latest);
        Assert.That(state, Is.EqualTo(new TrainerState(2, 0, 6)), "two batches of 3 over 9 train pairs");
        Assert.That(options, Is.EqualTo("{\"run\":1}"));
        using var file = DistAlign.Engine.SafeTensors.SafeTensorsFile.Open(Path.Combine(latest, GptCheckpoint.StateFileName));
        Assert.That(file.ReadF32(RewardModel.ScoreAdamVName), Has.Length.EqualTo(TinyAlignmentSetup.Config.Channels + 1));
        Assert.That(file.ReadF32(RewardModel.ScoreAdamVName).Any(v => v > 0f), "head moments are saved");

        // A plain GPT training checkpoint has no head: a clear error, not zeros.
        string plain = GptCheckpoint.SaveTraining(Path.Combine(directory, "plain"), gpt, TinyAlignmentSetup.TokenizerSpec, state, "{}");
        Assert.That(() => rm.LoadTraining(plain), Throws.TypeOf<CheckpointMismatchException>().With.Message.Contains(RewardModel.ScoreWeightName));
    }

    [Test]
    public void RefusesToOverwriteARunOrResumeItWithOtherSettings()
    {
        string outDir = Path.Combine(directory, "run");
        Run(outDir, 2, resume: false);
        Assert.That(() => Run(outDir, 4, resume: false), Throws.ArgumentException.With.Message.Contains("--resume"));
        Assert.That(() => Run(outDir, 4, resume: true, identity: "{\"run\":2}"),
                    Throws.TypeOf<CheckpointMismatchException>().With.Message.Contains("different settings"));
        Assert.That(AlignmentRun.ReadMetrics(Path.Combine(outDir, AlignmentTrainer.MetricsFileName)), Has.Count.EqualTo(2), "refusals leave the run alone");
        using var rm = new RewardModel(new Gpt(TinyAlignmentSetup.Config), new AdamWSettings(), ownsBackbone: true);
        Assert.That(() => new RewardModelTrainer(rm, pairs, Small with { Loss = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid) }),
                    Throws.ArgumentException);
    }

    [Test]
    public void ANonFiniteLossStopsBeforeTheStepAndKeepsTheLastCheckpointLoadable()
    {
        var (gpt, _) = GptCheckpoint.LoadModel(modelPath);
        using var rm = new RewardModel(gpt, new AdamWSettings(WeightDecay: 0f), ownsBackbone: true);
        var trainer = new RewardModelTrainer(rm, pairs, Small with
        {
            Steps = 20, BatchPairs = 2, LearningRate = 1e30f, WarmupSteps = 0, GradientClip = 0, EvalFraction = 0, EvaluateEvery = 0,
        });
        string outDir = Path.Combine(directory, "nan");
        var run = new RewardModelRun(trainer, outDir, TinyAlignmentSetup.TokenizerSpec, "{}", checkpointEvery: 1);
        run.Start(resume: false);
        var e = Assert.Throws<NonFiniteValueException>(() => run.RunToEnd())!;
        Assert.That(e.Step, Is.GreaterThan(1));
        Assert.That(trainer.Step, Is.EqualTo(e.Step - 1));
        string latest = GptCheckpoint.LatestTraining(outDir)!;
        Assert.That(Path.GetFileName(latest), Is.EqualTo($"step-{e.Step - 1:D8}"));
        using var check = new RewardModel(new Gpt(TinyAlignmentSetup.Config), new AdamWSettings(), ownsBackbone: true);
        var (state, _) = check.LoadTraining(latest);
        Assert.That(state.Step, Is.EqualTo(e.Step - 1));
        Assert.That(AlignmentRun.ReadMetrics(run.MetricsPath), Has.Count.EqualTo(e.Step - 1));
    }
}
