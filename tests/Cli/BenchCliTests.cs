using DistAlign.Cli;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Cli;

[NonParallelizable]
public class BenchCliTests
{
    [Test]
    public void ThePyTorchPeerIsSkippedWithAReasonWhenPythonIsMissing()
    {
        var saved = Console.Out;
        var output = new StringWriter();
        Console.SetOut(output);
        try
        {
            int code = Program.Main(["bench", "peers", "--python", "/nonexistent/python3", "--threads", "1"]);
            Assert.That(code, Is.EqualTo(0));
        }
        finally { Console.SetOut(saved); }
        Assert.That(output.ToString(), Does.StartWith("device: ").And.Contain("\npeer skipped:"));   // first line: --device resolution
    }

    [Test]
    public void AnUnknownPeerWorkloadIsAUsageErrorEvenWithoutPython()
    {
        var savedError = Console.Error;
        var error = new StringWriter();
        Console.SetError(error);
        try
        {
            int code = Program.Main(["bench", "peers", "--workload", "w3", "--python", "/nonexistent/python3"]);
            Assert.That(code, Is.EqualTo(2));
        }
        finally { Console.SetError(savedError); }
        Assert.That(error.ToString(), Does.Contain("w1, w2 or dpo"));
    }

    [Test]
    public void TheDpoPeerScriptReportsStepTimesWhenPyTorchIsInstalled()
    {
        const string python = "/usr/bin/python3";
        string script = Path.Combine(TestContext.CurrentContext.TestDirectory, "..", "..", "..", "..", "tools", "peers", "torch_step.py");
        if (PeerStepBenchmark.Unavailable(python, script) is { } why)
            Assert.Ignore($"PyTorch peer not available here: {why}");
        // Ours is a stand-in here (the DPO step itself is covered by the alignment tests): this checks the
        // peer's DPO workload runs and its JSON is read back, one timed step.
        var c = PeerStepBenchmark.Compare("DPO", (warmup, steps) => Enumerable.Repeat(1.0, steps).ToArray(), python, script, "dpo",
                                          rounds: 1, stepsPerRound: 1, threads: 1);
        Assert.That(c.PeerMilliseconds, Has.Length.EqualTo(1).And.All.GreaterThan(0));
        Assert.That(c.Peer, Does.StartWith("PyTorch "));
        Assert.That(c.Ratio, Is.EqualTo(1.0 / c.PeerMedian).Within(1e-12));
    }
}

/// <summary><c>bench step</c>'s device choice: GPT-2 124M at 16 × 1024 is a CUDA workload, and a GPU (pretended) is chosen under auto.</summary>
public class BenchStepDeviceCliTests : CliTestBase
{
    [Test]
    public void TheGpt2WorkloadNeedsCudaAndAutoChoosesCudaWithAGpu()
    {
        Assert.That(Program.Main(["bench", "step", "--workload", "gpt2", "--device", "cpu"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--workload gpt2 (16 × 1024 tokens) is a GPU workload: use --device cuda"));
        PretendAnH200();
        Assert.That(Program.Main(["bench", "step", "--workload", "w3"]), Is.EqualTo(Program.UsageError));
        Assert.That(Output.ToString(), Does.Contain("device: cuda (NVIDIA H200"));
        Assert.That(Error.ToString(), Does.Contain("--workload 'w3': expected w1, w2 or gpt2"));
        Assert.That(Program.Main(["bench", "step", "--workload", "w2", "--peak-tflops", "0"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--peak-tflops must be > 0"));
    }
}
