using DistAlign.Alignment.Training;
using DistAlign.Cli;
using DistAlign.Engine.Cuda;
using DistAlign.Tests.Alignment;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Cli;

/// <summary>
/// <c>align --device cuda</c>: every objective has a CUDA path (the on-policy ones run in <see cref="OnPolicyCudaCliTests"/>). Where
/// no GPU is present the CUDA path is driven through its seams: <see cref="DeviceOption.Probe"/> pretends an H200 is
/// there and <see cref="GpuTrainingOptions.OpenAccelerator"/> opens ILGPU's CPU simulator instead of the CUDA device, so the
/// very code a GPU run takes (a GPU GptPolicy for π and π0, device checkpoints, the final download) runs end to end here.
/// </summary>
public class AlignCudaCliTests : CliTestBase
{
    // A model small enough for the simulator: byte-level tokenizer (V = 257), one layer, C = 12; sequences of at most 7 tokens.
    private static readonly GptConfig TinyConfig = new(Layers: 1, Heads: 2, Channels: 12, VocabSize: 257, MaxSequenceLength: 24);
    private string modelPath = "", dataPath = "";

    [SetUp]
    public void WriteModelAndData()
    {
        modelPath = Path.Combine(TestDirectory, "pi0.safetensors");
        dataPath = Path.Combine(TestDirectory, "prefs.jsonl");
        using var model = new Gpt(TinyConfig);
        model.InitializeGpt2(3);
        GptCheckpoint.SaveModel(modelPath, model, "gpt2-k0");
        TinyAlignmentSetup.WriteJsonl(dataPath, TinyAlignmentSetup.Examples(count: 8));
    }

    private int Align(string outDir, params string[] extra) =>
        Program.Main(["align", "--model", modelPath, "--data", dataPath, "--out", outDir,
                      "--steps", "2", "--batch", "2", "--lr", "1e-2", "--warmup", "0", "--eval-fraction", "0.25", "--eval-every", "2",
                      "--checkpoint-every", "1", "--max-prompt-tokens", "4", "--max-response-tokens", "4", "--threads", "2", "--seed", "3", .. extra]);

    [Test]
    public void OnThisMachineDeviceCudaIsAUsageErrorThatSaysWhy()
    {
        var probe = CudaDriver.Probe();
        if (probe.IsUsable) Assert.Ignore($"a usable CUDA device is present ({probe.Devices[0]}); this test checks a machine without one");
        Assert.That(Align(Path.Combine(TestDirectory, "run"), "--objective", "dpo", "--device", "cuda"), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain($"--device cuda: {probe.Reason}"));
        Assert.That(Directory.Exists(Path.Combine(TestDirectory, "run")), Is.False, "nothing is written");
    }

    [Test]
    public void EveryObjectiveResolvesToCudaUnderAutoWithAGpu()
    {
        PretendAnH200();
        string missing = Path.Combine(TestDirectory, "none.safetensors");
        foreach (string[] objective in new[] { ["sft"], ["dpo"], ["pmle"], ["distill"], ["rebel"], ["rlhf"], ["rkl"], new[] { "rkl", "--entropy", "exact" } })
        {
            Output.GetStringBuilder().Clear();
            Assert.That(Program.Main(["align", "--objective", .. objective, "--model", missing, "--data", dataPath, "--out", Path.Combine(TestDirectory, "run")]),
                        Is.EqualTo(Program.UsageError));
            Assert.That(Output.ToString(), Does.StartWith("device: cuda (NVIDIA H200"), string.Join(' ', objective));
        }
    }

    [Test]
    public void DpoRunsEndToEndOnTheCudaPathAndSavesTheTrainedWeights()
    {
        PretendAnH200(onSimulator: true);
        string gpuRun = Path.Combine(TestDirectory, "gpu"), cpuRun = Path.Combine(TestDirectory, "cpu");
        string[] dpo = ["--objective", "dpo", "--beta", "0.5"];
        Assert.That(Align(gpuRun, [.. dpo, "--device", "cuda"]), Is.EqualTo(0), Error.ToString());
        string output = Output.ToString();
        TestContext.Out.WriteLine(output);
        Assert.That(output, Does.Contain("device: cuda (NVIDIA H200").And.Contain("training on CPUAccelerator").And.Contain("(π and π0 on the device"));
        Assert.That(output, Does.Contain("reference log-probs: computed").And.Contain("done:"));
        Assert.That(Align(cpuRun, [.. dpo, "--device", "cpu"]), Is.EqualTo(0), Error.ToString());

        var gpuMetrics = AlignmentRun.ReadMetrics(Path.Combine(gpuRun, AlignmentTrainer.MetricsFileName));
        var cpuMetrics = AlignmentRun.ReadMetrics(Path.Combine(cpuRun, AlignmentTrainer.MetricsFileName));
        Assert.That(gpuMetrics.Select(r => r["step"]), Is.EqualTo(new double?[] { 1, 2 }));
        for (int s = 0; s < 2; s++)
            foreach (var m in new[] { "loss", "grad_norm" })
                Assert.That(gpuMetrics[s][m], Is.EqualTo(cpuMetrics[s][m]!.Value).Within(1e-4 * Math.Abs(cpuMetrics[s][m]!.Value)), $"step {s + 1}: {m}");
        Assert.That(gpuMetrics[1]["eval_loss"], Is.EqualTo(cpuMetrics[1]["eval_loss"]!.Value).Within(1e-4 * cpuMetrics[1]["eval_loss"]!.Value));

        // model.safetensors holds the weights trained on the device: close to the CPU run's, not π0's
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
}
