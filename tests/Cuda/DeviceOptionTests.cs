using System.CommandLine;
using DistAlign.Cli;
using DistAlign.Engine.Cuda;
using DistAlign.Tests.Cli;

namespace DistAlign.Tests.Cuda;

/// <summary><c>--device cuda|cpu|auto</c>: the resolution rules (with fake probes) and the CLI on this machine.</summary>
public class DeviceOptionTests : CliTestBase
{
    private static readonly CudaProbe NoDriver = new(false, "no CUDA driver found: tried libcuda.so.1, libcuda.so", 0, []);
    private static readonly CudaProbe H200 = PretendGpu.H200;

    [Test]
    public void ResolutionFollowsTheRequestTheProbeAndWhetherTheCommandHasACudaPath()
    {
        Assert.That(DeviceOption.Resolve("cpu", "pretrain", true, () => throw new AssertionException("cpu must not probe")),
                    Is.EqualTo(("cpu", "device: cpu (requested)")));
        Assert.That(DeviceOption.Resolve("auto", "pretrain", true, () => NoDriver),
                    Is.EqualTo(("cpu", "device: cpu (no CUDA driver found: tried libcuda.so.1, libcuda.so)")));
        Assert.That(DeviceOption.Resolve("auto", "pretrain", true, () => H200),
                    Is.EqualTo(("cuda", "device: cuda (NVIDIA H200 (sm_90, 140 GiB, 132 SMs), driver 13.0)")));
        Assert.That(DeviceOption.Resolve("auto", "pretrain", false, () => H200),
                    Is.EqualTo(("cpu", "device: cpu (NVIDIA H200 found, but 'pretrain' has no CUDA path yet)")));
        Assert.That(DeviceOption.Resolve("cuda", "pretrain", true, () => H200).Device, Is.EqualTo("cuda"));
        Assert.That(Assert.Throws<CliUsageException>(() => DeviceOption.Resolve("cuda", "pretrain", true, () => NoDriver))!.Message,
                    Is.EqualTo("--device cuda: no CUDA driver found: tried libcuda.so.1, libcuda.so"));
        Assert.That(Assert.Throws<CliUsageException>(() => DeviceOption.Resolve("cuda", "gemm-check", false, () => H200))!.Message,
                    Does.Contain("'gemm-check' has no CUDA path yet"));
        Assert.That(DeviceOption.CudaCapableCommands, Is.EquivalentTo(new[] { "pretrain", "align", "bench step", "bench dpo", "bench ppo", "reward", "sample", "demo", "experiment lm" }),
                    "pretrain and reward train on a GPU engine, align and bench dpo on a GPU GptPolicy, sample decodes on the device, demo and experiment lm do all of it under --device cuda");
    }

    [Test]
    public void EveryCommandWithAnActionGetsTheOption()
    {
        var root = new RootCommand();
        foreach (var command in Commands.All()) root.Subcommands.Add(command);
        DeviceOption.AddToAll(root);
        var actionable = new List<string>();
        void Walk(Command c)
        {
            if (c.Action is not null && c is not RootCommand)
            {
                actionable.Add(c.Name);
                Assert.That(c.Options.Count(o => o.Name == "--device"), Is.EqualTo(1), c.Name);
            }
            foreach (var s in c.Subcommands) Walk(s);
        }
        Walk(root);
        Assert.That(actionable, Does.Contain("pretrain").And.Contain("sample").And.Contain("step").And.Contain("gemm-check"));
    }

    [Test]
    public void OnThisMachineAutoSaysWhyItChoseTheCpuAndCudaIsAUsageError()
    {
        var probe = CudaDriver.Probe();
        if (probe.IsUsable) Assert.Ignore($"a usable CUDA device is present ({probe.Devices[0]}); this test checks a machine without one");
        string missing = Path.Combine(TestDirectory, "none.safetensors");
        Assert.That(Program.Main(["sample", "--model", missing]), Is.EqualTo(Program.UsageError));
        Assert.That(Output.ToString(), Does.StartWith($"device: cpu ({probe.Reason})"));
        Assert.That(Error.ToString(), Does.Contain("no such file"));

        Assert.That(Program.Main(["sample", "--model", missing, "--device", "cuda"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain($"--device cuda: {probe.Reason}"));
        Assert.That(Program.Main(["sample", "--model", missing, "--device", "gpu"]), Is.EqualTo(Program.UsageError));
        Assert.That(Program.Main(["sample", "--model", missing, "--device", "cpu"]), Is.EqualTo(Program.UsageError));
        Assert.That(Output.ToString(), Does.Contain("device: cpu (requested)"));
    }
}
