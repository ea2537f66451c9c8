using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Cli;
using DistAlign.Tests.Alignment;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Cli;

/// <summary><c>distalign reward</c> over the reward-model trainer: checkpoints, crash-resume, refused resumes, NaN stop.</summary>
public class RewardCliTests : CliTestBase
{
    private string modelPath = "", dataPath = "";

    [SetUp]
    public void SetUp()
    {
        modelPath = Path.Combine(TestDirectory, "pi0.safetensors");
        dataPath = Path.Combine(TestDirectory, "prefs.jsonl");
        TinyAlignmentSetup.WriteModel(modelPath);
        TinyAlignmentSetup.WriteJsonl(dataPath, TinyAlignmentSetup.Examples());
    }

    private static readonly string[] Small =
        ["--steps", "4", "--batch", "3", "--lr", "3e-3", "--warmup", "1", "--eval-fraction", "0.25", "--eval-every", "2", "--margin", "0.1",
         "--checkpoint-every", "2", "--max-prompt-tokens", "12", "--max-response-tokens", "8", "--threads", "2", "--seed", "5"];

    private int Reward(string outDir, params string[] extra) =>
        Program.Main(["reward", "--model", modelPath, "--data", dataPath, "--out", outDir, .. Small, .. extra]);

    [Test]
    public void ResumesBitIdenticallyAfterACrash()
    {
        string straight = Path.Combine(TestDirectory, "straight"), crashed = Path.Combine(TestDirectory, "crashed");
        Assert.That(Reward(straight), Is.EqualTo(0), Error.ToString());
        Assert.That(Reward(crashed), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("done:"));
        Assert.That(Directory.Exists(Path.Combine(straight, "step-00000002")) && Directory.Exists(Path.Combine(straight, "step-00000004")));
        // Simulate a crash after step 2: 'latest' still names step 2, metrics.jsonl already has steps 3 and 4.
        File.WriteAllText(Path.Combine(crashed, GptCheckpoint.LatestFileName), "step-00000002\n");
        File.Delete(Path.Combine(crashed, RewardCommand.RewardModelFileName));
        Assert.That(Reward(crashed, "--resume"), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("resumed from").And.Contain("at step 2"));

        var a = AlignmentRun.ReadMetrics(Path.Combine(straight, AlignmentTrainer.MetricsFileName));
        var b = AlignmentRun.ReadMetrics(Path.Combine(crashed, AlignmentTrainer.MetricsFileName));
        Assert.That(a.Select(r => r["step"]), Is.EqualTo(new double?[] { 1, 2, 3, 4 }));
        Assert.That(TinyAlignmentSetup.DeterministicColumns(b), Is.EqualTo(TinyAlignmentSetup.DeterministicColumns(a)));
        Assert.That(File.ReadAllBytes(Path.Combine(crashed, RewardCommand.RewardModelFileName)),
                    Is.EqualTo(File.ReadAllBytes(Path.Combine(straight, RewardCommand.RewardModelFileName))));
        var loaded = RewardModel.Load(Path.Combine(crashed, RewardCommand.RewardModelFileName), new AdamWSettings());
        using var rm = loaded.Model;
        Assert.That(loaded.TokenizerSpec, Is.EqualTo(TinyAlignmentSetup.TokenizerSpec));
    }

    [Test]
    public void ResumeWithChangedFlagsOrOverAnExistingRunGivesExitCode2()
    {
        string run = Path.Combine(TestDirectory, "run");
        Assert.That(Reward(run), Is.EqualTo(0), Error.ToString());
        Assert.That(Reward(run), Is.EqualTo(Program.UsageError), "no silent overwrite without --resume");
        Assert.That(Error.ToString(), Does.Contain("already holds a run"));
        foreach (var changed in new[] { new[] { "--centring", "0.5" }, ["--weight-decay", "0.1"], ["--clip", "0.5"] })
        {
            Error.GetStringBuilder().Clear();
            Assert.That(Reward(run, [.. changed, "--resume"]), Is.EqualTo(Program.UsageError), changed[0]);
            Assert.That(Error.ToString(), Does.Contain("different settings"), changed[0]);
        }
        Assert.That(Reward(run, "--resume"), Is.EqualTo(0), "same flags: resumes (already complete)");
        TinyAlignmentSetup.WriteJsonl(dataPath, TinyAlignmentSetup.Examples(salt: "?"));
        Error.GetStringBuilder().Clear();
        Assert.That(Reward(run, "--resume"), Is.EqualTo(Program.UsageError), "other data cannot resume this run");
        Assert.That(Error.ToString(), Does.Contain("different settings"));
    }

    [Test]
    public void ANonFiniteLossStopsTheRunAndKeepsTheLastCheckpointLoadable()
    {
        string run = Path.Combine(TestDirectory, "nan");
        int code = Program.Main(["reward", "--model", modelPath, "--data", dataPath, "--out", run,
            "--steps", "20", "--batch", "2", "--lr", "1e30", "--warmup", "0", "--clip", "0", "--eval-fraction", "0",
            "--checkpoint-every", "1", "--max-prompt-tokens", "12", "--max-response-tokens", "8", "--threads", "2"]);
        Assert.That(code, Is.EqualTo(Program.RunFailed));
        Assert.That(Error.ToString(), Does.Contain("training stopped").And.Contain("not finite"));
        string latest = GptCheckpoint.LatestTraining(run)!;
        using var rm = new RewardModel(new Gpt(TinyAlignmentSetup.Config), new AdamWSettings(), ownsBackbone: true);
        var (state, _) = rm.LoadTraining(latest);
        Assert.That(state.Step, Is.GreaterThanOrEqualTo(1));
        Assert.That(AlignmentRun.ReadMetrics(Path.Combine(run, AlignmentTrainer.MetricsFileName)), Has.Count.EqualTo(state.Step));
        Assert.That(File.Exists(Path.Combine(run, RewardCommand.RewardModelFileName)), Is.False);
    }

    [Test]
    public void HelpListsTheCheckpointFlags()
    {
        Assert.That(Program.Main(["reward", "--help"]), Is.EqualTo(0));
        Assert.That(Output.ToString(), Does.Contain("--checkpoint-every").And.Contain("--resume").And.Contain("[default: 50]"));
    }
}
