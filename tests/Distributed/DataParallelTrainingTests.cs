using System.Diagnostics;
using System.Text.Json;
using DistAlign.Engine.Distributed;
using DistAlign.Tests.Alignment;
using DistAlign.Tests.Reliability;
using DistAlign.Transformer.Data;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Distributed;

/// <summary>
/// Data parallelism through the real CLI under Open MPI's <c>mpirun</c>, 2 ranks on this machine (loopback): a 2-rank run
/// equals one process with the same global batch (losses within 1e-5 relative), repeats bit for bit, resumes after a
/// kill to the same bytes as an uninterrupted run, and stops cleanly, naming the rank, when a rank dies or hangs.
/// </summary>
[NonParallelizable, Category("Mpi")]
public class DataParallelTrainingTests
{
    private static readonly GptConfig PretrainConfig = new(Layers: 1, Heads: 2, Channels: 16, VocabSize: 2257, MaxSequenceLength: 16);
    private static readonly TimeSpan RunLimit = TimeSpan.FromMinutes(3);
    private const double RelativeTolerance = 1e-5;

    private string folder = "";

    [SetUp]
    public void MakeFolder()
    {
        MpiAvailability.RequireMpi();
        folder = Directory.CreateTempSubdirectory("distalign-mpi-").FullName;
    }

    [TearDown]
    public void RemoveFolder()
    {
        if (folder.Length > 0) Directory.Delete(folder, recursive: true);
    }

    [Test]
    public void TwoRankPretrainingEqualsOneRankAndRepeatsBitForBit() =>
        CompareOneAndTwoRanks(dir => PretrainArgs(dir, steps: 8), "pretraining");

    [TestCase("full")]
    [TestCase("tilt")]
    public void TwoRankDpoEqualsOneRankAndRepeatsBitForBit(string train)
    {
        TinyAlignmentSetup.WriteModel(Path.Combine(folder, "pi0.safetensors"));
        TinyAlignmentSetup.WriteJsonl(Path.Combine(folder, "prefs.jsonl"), TinyAlignmentSetup.Examples(24));
        CompareOneAndTwoRanks(dir => [.. DpoArgs(dir), "--train", train], $"DPO, --train {train}");
    }

    [TestCase("distill", "--gamma", "1", "--kl-beta", "0.1", "--kl-samples", "2", "--kl-max-tokens", "3")]
    [TestCase("rebel", "--eta", "2")]
    [TestCase("pmle", "--gamma", "1", "--kl-beta", "0.1", "--kl-samples", "2", "--kl-max-tokens", "3")]
    public void TwoRankSampledObjectivesEqualOneRank(string objective, params string[] settings)
    {
        WritePolicyDataAndRewardModel();
        // PpoArgs without "--beta 0.05" (and, for PMLE, which needs no R̂, without "--reward-model PATH").
        var args = (string dir) => PpoArgs(dir).Select(a => a == "rlhf" ? objective : a)
            .Where((a, i) => i is not (3 or 4) && (objective != "pmle" || i is not (9 or 10)));
        CompareOneAndTwoRanks(dir => [.. args(dir), .. settings, "--eval-fraction", "0.25", "--eval-every", "1"],
                              $"{objective} ({(objective == "pmle" ? "dataset pairs" : "sampled pairs")}{(settings.Contains("--kl-beta") ? " and KL samples" : "")}), 8 pairs per step");
    }

    [Test]
    public void TwoRankRewardModelTrainingEqualsOneRankAndRepeatsBitForBit()
    {
        TinyAlignmentSetup.WriteModel(Path.Combine(folder, "pi0.safetensors"));
        TinyAlignmentSetup.WriteJsonl(Path.Combine(folder, "prefs.jsonl"), TinyAlignmentSetup.Examples(24));
        CompareOneAndTwoRanks(dir => ["reward", .. DpoArgs(dir)[5..]], "reward model", "reward_model.safetensors");
    }

    [Test]
    public void TwoRankPpoEqualsOneRankAndRepeatsBitForBit()
    {
        WritePolicyDataAndRewardModel();
        CompareOneAndTwoRanks(PpoArgs, "PPO (RLHF), 2 iterations of 8 prompts × 2 epochs × 2 minibatches");
    }

    private void WritePolicyDataAndRewardModel()
    {
        TinyAlignmentSetup.WriteModel(Path.Combine(folder, "pi0.safetensors"));
        TinyAlignmentSetup.WriteJsonl(Path.Combine(folder, "prefs.jsonl"), TinyAlignmentSetup.Examples(24));
        // A reward model with a random head, so that R̂ differs between responses.
        var backbone = new Gpt(TinyAlignmentSetup.Config);
        backbone.InitializeGpt2(21);
        using var rm = new DistAlign.Alignment.Reward.RewardModel(backbone, new AdamWSettings(), ownsBackbone: true);
        Numerics.RandomFloats(TinyAlignmentSetup.Config.Channels, 22, 1.0).CopyTo(rm.HeadWeight);
        rm.Save(Path.Combine(folder, "rm.safetensors"), TinyAlignmentSetup.TokenizerSpec);
    }

    [Test]
    public void ZeroOneShardsTheMomentsWithoutChangingABitAndResumesFromAnUnshardedCheckpoint()
    {
        string replicated = Path.Combine(folder, "replicated"), sharded = Path.Combine(folder, "zero1");
        Run(2, PretrainArgs(replicated, steps: 8));
        Run(2, [.. PretrainArgs(sharded, steps: 8), "--zero1"]);
        foreach (var file in new[] { "model.safetensors", Path.Combine("step-00000008", "training-state.safetensors"), Path.Combine("step-00000004", "training-state.safetensors") })
            Assert.That(File.ReadAllBytes(Path.Combine(sharded, file)), Is.EqualTo(File.ReadAllBytes(Path.Combine(replicated, file))), $"{file}: ZeRO-1 against replicated moments");
        Assert.That(DeterministicMetrics(sharded), Is.EqualTo(DeterministicMetrics(replicated)));

        // Resume the replicated run's step-4 checkpoint with the moments sharded: the end is the same bytes.
        string resumed = Path.Combine(folder, "resumed");
        Directory.CreateDirectory(resumed);
        CopyFolder(Path.Combine(replicated, "step-00000004"), Path.Combine(resumed, "step-00000004"));
        File.WriteAllText(Path.Combine(resumed, "latest"), "step-00000004\n");
        File.WriteAllLines(Path.Combine(resumed, "metrics.jsonl"), File.ReadAllLines(Path.Combine(replicated, "metrics.jsonl")).Take(4));
        Run(2, [.. PretrainArgs(resumed, steps: 8), "--zero1"]);
        Assert.That(File.ReadAllBytes(Path.Combine(resumed, "model.safetensors")), Is.EqualTo(File.ReadAllBytes(Path.Combine(replicated, "model.safetensors"))));
        Assert.That(File.ReadAllBytes(Path.Combine(resumed, "step-00000008", "training-state.safetensors")),
                    Is.EqualTo(File.ReadAllBytes(Path.Combine(replicated, "step-00000008", "training-state.safetensors"))));

        long replicatedBytes = Gpt.PlanTraining(PretrainConfig, 2, 8).TotalBytes, shardedBytes = Gpt.PlanTraining(PretrainConfig, 2, 8, optimizerShards: 2).TotalBytes;
        long moments = 2L * 4 * new Gpt(PretrainConfig).Layout.TotalElements;
        TestContext.Out.WriteLine($"ZeRO-1 over 2 ranks: weights, AdamW state and metrics byte-identical to replicated moments; planned bytes per rank " +
                                  $"{shardedBytes:N0} against {replicatedBytes:N0} (moments {moments:N0} → {moments / 2:N0} plus padding)");
        Assert.That(replicatedBytes - shardedBytes, Is.InRange(moments / 2 - 64, moments / 2 + 64), "half the moments per rank, up to padding and alignment");
    }

    /// <summary>
    /// demo --quick under 2 ranks (π0's pretraining, the reward model and the six methods data-parallel): with the π0 of
    /// the one-process run (π0 is pretrained at a learning rate where a changed summation order grows into a different
    /// model over hundreds of steps, so a 2-rank π0 is cached under a key of its own) every number of the report agrees
    /// with one process's, and two 2-rank runs agree bit for bit; rank 0 alone writes the report.
    /// </summary>
    [Test]
    public void TwoRankQuickDemoReproducesOneProcessFromTheSamePi0()
    {
        string one = Path.Combine(folder, "one"), twoA = Path.Combine(folder, "two-a"), twoB = Path.Combine(folder, "two-b");
        Run(1, ["demo", "--quick", "--out", one, "--threads", "1"]);
        var settings = DistAlign.Alignment.Experiments.DemoSettings.Quick;
        var tokenizer = DistAlign.Transformer.Tokenization.Gpt2Tokenizer.FromSpec(settings.Tokenizer);
        var split = ShippedData.SplitMobyDick();
        string Key(int ranks) => DistAlign.Alignment.Experiments.ReferencePretraining.CacheKey(settings.Model with { VocabSize = tokenizer.VocabSize },
            settings.Pretraining, tokenizer, split.Train + "\0" + split.HeldOut, ranks: ranks);
        Assert.That(Directory.Exists(Path.Combine(one, "pi0", Key(1))), "the one-process π0 is cached under the key computed here");
        foreach (var two in new[] { twoA, twoB })
        {
            CopyFolder(Path.Combine(one, "pi0", Key(1)), Path.Combine(two, "pi0", Key(2)));
            Run(2, ["demo", "--quick", "--out", two, "--threads", "1"]);
        }
        var single = ReportNumbers(one);
        var first = ReportNumbers(twoA);
        Assert.That(first.Keys, Is.EquivalentTo(single.Keys));
        double worst = 0;
        string worstAt = "";
        int identical = 0;
        foreach (var (path, a) in single)
        {
            // 5e-4 relative: the two runs sum gradients in different orders, and training grows that into the weights; a KL to π0
            // (≈ 0.03, a mean of small log-prob differences) moves about twice as much in relative terms as the weights' drift
            // (PMLE's kl_to_pi0 came out 1.7e-4 apart once the GELU and Σexp kernels' rounding changed). A wrong gradient or a
            // missed all-reduce shows at the percent level.
            double b = first[path], excess = Math.Abs(a - b) / (1e-6 + 5e-4 * Math.Abs(a));
            if (a.Equals(b)) identical++;
            if (excess > worst) (worst, worstAt) = (excess, $"{path}: {a:R} vs {b:R}");
        }
        TestContext.Out.WriteLine($"demo --quick, same π0: {single.Count} report numbers, {identical} bit-identical between 1 process and 2 ranks; " +
                                  $"worst |Δ| / (1e-6 + 5e-4·|x|) = {worst:F3} ({worstAt}); two 2-rank runs identical: {ReportNumbers(twoB).SequenceEqual(first)}");
        Assert.That(worst, Is.LessThanOrEqualTo(1), worstAt);
        Assert.That(ReportNumbers(twoB), Is.EqualTo(first), "two 2-rank demo runs must report the same bits");
    }

    [Test]
    public void ZeroOneInAlignmentChangesNoBitOfDpoOrPpo()
    {
        WritePolicyDataAndRewardModel();
        foreach (var (name, args) in new (string, Func<string, string[]>)[] { ("DPO", DpoArgs), ("PPO", PpoArgs) })
        {
            string replicated = Path.Combine(folder, name + "-replicated"), sharded = Path.Combine(folder, name + "-zero1");
            Run(2, [.. args(replicated), "--checkpoint-every", "1"]);
            Run(2, [.. args(sharded), "--checkpoint-every", "1", "--zero1"]);
            Assert.That(File.ReadAllBytes(Path.Combine(sharded, "model.safetensors")), Is.EqualTo(File.ReadAllBytes(Path.Combine(replicated, "model.safetensors"))), name);
            string last = Path.GetFileName(GptCheckpoint.LatestTraining(replicated)!);
            Assert.That(File.ReadAllBytes(Path.Combine(sharded, last, "training-state.safetensors")),
                        Is.EqualTo(File.ReadAllBytes(Path.Combine(replicated, last, "training-state.safetensors"))), $"{name}: the gathered AdamW state");
            Assert.That(DeterministicMetrics(sharded), Is.EqualTo(DeterministicMetrics(replicated)), name);
        }
        TestContext.Out.WriteLine("align --zero1 over 2 ranks (DPO, PPO): model, checkpointed AdamW state and metrics byte-identical to replicated moments");
    }

    [Test]
    public void AKilledRankStopsTheJobNamingItAndTheResumedRunEndsWithTheSameBytes()
    {
        const int steps = 400;
        string reference = Path.Combine(folder, "uninterrupted"), crashed = Path.Combine(folder, "crashed");
        Run(2, PretrainArgs(reference, steps, checkpointEvery: 1));

        string job = Guid.NewGuid().ToString("N");
        var clock = Stopwatch.StartNew();
        using (var run = CliProcess.StartUnderMpirun(2, job, PretrainArgs(crashed, steps, checkpointEvery: 1)))
        {
            while (!run.HasExited && MetricsLines(crashed) < 5) Thread.Sleep(20);
            Assert.That(run.HasExited, Is.False, "the run ended before a rank could be killed");
            int pid = CliProcess.RankProcessId(job, 1) ?? throw new AssertionException("rank 1's process was not found");
            Process.GetProcessById(pid).Kill();   // SIGKILL: no handler runs, no line from the dead rank
            var killed = Stopwatch.StartNew();
            int exit = run.WaitForExit(TimeSpan.FromSeconds(60));
            double stopSeconds = killed.Elapsed.TotalSeconds;
            string named = run.Error.Split('\n').FirstOrDefault(l => l.Contains("rank 1", StringComparison.Ordinal))?.Trim() ?? "";
            int saved = LatestStep(crashed);
            TestContext.Out.WriteLine($"killed rank 1 (pid {pid}) after step {MetricsLines(crashed)}: mpirun exited {exit} after {stopSeconds:F2} s; " +
                                      $"line naming the rank: \"{named}\"; latest checkpoint: step {saved}");
            Assert.That(exit, Is.Not.EqualTo(0), "a job that lost a rank must fail");
            Assert.That(named, Is.Not.Empty, $"no line names rank 1:\n{run.Error}");
            AssertEveryCheckpointLoads(crashed);
            Assert.That(saved, Is.GreaterThan(0));
        }
        Run(2, PretrainArgs(crashed, steps, checkpointEvery: 1));
        byte[] expected = File.ReadAllBytes(Path.Combine(reference, GptCheckpoint.ModelFileName));
        byte[] actual = File.ReadAllBytes(Path.Combine(crashed, GptCheckpoint.ModelFileName));
        TestContext.Out.WriteLine($"resumed 2-rank run: final weights byte-identical to the uninterrupted 2-rank run: {expected.AsSpan().SequenceEqual(actual)} ({clock.Elapsed.TotalSeconds:F1} s)");
        Assert.That(actual, Is.EqualTo(expected), "a killed and resumed 2-rank run must end with the uninterrupted run's bytes");
        Assert.That(DeterministicMetrics(crashed), Is.EqualTo(DeterministicMetrics(reference)), "metrics.jsonl after the kill and resume");
        Assert.That(Directory.GetDirectories(crashed, ".step-*"), Is.Empty, "the resumed run cleans up a checkpoint folder the kill interrupted");
        Assert.That(Directory.GetFiles(crashed, "*.tmp-*"), Is.Empty, "the resumed run cleans up temporary files");
    }

    [Test]
    public void AHungRankStopsTheJobWithinTheTimeoutNamingTheWaitingRank()
    {
        string job = Guid.NewGuid().ToString("N"), dir = Path.Combine(folder, "hung");
        using var run = CliProcess.StartUnderMpirun(2, job, [.. PretrainArgs(dir, 100_000, checkpointEvery: 1), "--rank-timeout", "3"]);
        while (!run.HasExited && MetricsLines(dir) < 3) Thread.Sleep(20);
        Assert.That(run.HasExited, Is.False, run.Error);
        int pid = CliProcess.RankProcessId(job, 1) ?? throw new AssertionException("rank 1's process was not found");
        var stopped = Stopwatch.StartNew();
        using (var kill = Process.Start("kill", ["-STOP", pid.ToString()])) kill.WaitForExit();   // hangs: alive, silent
        int exit = run.WaitForExit(TimeSpan.FromSeconds(60));
        double seconds = stopped.Elapsed.TotalSeconds;
        var line = run.Error.Split('\n').FirstOrDefault(l => l.Contains("did not complete within 3 s", StringComparison.Ordinal))?.Trim() ?? "";
        TestContext.Out.WriteLine($"rank 1 stopped (SIGSTOP): mpirun exited {exit} after {seconds:F1} s with: \"{line}\"");
        Assert.That(exit, Is.EqualTo(MpiProcessGroup.TimeoutExitCode), run.Error);
        Assert.That(line, Does.StartWith("distalign: rank 0 of 2: MPI_"), run.Error);
        Assert.That(seconds, Is.LessThan(3 + 20), "the job stops within the timeout plus start-up slack");
        AssertEveryCheckpointLoads(dir);
    }

    // ---- helpers ----------------------------------------------------------------------------------------------

    private void CompareOneAndTwoRanks(Func<string, string[]> args, string what, string modelFile = "model.safetensors")
    {
        string one = Path.Combine(folder, "one"), twoA = Path.Combine(folder, "two-a"), twoB = Path.Combine(folder, "two-b");
        Run(1, args(one));
        Run(2, args(twoA));
        Run(2, args(twoB));
        var single = ReadMetrics(one);
        var first = ReadMetrics(twoA);
        Assert.That(first.Count, Is.EqualTo(single.Count));
        // The losses (and the gradient norm) agree relative to their size; every other figure (some average to near 0, where a
        // relative difference means nothing) within 1e-5 of max(|value|, 1).
        double worst = 0, worstOther = 0;
        string worstAt = "", worstOtherAt = "";
        for (int i = 0; i < single.Count; i++)
            foreach (var (name, value) in single[i])
            {
                if (!IsDeterministic(name) || value is not double a || first[i][name] is not double b) continue;
                bool isLoss = name.Contains("loss", StringComparison.Ordinal) || name == "grad_norm";
                double difference = Math.Abs(a - b) / (isLoss ? Math.Max(Math.Abs(a), 1e-30) : Math.Max(Math.Abs(a), 1));
                if (isLoss && difference > worst) (worst, worstAt) = (difference, $"step {i + 1} {name}: {a:R} vs {b:R}");
                if (!isLoss && difference > worstOther) (worstOther, worstOtherAt) = (difference, $"step {i + 1} {name}: {a:R} vs {b:R}");
            }
        bool sameBits = File.ReadAllBytes(Path.Combine(twoA, modelFile)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(twoB, modelFile)));
        TestContext.Out.WriteLine($"{what}, {single.Count} steps: worst relative loss difference 2 ranks vs 1 = {worst:E2} ({worstAt}); " +
                                  $"other metrics within {worstOther:E2} of max(|x|, 1) ({worstOtherAt}); " +
                                  $"two 2-rank runs: metrics identical {DeterministicMetrics(twoA).SequenceEqual(DeterministicMetrics(twoB))}, weights identical {sameBits}");
        Assert.That(worst, Is.LessThanOrEqualTo(RelativeTolerance), worstAt);
        Assert.That(worstOther, Is.LessThanOrEqualTo(RelativeTolerance), worstOtherAt);
        Assert.That(DeterministicMetrics(twoB), Is.EqualTo(DeterministicMetrics(twoA)), "two 2-rank runs must log the same bits");
        Assert.That(sameBits, Is.True, "two 2-rank runs must end with the same weights");
    }

    private static void Run(int ranks, string[] args)
    {
        using var run = ranks == 1 ? CliProcess.Start(args) : CliProcess.StartUnderMpirun(ranks, Guid.NewGuid().ToString("N"), args);
        Assert.That(run.WaitForExit(RunLimit), Is.EqualTo(0), $"{ranks} rank(s): {string.Join(' ', args)}\n{run.Error}");
    }

    private string[] PretrainArgs(string outDir, int steps, int checkpointEvery = 4) =>
    [
        "pretrain", "--out", outDir, "--text", TextPath, "--layers", "1", "--heads", "2", "--channels", "16", "--context", "16",
        "--batch", "4", "--seq", "8", "--threads", "1", "--steps", steps.ToString(), "--checkpoint-every", checkpointEvery.ToString(),
        "--eval-every", "4", "--warmup", "2", "--seed", "3", "--check-weights-every", "2", "--resume",
    ];

    private string[] DpoArgs(string outDir) =>
    [
        "align", "--objective", "dpo", "--beta", "0.5", "--model", Path.Combine(folder, "pi0.safetensors"), "--data", Path.Combine(folder, "prefs.jsonl"),
        "--out", outDir, "--steps", "6", "--batch", "4", "--lr", "3e-3", "--warmup", "1", "--eval-fraction", "0.25", "--eval-every", "3",
        "--max-prompt-tokens", "12", "--max-response-tokens", "8", "--threads", "1", "--seed", "5", "--check-weights-every", "1",
    ];

    private string[] PpoArgs(string outDir) =>
    [
        "align", "--objective", "rlhf", "--beta", "0.05", "--model", Path.Combine(folder, "pi0.safetensors"), "--data", Path.Combine(folder, "prefs.jsonl"),
        "--reward-model", Path.Combine(folder, "rm.safetensors"), "--out", outDir, "--steps", "2", "--batch", "8", "--ppo-epochs", "2", "--minibatches", "2",
        "--max-new-tokens", "4", "--lr", "3e-3", "--warmup", "1", "--max-prompt-tokens", "12", "--max-response-tokens", "8", "--threads", "1",
        "--seed", "5", "--check-weights-every", "1",
    ];

    // Every number of report.json by its path, wall-clock figures left out.
    private static SortedDictionary<string, double> ReportNumbers(string dir)
    {
        var numbers = new SortedDictionary<string, double>(StringComparer.Ordinal);
        void Walk(JsonElement e, string path)
        {
            switch (e.ValueKind)
            {
                case JsonValueKind.Object:
                    foreach (var p in e.EnumerateObject()) Walk(p.Value, $"{path}.{p.Name}");
                    break;
                case JsonValueKind.Array:
                    int i = 0;
                    foreach (var item in e.EnumerateArray()) Walk(item, $"{path}[{i++}]");
                    break;
                case JsonValueKind.Number when !path.Contains("seconds", StringComparison.Ordinal):
                    numbers[path] = e.GetDouble();
                    break;
            }
        }
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "report.json")));
        Walk(doc.RootElement, "");
        return numbers;
    }

    private static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
    }

    private string TextPath
    {
        get
        {
            string path = Path.Combine(folder, "text.txt");
            if (!File.Exists(path)) File.WriteAllText(path, ShippedData.MobyDick()[..60_000]);
            return path;
        }
    }

    // Wall-clock figures (…_seconds, …_per_second) are the only ones that may differ run to run.
    private static bool IsDeterministic(string metric) =>
        !metric.EndsWith("_seconds", StringComparison.Ordinal) && !metric.EndsWith("_per_second", StringComparison.Ordinal);

    private static List<Dictionary<string, double?>> ReadMetrics(string dir) =>
        File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Where(l => l.Length > 0).Select(line =>
        {
            using var doc = JsonDocument.Parse(line);
            return doc.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.ValueKind == JsonValueKind.Number ? p.Value.GetDouble() : (double?)null);
        }).ToList();

    private static List<string> DeterministicMetrics(string dir) =>
        ReadMetrics(dir).Select(row => string.Join(",", row.Where(kv => IsDeterministic(kv.Key)).Select(kv => $"{kv.Key}={kv.Value:R}"))).ToList();

    private static int MetricsLines(string dir)
    {
        string path = Path.Combine(dir, "metrics.jsonl");
        if (!File.Exists(path)) return 0;
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd().Count(c => c == '\n');
    }

    private static int LatestStep(string dir)
    {
        string? latest = GptCheckpoint.LatestTraining(dir);
        if (latest is null) return 0;
        using var model = new Gpt(PretrainConfig);
        return GptCheckpoint.LoadTraining(latest, model).State.Step;
    }

    /// <summary>
    /// No partial checkpoint: 'latest' and every step folder load in full. (A write that the stop interrupted is a hidden
    /// temporary folder, never a step folder; the next run removes it.)
    /// </summary>
    private static void AssertEveryCheckpointLoads(string dir)
    {
        Assert.That(LatestStep(dir), Is.GreaterThan(0), "'latest' names a checkpoint that loads");
        using var model = new Gpt(PretrainConfig);
        foreach (var step in Directory.GetDirectories(dir, "step-*"))
            Assert.DoesNotThrow(() => GptCheckpoint.LoadTraining(step, model), $"{step} does not load");
    }
}
