using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Cli;
using DistAlign.Tests.Alignment;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Cli;

/// <summary>The align and reward commands end to end, in process, on a tiny GPT and a JSONL file written here.</summary>
public class AlignCliTests : CliTestBase
{
    private string modelPath = "", dataPath = "", rewardPath = "";
    private const string RewardModelPlaceholder = "{reward-model}";

    [SetUp]
    public void SetUp()
    {
        modelPath = Path.Combine(TestDirectory, "pi0.safetensors");
        dataPath = Path.Combine(TestDirectory, "prefs.jsonl");
        rewardPath = Path.Combine(TestDirectory, "rm.safetensors");
        TinyAlignmentSetup.WriteModel(modelPath);
        TinyAlignmentSetup.WriteJsonl(dataPath, TinyAlignmentSetup.Examples());
        // A reward model with a random head, so that R̂ differs between responses.
        var backbone = new Gpt(TinyAlignmentSetup.Config);
        backbone.InitializeGpt2(21);
        using var rm = new RewardModel(backbone, new AdamWSettings(), ownsBackbone: true);
        Numerics.RandomFloats(TinyAlignmentSetup.Config.Channels, 22, 1.0).CopyTo(rm.HeadWeight);
        rm.Save(rewardPath, TinyAlignmentSetup.TokenizerSpec);
    }

    private static readonly string[] Small =
        ["--steps", "4", "--batch", "3", "--lr", "3e-3", "--warmup", "1", "--eval-fraction", "0.25", "--eval-every", "2",
         "--checkpoint-every", "2", "--max-prompt-tokens", "12", "--max-response-tokens", "8", "--threads", "2", "--seed", "5"];

    private int Align(string outDir, string[] objective, string? data = null, params string[] extra) =>
        AlignModel(modelPath, outDir, objective, data, extra);

    private int AlignModel(string model, string outDir, string[] objective, string? data = null, params string[] extra) =>
        Program.Main(["align", .. objective.Select(a => a == RewardModelPlaceholder ? rewardPath : a), "--model", model, "--data", data ?? dataPath,
                      "--out", outDir, .. Small, .. extra]);

    private static IEnumerable<TestCaseData> Objectives()
    {
        yield return new TestCaseData((object)new[] { "--objective", "sft" }).SetName("Sft");
        yield return new TestCaseData((object)new[] { "--objective", "dpo", "--variant", "sigmoid", "--beta", "0.5", "--grad-accum", "2" }).SetName("DpoSigmoid");
        yield return new TestCaseData((object)new[] { "--objective", "dpo", "--variant", "ipo", "--beta", "0.5" }).SetName("DpoIpo");
        yield return new TestCaseData((object)new[] { "--objective", "pmle", "--kl-beta", "0.1", "--kl-samples", "2", "--kl-max-tokens", "4" }).SetName("PmleWithKl");
        yield return new TestCaseData((object)new[] { "--objective", "distill", "--gamma", "0.5", "--kl-beta", "0.1", "--kl-max-tokens", "4", "--max-new-tokens", "4",
                                                      "--reward-model", RewardModelPlaceholder }).SetName("DistillWithKl");
        yield return new TestCaseData((object)new[] { "--objective", "distill", "--pair-source", "dataset", "--reward-model", RewardModelPlaceholder }).SetName("DistillDatasetPairs");
        yield return new TestCaseData((object)new[] { "--objective", "rebel", "--eta", "2", "--max-new-tokens", "4", "--reward-model", RewardModelPlaceholder }).SetName("Rebel");
        yield return new TestCaseData((object)new[] { "--objective", "rlhf", "--beta", "0.05", "--max-new-tokens", "4", "--ppo-epochs", "2",
                                                      "--missing-end-penalty", "-1", "--reward-model", RewardModelPlaceholder }).SetName("RlhfPpo");
        yield return new TestCaseData((object)new[] { "--objective", "rlhf", "--value-model", "separate", "--max-new-tokens", "4", "--ppo-epochs", "1",
                                                      "--reward-model", RewardModelPlaceholder }).SetName("RlhfPpoSeparateValueModel");
        yield return new TestCaseData((object)new[] { "--objective", "rkl", "--beta", "0.05", "--gamma", "0.1", "--entropy", "exact", "--max-new-tokens", "4",
                                                      "--reward-model", RewardModelPlaceholder }).SetName("ReverseKlPpo");
        // the tilt class: π0 frozen, b trained; checkpoints hold b and its moments, and resume bit-identically too
        yield return new TestCaseData((object)new[] { "--train", "tilt", "--objective", "dpo", "--beta", "0.5", "--grad-accum", "2" }).SetName("TiltDpo");
        yield return new TestCaseData((object)new[] { "--train", "tilt", "--objective", "pmle", "--kl-beta", "0.1", "--kl-max-tokens", "4" }).SetName("TiltPmleWithKl");
        yield return new TestCaseData((object)new[] { "--train", "tilt", "--objective", "distill", "--max-new-tokens", "4",
                                                      "--reward-model", RewardModelPlaceholder }).SetName("TiltDistill");
        yield return new TestCaseData((object)new[] { "--train", "tilt", "--objective", "rebel", "--max-new-tokens", "4",
                                                      "--reward-model", RewardModelPlaceholder }).SetName("TiltRebel");
        yield return new TestCaseData((object)new[] { "--train", "tilt", "--objective", "rlhf", "--beta", "0.05", "--max-new-tokens", "4", "--ppo-epochs", "2",
                                                      "--reward-model", RewardModelPlaceholder }).SetName("TiltRlhfPpo");
        yield return new TestCaseData((object)new[] { "--train", "tilt", "--objective", "rkl", "--gamma", "0.1", "--entropy", "exact", "--max-new-tokens", "4",
                                                      "--reward-model", RewardModelPlaceholder }).SetName("TiltReverseKlPpo");
        // head-LoRA: the tilt plus a rank-r update of the LM head; checkpoints hold A and B and their moments too
        yield return new TestCaseData((object)new[] { "--train", "head-lora", "--adapter-rank", "3", "--objective", "dpo", "--beta", "0.5" }).SetName("HeadLoraDpo");
        yield return new TestCaseData((object)new[] { "--train", "head-lora", "--objective", "rkl", "--gamma", "0.1", "--entropy", "exact", "--max-new-tokens", "4",
                                                      "--reward-model", RewardModelPlaceholder }).SetName("HeadLoraReverseKlPpo");
    }

    [TestCaseSource(nameof(Objectives))]
    public void RunsEndToEndAndResumesBitIdenticallyAfterACrash(string[] objective)
    {
        string straight = Path.Combine(TestDirectory, "straight"), crashed = Path.Combine(TestDirectory, "crashed");
        Assert.That(Align(straight, objective), Is.EqualTo(0), Error.ToString());
        Assert.That(Align(crashed, objective), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("kept").And.Contain("done:"));
        // Simulate a crash after step 2: 'latest' still names step 2, metrics.jsonl already has steps 3 and 4.
        File.WriteAllText(Path.Combine(crashed, GptCheckpoint.LatestFileName), "step-00000002\n");
        File.Delete(Path.Combine(crashed, GptCheckpoint.ModelFileName));
        Assert.That(Align(crashed, objective, null, "--resume"), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("resumed from"));

        var a = AlignmentRun.ReadMetrics(Path.Combine(straight, AlignmentTrainer.MetricsFileName));
        var b = AlignmentRun.ReadMetrics(Path.Combine(crashed, AlignmentTrainer.MetricsFileName));
        Assert.That(a.Select(r => r["step"]), Is.EqualTo(new double?[] { 1, 2, 3, 4 }));
        Assert.That(TinyAlignmentSetup.DeterministicColumns(b), Is.EqualTo(TinyAlignmentSetup.DeterministicColumns(a)));
        Assert.That(File.ReadAllBytes(Path.Combine(crashed, GptCheckpoint.ModelFileName)),
                    Is.EqualTo(File.ReadAllBytes(Path.Combine(straight, GptCheckpoint.ModelFileName))));
        var loaded = GptCheckpoint.LoadModel(Path.Combine(straight, GptCheckpoint.ModelFileName), withLogitOffset: true);
        using var model = loaded.Model;
        Assert.That(model.Config, Is.EqualTo(TinyAlignmentSetup.Config));
        Assert.That(loaded.LogitOffset is not null, Is.EqualTo(objective.Contains("tilt") || objective.Contains("head-lora")), "only a frozen-backbone run writes a logit offset");
    }

    private string TrainTilt(string outDir, string? model = null)
    {
        Assert.That(AlignModel(model ?? modelPath, outDir, ["--train", "tilt", "--objective", "pmle"]), Is.EqualTo(0), Error.ToString());
        return Path.Combine(outDir, GptCheckpoint.ModelFileName);
    }

    [Test]
    public void ATiltModelFileIsPi0UnchangedPlusTheTrainedOffsetAndSaysSo()
    {
        string tilted = TrainTilt(Path.Combine(TestDirectory, "tilt"));
        Assert.That(Output.ToString(), Does.Contain("tilt: π0 frozen").And.Contain("trained from π0"));
        using (var file = DistAlign.Engine.SafeTensors.SafeTensorsFile.Open(tilted))
            Assert.That(file.Metadata[GptCheckpoint.TrainedKey], Is.EqualTo("tilt"));
        var loaded = GptCheckpoint.LoadModel(tilted, withLogitOffset: true);
        using var backbone = loaded.Model;
        using var pi0 = GptCheckpoint.LoadModel(modelPath).Model;
        Assert.That(backbone.Parameters.ToArray(), Is.EqualTo(pi0.Parameters.ToArray()), "the backbone is frozen: bit-identical to π0");
        Assert.That(loaded.LogitOffset, Has.Length.EqualTo(TinyAlignmentSetup.Config.VocabSize));
        Assert.That(loaded.LogitOffset!.Count(b => b != 0), Is.GreaterThan(0), "b moved away from 0");
        using (var file = DistAlign.Engine.SafeTensors.SafeTensorsFile.Open(modelPath))
            Assert.That(file.Metadata[GptCheckpoint.TrainedKey], Is.EqualTo("full"));

        // read as a plain GPT it would silently be π0: refused with the file and the tensor named
        var refused = Assert.Throws<CheckpointMismatchException>(() => GptCheckpoint.LoadModel(tilted))!;
        Assert.That(refused.Message, Does.Contain(tilted).And.Contain("logit_offset"));
        Assert.That(AlignModel(tilted, Path.Combine(TestDirectory, "full"), ["--objective", "dpo"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("a tilt model"));
        Assert.That(Program.Main(["reward", "--model", tilted, "--data", dataPath, "--out", Path.Combine(TestDirectory, "rm-out"), "--steps", "1",
                                  "--max-prompt-tokens", "12", "--max-response-tokens", "8"]), Is.EqualTo(Program.UsageError));

        // --train tilt on a tilt model continues from its b
        Output.GetStringBuilder().Clear();
        TrainTilt(Path.Combine(TestDirectory, "again"), tilted);
        Assert.That(Output.ToString(), Does.Contain("trained from the model's logit_offset"));
    }

    [Test]
    public void SampleDrawsExactlyFromTheTiltedModel()
    {
        string tilted = TrainTilt(Path.Combine(TestDirectory, "tilt"));
        Output.GetStringBuilder().Clear();
        Assert.That(Program.Main(["sample", "--model", tilted, "--prompt", "Tell me", "--samples", "3", "--max-tokens", "6", "--seed", "9", "--threads", "2"]),
                    Is.EqualTo(0), Error.ToString());
        string printed = Output.ToString();
        Assert.That(printed, Does.Contain("tilt model: sampling π0·exp(b) exactly"));

        var loaded = GptCheckpoint.LoadModel(tilted, withLogitOffset: true);
        using var backbone = loaded.Model;
        var tok = DistAlign.Transformer.Tokenization.Gpt2Tokenizer.FromSpec(TinyAlignmentSetup.TokenizerSpec);
        int[] prompt = [tok.EndOfText, .. tok.Encode("Tell me")];
        var expected = DistAlign.Alignment.Policies.TiltedSampler.Sample(backbone, loaded.LogitOffset, [prompt, prompt, prompt],
            new DistAlign.Transformer.Model.SamplingOptions(6, EndOfText: tok.EndOfText), 9);
        foreach (var r in expected)
            Assert.That(printed, Does.Contain("Tell me" + tok.Decode(r.Ended ? r.Tokens[..^1] : r.Tokens)));
        // with b = 0 the same draws would be π0's: the offset is what changed them (b moved, so at least one log-prob differs)
        var untilted = DistAlign.Alignment.Policies.TiltedSampler.Sample(backbone, new float[backbone.Config.VocabSize], [prompt, prompt, prompt],
            new DistAlign.Transformer.Model.SamplingOptions(6, EndOfText: tok.EndOfText), 9);
        Assert.That(expected.Select(r => r.LogProbs.Sum()), Is.Not.EqualTo(untilted.Select(r => r.LogProbs.Sum())));

        Assert.That(Program.Main(["sample", "--model", tilted, "--temperature", "0.5"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("temperature 1"));
    }

    [Test]
    public void AHeadLoraModelKeepsItsAdapterSamplesThroughItAndIsNeverReadWithoutIt()
    {
        string run = Path.Combine(TestDirectory, "lora");
        Assert.That(Align(run, ["--train", "head-lora", "--adapter-rank", "2", "--objective", "pmle"]), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("rank-2 head adapter trained from π0"));
        string file = Path.Combine(run, GptCheckpoint.ModelFileName);
        using (var st = DistAlign.Engine.SafeTensors.SafeTensorsFile.Open(file))
            Assert.That(st.Metadata[GptCheckpoint.TrainedKey], Is.EqualTo("head-lora"));
        var loaded = GptCheckpoint.LoadModel(file, withLogitOffset: true);
        using var backbone = loaded.Model;
        Assert.That(loaded.AdapterRank, Is.EqualTo(2));
        Assert.That(loaded.AdapterB.Count(x => x != 0), Is.GreaterThan(0), "B moved away from its zero start");

        Output.GetStringBuilder().Clear();
        Assert.That(Program.Main(["sample", "--model", file, "--prompt", "Tell me", "--samples", "2", "--max-tokens", "6", "--seed", "4", "--threads", "2"]),
                    Is.EqualTo(0), Error.ToString());
        var tok = DistAlign.Transformer.Tokenization.Gpt2Tokenizer.FromSpec(TinyAlignmentSetup.TokenizerSpec);
        int[] prompt = [tok.EndOfText, .. tok.Encode("Tell me")];
        var expected = DistAlign.Alignment.Policies.TiltedSampler.Sample(backbone, loaded.LogitOffset, [prompt, prompt],
            new SamplingOptions(6, EndOfText: tok.EndOfText), 4, new DistAlign.Alignment.Policies.HeadAdapter(2, loaded.AdapterA, loaded.AdapterB));
        foreach (var r in expected)
            Assert.That(Output.ToString(), Does.Contain(System.FormattableString.Invariant($"ln p = {r.LogProbs.Sum():F2})")));

        Assert.That(AlignModel(file, Path.Combine(TestDirectory, "drop"), ["--train", "tilt", "--objective", "pmle"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("would drop its adapter"));
        Assert.That(AlignModel(file, Path.Combine(TestDirectory, "rank"), ["--train", "head-lora", "--adapter-rank", "3", "--objective", "pmle"]),
                    Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("rank-2 adapter"));
        Assert.That(Align(Path.Combine(TestDirectory, "full-rank"), ["--adapter-rank", "3", "--objective", "pmle"]), Is.EqualTo(Program.UsageError));
        Output.GetStringBuilder().Clear();
        Assert.That(AlignModel(file, Path.Combine(TestDirectory, "more"), ["--train", "head-lora", "--objective", "pmle"]), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("rank-2 head adapter trained from the model's offset and adapter"));
    }

    [Test]
    public void TiltRefusesASeparateValueModel()
    {
        Assert.That(Align(Path.Combine(TestDirectory, "sep"), ["--train", "tilt", "--objective", "rlhf", "--value-model", "separate", "--reward-model", RewardModelPlaceholder]),
                    Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--value-model shared"));
    }

    [Test]
    public void ReferenceCacheHitsOnTheSameModelAndDataAndMissesWhenTheDataChanges()
    {
        string run = Path.Combine(TestDirectory, "run");
        string[] dpo = ["--objective", "dpo"];
        Assert.That(Align(run, dpo), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("reference log-probs: computed").And.Not.Contain("cached (hit)"));
        Output.GetStringBuilder().Clear();
        Assert.That(Align(run, dpo, null, "--resume"), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("reference log-probs: cached (hit)"));

        string other = Path.Combine(TestDirectory, "other.jsonl");
        TinyAlignmentSetup.WriteJsonl(other, TinyAlignmentSetup.Examples(salt: "?"));
        Output.GetStringBuilder().Clear();
        Assert.That(Align(run, dpo, other, "--resume"), Is.EqualTo(Program.UsageError), "other data cannot resume this run");
        Assert.That(Output.ToString(), Does.Contain("reference log-probs: computed"));
        Assert.That(Error.ToString(), Does.Contain("different settings"));
        Assert.That(Directory.GetFiles(Path.Combine(run, "cache")), Has.Length.EqualTo(2));
    }

    [Test]
    public void MalformedJsonlIsOneLineWithItsLineNumberAndExitCode2()
    {
        File.WriteAllLines(dataPath, [
            """{"prompt": "a", "chosen": "b", "rejected": "c"}""",
            """{"prompt": "d", "chosen": "e", "rejected": "f"}""",
            """{"prompt": "g", "chosen": 5, "rejected": "h"}""",
        ]);
        Assert.That(Align(Path.Combine(TestDirectory, "bad"), ["--objective", "sft"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("prefs.jsonl:3:"));
        Assert.That(Error.ToString().Trim().Split('\n'), Has.Length.EqualTo(1));
        Assert.That(Directory.Exists(Path.Combine(TestDirectory, "bad")), Is.False, "nothing is written for bad input");
    }

    [Test]
    public void MissingFilesAndBadFlagsGiveExitCode2()
    {
        Assert.That(Program.Main(["align", "--objective", "dpo", "--model", Path.Combine(TestDirectory, "nope"), "--data", dataPath, "--out", TestDirectory]),
                    Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("no such file"));
        Assert.That(Align(Path.Combine(TestDirectory, "x"), ["--objective", "dpo", "--variant", "fancy"]), Is.EqualTo(Program.UsageError));
        Assert.That(Align(Path.Combine(TestDirectory, "y"), ["--objective", "ppo"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--objective must be"));
        Assert.That(Align(Path.Combine(TestDirectory, "z"), ["--objective", "rlhf"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("needs --reward-model"));
        Assert.That(Align(Path.Combine(TestDirectory, "w"), ["--objective", "dpo", "--reward-model", RewardModelPlaceholder]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--reward-model goes with"));
    }

    [Test]
    public void ANonFiniteLossStopsTheRunAndKeepsTheLastCheckpoint()
    {
        string run = Path.Combine(TestDirectory, "nan");
        int code = Program.Main(["align", "--objective", "sft", "--model", modelPath, "--data", dataPath, "--out", run,
            "--steps", "20", "--batch", "2", "--lr", "1e30", "--warmup", "0", "--clip", "0", "--eval-fraction", "0",
            "--checkpoint-every", "1", "--max-prompt-tokens", "12", "--max-response-tokens", "8", "--threads", "2"]);
        Assert.That(code, Is.EqualTo(Program.RunFailed));
        Assert.That(Error.ToString(), Does.Contain("training stopped").And.Contain("not finite"));
        string latest = GptCheckpoint.LatestTraining(run)!;
        using var model = new Gpt(TinyAlignmentSetup.Config);
        var (state, _) = GptCheckpoint.LoadTraining(latest, model);
        Assert.That(state.Step, Is.GreaterThanOrEqualTo(1));
        Assert.That(AlignmentRun.ReadMetrics(Path.Combine(run, AlignmentTrainer.MetricsFileName)), Has.Count.EqualTo(state.Step));
    }

    [Test]
    public void HelpListsEveryOptionWithItsDefault()
    {
        Assert.That(Program.Main(["align", "--help"]), Is.EqualTo(0));
        string help = Output.ToString();
        foreach (var flag in new[] { "--objective", "--variant", "--beta", "--gamma", "--epsilon", "--kl-beta", "--kl-samples", "--steps", "--batch",
                                     "--grad-accum", "--lr", "--warmup", "--clip", "--eval-fraction", "--eval-every", "--checkpoint-every",
                                     "--max-prompt-tokens", "--max-response-tokens", "--seed", "--threads", "--resume", "--train" })
            Assert.That(help, Does.Contain(flag), flag);
        Assert.That(help, Does.Contain("[default: sigmoid]").And.Contain("[default: 0.1]"));
        Assert.That(Program.Main(["reward", "--help"]), Is.EqualTo(0));
        Assert.That(Output.ToString(), Does.Contain("--margin").And.Contain("--centring"));
    }

    [Test]
    public void RewardTrainsAFewStepsAndWritesALoadableRewardModel()
    {
        string run = Path.Combine(TestDirectory, "rm");
        int code = Program.Main(["reward", "--model", modelPath, "--data", dataPath, "--out", run, "--steps", "3", "--batch", "3",
            "--lr", "1e-3", "--warmup", "1", "--eval-fraction", "0.25", "--eval-every", "3", "--margin", "0.1",
            "--max-prompt-tokens", "12", "--max-response-tokens", "8", "--threads", "2"]);
        Assert.That(code, Is.EqualTo(0), Error.ToString());
        var rows = AlignmentRun.ReadMetrics(Path.Combine(run, AlignmentTrainer.MetricsFileName));
        Assert.That(rows, Has.Count.EqualTo(3));
        Assert.That(rows[2].ContainsKey("eval_loss") && rows[0].ContainsKey("accuracy") && rows[0].ContainsKey("mean_reward"));
        var loaded = RewardModel.Load(Path.Combine(run, "reward_model.safetensors"), new AdamWSettings());
        using var rm = loaded.Model;
        Assert.That(loaded.TokenizerSpec, Is.EqualTo(TinyAlignmentSetup.TokenizerSpec));
        Assert.That(rm.HeadWeight.ToArray().Any(w => w != 0f), "the head trained away from its zero init");
    }
}
