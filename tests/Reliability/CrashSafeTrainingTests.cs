using System.Diagnostics;
using System.Text.RegularExpressions;
using DistAlign.Alignment.Training;
using DistAlign.Tests.Alignment;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Reliability;

/// <summary>
/// Crash-safe training (issue #10): the real CLI pretrains a tiny GPT, checkpointing every step, and is SIGKILLed
/// again and again — at seeded random times and at the moment a checkpoint write is seen in progress — then restarted
/// with <c>--resume</c> until it finishes. After every kill the latest checkpoint must load; at the end the weights must
/// equal those of an uninterrupted run bit for bit. The long run:
/// <c>DISTALIGN_CRASH_KILLS=200 dotnet test --filter Category=CrashLong</c>.
/// </summary>
[NonParallelizable]
public class CrashSafeTrainingTests
{
    private const int InSuiteKills = 8;
    private const int InSuiteAlignKills = 4;
    private static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 16, VocabSize: 2257, MaxSequenceLength: 16);
    private static readonly Regex PrintedStep = new(@"^step (\d+): train loss", RegexOptions.Multiline | RegexOptions.Compiled);

    private string folder = "";

    [SetUp]
    public void MakeFolder() => folder = Directory.CreateTempSubdirectory("distalign-crash-").FullName;

    [TearDown]
    public void RemoveFolder() => Directory.Delete(folder, recursive: true);

    [Test]
    public void KilledPretrainingResumesToTheSameBits() => KillAndResume(InSuiteKills, seed: 7, PretrainArgs, Config);

    [Test]
    public void KilledDpoAlignmentResumesToTheSameBitsAndMetrics()
    {
        TinyAlignmentSetup.WriteModel(Path.Combine(folder, "pi0.safetensors"));
        TinyAlignmentSetup.WriteJsonl(Path.Combine(folder, "prefs.jsonl"), TinyAlignmentSetup.Examples(24));
        KillAndResume(InSuiteAlignKills, seed: 8, AlignArgs, TinyAlignmentSetup.Config);
    }

    [Test, Explicit("long crash run; DISTALIGN_CRASH_KILLS sets the number of kills"), Category("CrashLong")]
    public void LongKillAndResumeRun()
    {
        int kills = int.TryParse(Environment.GetEnvironmentVariable("DISTALIGN_CRASH_KILLS"), out int k) && k > 0 ? k : 200;
        int seed = Environment.TickCount;
        TestContext.Out.WriteLine($"seed {seed}");
        KillAndResume(kills, seed, PretrainArgs, Config, stepsPerKill: 12);
        TinyAlignmentSetup.WriteModel(Path.Combine(folder, "pi0.safetensors"));
        TinyAlignmentSetup.WriteJsonl(Path.Combine(folder, "prefs.jsonl"), TinyAlignmentSetup.Examples(24));
        KillAndResume(Math.Max(1, kills / 4), seed, AlignArgs, TinyAlignmentSetup.Config, stepsPerKill: 12);
    }

    private string[] AlignArgs(string outDir, int steps) =>
    [
        "align", "--objective", "dpo", "--beta", "0.5", "--model", Path.Combine(folder, "pi0.safetensors"), "--data", Path.Combine(folder, "prefs.jsonl"),
        "--out", outDir, "--steps", steps.ToString(), "--batch", "3", "--lr", "3e-3", "--warmup", "1", "--eval-fraction", "0.25", "--eval-every", "4",
        "--checkpoint-every", "1", "--max-prompt-tokens", "12", "--max-response-tokens", "8", "--threads", "1", "--seed", "5", "--resume",
    ];

    private string[] PretrainArgs(string outDir, int steps) =>
    [
        "pretrain", "--out", outDir, "--text", TextPath, "--layers", "1", "--heads", "2", "--channels", "16", "--context", "16",
        "--batch", "2", "--seq", "8", "--threads", "1", "--steps", steps.ToString(), "--checkpoint-every", "1", "--eval-every", "1",
        "--warmup", "5", "--seed", "3", "--resume",
    ];

    private string TextPath
    {
        get
        {
            string path = Path.Combine(folder, "text.txt");
            if (!File.Exists(path)) File.WriteAllText(path, ShippedData.MobyDick()[..60_000]);
            return path;
        }
    }

    /// <param name="stepsPerKill">steps in the run per planned kill (a launch lives 0.25–1.75 s, of which start-up takes about 0.7 s)</param>
    private void KillAndResume(int kills, int seed, Func<string, int, string[]> args, GptConfig config, int stepsPerKill = 5)
    {
        string command = args("x", 1)[0];
        bool align = command == "align";
        int steps = 10 + kills * stepsPerKill;
        string reference = Path.Combine(folder, command + "-reference"), crashed = Path.Combine(folder, command + "-crashed");
        var clock = Stopwatch.StartNew();
        using (var run = CliProcess.Start(args(reference, steps)))
            Assert.That(run.WaitForExit(TimeSpan.FromMinutes(5)), Is.EqualTo(0), run.Error);
        double uninterruptedMs = clock.Elapsed.TotalMilliseconds;

        var random = new Random(seed);
        int killsDone = 0, launches = 0, midWrite = 0, beforeFirstCheckpoint = 0, maxLost = 0, lastStep = 0;
        while (true)
        {
            launches++;
            using var run = CliProcess.Start(args(crashed, steps));
            if (killsDone < kills)
            {
                bool atCheckpoint = killsDone % 2 == 1;
                var started = Stopwatch.StartNew();
                double delay = 250 + random.NextDouble() * 1500; // start-up takes about 0.7 s, a step with its checkpoint 30–70 ms
                // Odd kills: the first time a checkpoint write (a temporary step folder or 'latest' file) is seen after a
                // random delay; even kills: at the random time itself.
                while (!run.HasExited && started.Elapsed.TotalMilliseconds < delay) Thread.Sleep(1);
                while (atCheckpoint && !run.HasExited && !CheckpointInProgress(crashed)) Thread.SpinWait(200);
                if (!run.HasExited)
                {
                    run.Kill();
                    killsDone++;
                    if (CheckpointInProgress(crashed)) midWrite++;
                    int saved = LatestLoads(crashed, config);
                    int printed = align ? MetricsSteps(crashed) : PrintedStep.Matches(run.Output).Select(m => int.Parse(m.Groups[1].Value)).DefaultIfEmpty(0).Max();
                    if (saved == 0) beforeFirstCheckpoint++;
                    Assert.That(saved, Is.GreaterThanOrEqualTo(lastStep), "a checkpoint went backwards");
                    maxLost = Math.Max(maxLost, printed - saved);
                    lastStep = saved;
                    continue;
                }
            }
            Assert.That(run.WaitForExit(TimeSpan.FromMinutes(5)), Is.EqualTo(0), run.Error);
            break;
        }

        byte[] expected = File.ReadAllBytes(Path.Combine(reference, GptCheckpoint.ModelFileName));
        byte[] actual = File.ReadAllBytes(Path.Combine(crashed, GptCheckpoint.ModelFileName));
        if (align)
        {
            var a = AlignmentRun.ReadMetrics(Path.Combine(reference, AlignmentTrainer.MetricsFileName));
            var b = AlignmentRun.ReadMetrics(Path.Combine(crashed, AlignmentTrainer.MetricsFileName));
            Assert.That(TinyAlignmentSetup.DeterministicColumns(b), Is.EqualTo(TinyAlignmentSetup.DeterministicColumns(a)), "metrics.jsonl after kills and resumes");
        }
        TestContext.Out.WriteLine(
            $"{command}: {steps} steps, checkpoint every step; uninterrupted run {uninterruptedMs:F0} ms; {killsDone} SIGKILLs over {launches} launches " +
            $"({midWrite} with a checkpoint write in progress, {beforeFirstCheckpoint} before the first checkpoint); " +
            $"latest checkpoint loaded after every kill; most steps redone after a kill: {maxLost}; final weights identical: {expected.AsSpan().SequenceEqual(actual)}; " +
            $"total {clock.Elapsed.TotalSeconds:F1} s");
        Assert.That(actual, Is.EqualTo(expected), "final weights after kills and resumes differ from the uninterrupted run");
        Assert.That(maxLost, Is.LessThanOrEqualTo(1), "at most the step being checkpointed is redone");
        Assert.That(Directory.GetDirectories(crashed, ".step-*"), Is.Empty, "temporary checkpoint folders are cleaned up");
        Assert.That(Directory.GetFiles(crashed, "*.tmp-*"), Is.Empty, "temporary files are cleaned up");
    }

    private static bool CheckpointInProgress(string run) =>
        Directory.Exists(run) && (Directory.EnumerateDirectories(run, ".step-*").Any() || Directory.EnumerateFiles(run, "latest.tmp-*").Any());

    /// <summary>Loads the checkpoint 'latest' names (weights and AdamW state) and returns its step; 0 when there is none yet.</summary>
    /// <summary>The last step listed in metrics.jsonl (lines of steps after the checkpoint are redone, so this is the step reached).</summary>
    private static int MetricsSteps(string run)
    {
        string path = Path.Combine(run, AlignmentTrainer.MetricsFileName);
        if (!File.Exists(path)) return 0;
        var steps = File.ReadAllLines(path).Select(l => Regex.Match(l, "\"step\":(\\d+)")).Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value));
        return steps.DefaultIfEmpty(0).Max();
    }

    private static int LatestLoads(string run, GptConfig config)
    {
        if (!Directory.Exists(run)) return 0;
        string? latest = GptCheckpoint.LatestTraining(run);
        if (latest is null) return 0;
        using var model = new Gpt(config);
        var (state, _) = GptCheckpoint.LoadTraining(latest, model);
        Assert.That(Path.GetFileName(latest), Is.EqualTo($"step-{state.Step:D8}"));
        return state.Step;
    }
}
