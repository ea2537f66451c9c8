using DistAlign.Alignment.Reward;
using DistAlign.Cli;
using DistAlign.Engine.Cuda;
using DistAlign.Tests.Alignment;
using DistAlign.Tests.Cuda;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Cli;

/// <summary>
/// <c>distalign reward --device cuda</c>: driven without a GPU through the CLI's seams (<see cref="DeviceOption.Probe"/> pretends an
/// H200 is there, <see cref="GpuTrainingOptions.OpenAccelerator"/> opens ILGPU's CPU simulator), it says which device trains, and its
/// reward_model.safetensors holds the trained backbone, close to a CPU run's. <c>--device cuda</c> on a machine without a GPU is a
/// usage error naming the reason.
/// </summary>
public class RewardGpuCliTests : CliTestBase
{
    private string modelPath = "", dataPath = "";

    [SetUp]
    public void SetUp()
    {
        // the tokenizer's vocabulary, but narrow and short, so the simulated GPU kernels stay quick
        modelPath = Path.Combine(TestDirectory, "pi0.safetensors");
        using (var model = new Gpt(TinyAlignmentSetup.Config with { Channels = 8, MaxSequenceLength = 16 }))
        {
            model.InitializeGpt2(7);
            GptCheckpoint.SaveModel(modelPath, model, TinyAlignmentSetup.TokenizerSpec);
        }
        dataPath = Path.Combine(TestDirectory, "prefs.jsonl");
        TinyAlignmentSetup.WriteJsonl(dataPath, TinyAlignmentSetup.Examples(count: 4));
    }

    private int Reward(string outDir, params string[] extra) =>
        Program.Main(["reward", "--model", modelPath, "--data", dataPath, "--out", outDir,
                      "--steps", "2", "--batch", "2", "--lr", "1e-2", "--warmup", "0", "--eval-fraction", "0", "--checkpoint-every", "2",
                      "--max-prompt-tokens", "5", "--max-response-tokens", "3", "--threads", "2", "--seed", "5", .. extra]);

    [Test]
    public void TrainsOnTheSimulatedGpuAndSavesTheTrainedBackbone()
    {
        string cpu = Path.Combine(TestDirectory, "cpu"), gpu = Path.Combine(TestDirectory, "gpu");
        Assert.That(Reward(cpu, "--device", "cpu"), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("training on the CPU"));
        Assert.That(DeviceOption.CudaCapableCommands, Does.Contain("reward"));
        PretendAnH200(onSimulator: true);
        Assert.That(Reward(gpu, "--device", "cuda"), Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("device: cuda (NVIDIA H200")
                                          .And.Contain($"training on {GpuBackend.Get("simulator").Name} (fp32 tiled ILGPU GEMMs, materialized fp32 attention) (backbone on the device"));

        var fromGpu = RewardModel.Load(Path.Combine(gpu, RewardCommand.RewardModelFileName), new AdamWSettings());
        var fromCpu = RewardModel.Load(Path.Combine(cpu, RewardCommand.RewardModelFileName), new AdamWSettings());
        var (pi0, _) = GptCheckpoint.LoadModel(modelPath);
        using (fromGpu.Model)
        using (fromCpu.Model)
        using (pi0)
        {
            double moved = 0, apart = 0;
            var g = fromGpu.Model.Backbone.Parameters;
            for (int i = 0; i < g.Length; i++)
            {
                moved = Math.Max(moved, Math.Abs(g[i] - pi0.Parameters[i]));
                apart = Math.Max(apart, Math.Abs(g[i] - fromCpu.Model.Backbone.Parameters[i]));
            }
            TestContext.Out.WriteLine($"reward CLI on the simulator: max |gpu − π0| = {moved:E2}, max |gpu − cpu| = {apart:E2}");
            Assert.That(moved, Is.GreaterThan(1e-3), "step 2 moves the saved backbone (the zero head gives it no gradient at step 1)");
            Assert.That(apart, Is.LessThan(1e-4));
            Assert.That(fromGpu.Model.HeadWeight.ToArray(), Is.EqualTo(fromCpu.Model.HeadWeight.ToArray()).Within(1e-4));
        }
    }

    [Test]
    public void DeviceCudaWithoutAGpuIsAUsageErrorSayingWhy()
    {
        var probe = CudaDriver.Probe();
        if (probe.IsUsable) Assert.Ignore($"a usable CUDA device is present ({probe.Devices[0]}); this test checks a machine without one");
        Assert.That(Reward(Path.Combine(TestDirectory, "run"), "--device", "cuda"), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain($"--device cuda: {probe.Reason}"));
    }
}
