using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Cli;
using DistAlign.Tests.Alignment;
using DistAlign.Tests.Cuda;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Cli;

/// <summary>
/// <c>align --objective rlhf|rebel --device cuda</c> end to end through the CUDA code path on ILGPU's CPU simulator (the seams
/// <see cref="DeviceOption.Probe"/> and <see cref="GpuTrainingOptions.OpenAccelerator"/>, as <see cref="AlignCudaCliTests"/>):
/// π, π0, the value model and R̂'s backbone on GPU engines. Metrics follow a CPU run within 1e-4 (relative to
/// max(1, |cpu|)); a run stopped after step 1 and resumed from its device checkpoint repeats the straight GPU run bit for bit.
/// </summary>
public class OnPolicyCudaCliTests : CliTestBase
{
    // byte-level tokenizer (V = 257), one layer, C = 12: small enough for the simulator
    private static readonly GptConfig TinyConfig = new(Layers: 1, Heads: 2, Channels: 12, VocabSize: 257, MaxSequenceLength: 24);
    private const string TokenizerSpec = "gpt2-k0";
    private string modelPath = "", dataPath = "", rewardPath = "";

    [SetUp]
    public void WriteModelDataAndRewardModel()
    {
        modelPath = Path.Combine(TestDirectory, "pi0.safetensors");
        dataPath = Path.Combine(TestDirectory, "prefs.jsonl");
        rewardPath = Path.Combine(TestDirectory, "rm.safetensors");
        using (var model = new Gpt(TinyConfig))
        {
            model.InitializeGpt2(3);
            GptCheckpoint.SaveModel(modelPath, model, TokenizerSpec);
        }
        TinyAlignmentSetup.WriteJsonl(dataPath, TinyAlignmentSetup.Examples(count: 8));
        var backbone = new Gpt(TinyConfig);
        backbone.InitializeGpt2(21);
        using var rm = new RewardModel(backbone, new AdamWSettings(), ownsBackbone: true);
        Numerics.RandomFloats(TinyConfig.Channels, 22, 1.0).CopyTo(rm.HeadWeight);   // R̂ differs between responses
        rm.Save(rewardPath, TokenizerSpec);
        PretendAnH200(onSimulator: true);
    }

    private int Align(string outDir, string[] objective, params string[] extra) =>
        Program.Main(["align", .. objective, "--reward-model", rewardPath, "--model", modelPath, "--data", dataPath, "--out", outDir,
                      "--steps", "2", "--batch", "2", "--lr", "1e-2", "--warmup", "0", "--eval-fraction", "0", "--eval-every", "0", "--clip", "0.5",
                      "--checkpoint-every", "1", "--max-prompt-tokens", "4", "--max-response-tokens", "4", "--max-new-tokens", "3",
                      "--threads", "2", "--seed", "3", .. extra]);

    private static List<Dictionary<string, double?>> Metrics(string run) => AlignmentRun.ReadMetrics(Path.Combine(run, AlignmentTrainer.MetricsFileName));

    private static void AssertFollows(List<Dictionary<string, double?>> gpu, List<Dictionary<string, double?>> cpu)
    {
        Assert.That(gpu.Select(r => r["step"]), Is.EqualTo(cpu.Select(r => r["step"])));
        for (int s = 0; s < cpu.Count; s++)
            foreach (var (key, value) in cpu[s])
            {
                if (key.EndsWith("seconds", StringComparison.Ordinal) || key.EndsWith("per_second", StringComparison.Ordinal) || value is null) continue;
                Assert.That(gpu[s][key], Is.EqualTo(value.Value).Within(1e-4 * Math.Max(1, Math.Abs(value.Value))), $"step {s + 1}: {key}");
            }
    }

    private static void CopyFolder(string from, string to)
    {
        foreach (string dir in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(dir.Replace(from, to));
        Directory.CreateDirectory(to);
        foreach (string file in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(file, file.Replace(from, to));
    }

    private void RunsOnTheCudaPathFollowsTheCpuAndResumesBitIdentically(string[] objective, string expectedLine)
    {
        string gpuRun = Path.Combine(TestDirectory, "gpu"), crashed = Path.Combine(TestDirectory, "crashed"), cpuRun = Path.Combine(TestDirectory, "cpu");
        Assert.That(Align(gpuRun, objective, "--device", "cuda"), Is.EqualTo(0), Error.ToString());
        string output = Output.ToString();
        TestContext.Out.WriteLine(output);
        Assert.That(output, Does.Contain("device: cuda (NVIDIA H200").And.Contain("training on CPUAccelerator").And.Contain(expectedLine));
        Assert.That(output, Does.Contain("done:"));
        Assert.That(Align(cpuRun, objective, "--device", "cpu"), Is.EqualTo(0), Error.ToString());
        var gpuMetrics = Metrics(gpuRun);
        AssertFollows(gpuMetrics, Metrics(cpuRun));

        // a crash after step 1 (a copy of the GPU run: 'latest' names step 1, metrics.jsonl already has step 2); the resume restores
        // the device state from the step-1 checkpoint and redoes step 2
        CopyFolder(gpuRun, crashed);
        File.WriteAllText(Path.Combine(crashed, GptCheckpoint.LatestFileName), "step-00000001\n");
        File.Delete(Path.Combine(crashed, GptCheckpoint.ModelFileName));
        Output.GetStringBuilder().Clear();
        Assert.That(Align(crashed, objective, "--device", "cuda", "--resume"), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("resumed from").And.Contain("at step 1"));
        Assert.That(TinyAlignmentSetup.DeterministicColumns(Metrics(crashed)), Is.EqualTo(TinyAlignmentSetup.DeterministicColumns(gpuMetrics)));
        Assert.That(File.ReadAllBytes(Path.Combine(crashed, GptCheckpoint.ModelFileName)),
                    Is.EqualTo(File.ReadAllBytes(Path.Combine(gpuRun, GptCheckpoint.ModelFileName))), "the resumed run saves the same weights");

        // model.safetensors holds the weights trained on the device: close to the CPU run's, away from π0's
        using var start = GptCheckpoint.LoadModel(modelPath).Model;
        using var gpu = GptCheckpoint.LoadModel(Path.Combine(gpuRun, GptCheckpoint.ModelFileName)).Model;
        using var cpu = GptCheckpoint.LoadModel(Path.Combine(cpuRun, GptCheckpoint.ModelFileName)).Model;
        double moved = 0, apart = 0;
        for (int i = 0; i < cpu.Parameters.Length; i++)
        {
            moved = Math.Max(moved, Math.Abs(cpu.Parameters[i] - start.Parameters[i]));
            apart = Math.Max(apart, Math.Abs(gpu.Parameters[i] - cpu.Parameters[i]));
        }
        TestContext.Out.WriteLine($"max |cpu − π0| = {moved:E2}, max |gpu − cpu| = {apart:E2}");
        Assert.That(moved, Is.GreaterThan(1e-3), "two steps at lr 1e-2 move the weights");
        Assert.That(apart, Is.LessThan(1e-4), "the GPU run's saved weights are the trained ones");
    }

    /// <summary>
    /// rlhf with a separate value model: its checkpoints hold two device-trained backbones and a host head (the shared-head
    /// iteration is compared with the CPU in <see cref="GpuOnPolicyTests"/>; the simulator costs seconds per step, so one case here).
    /// </summary>
    [Test]
    public void RlhfWithASeparateValueModelRunsOnTheCudaPathFollowsTheCpuAndResumesBitIdentically() =>
        RunsOnTheCudaPathFollowsTheCpuAndResumesBitIdentically(
            ["--objective", "rlhf", "--beta", "0.05", "--ppo-epochs", "1", "--minibatches", "1", "--value-model", "separate"],
            "(π, π0, the value model and R̂'s backbone on the device; responses decoded on the device, drawn on the host)");

    [Test]
    public void RebelRunsOnTheCudaPathFollowsTheCpuAndResumesBitIdentically() =>
        RunsOnTheCudaPathFollowsTheCpuAndResumesBitIdentically(
            ["--objective", "rebel", "--eta", "2"],
            "(π, π0 and R̂'s backbone on the device; responses decoded on the device, drawn on the host)");
}
