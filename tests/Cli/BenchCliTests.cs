using System.Text.Json;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Cli;
using DistAlign.Engine.Native;
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

    /// <summary>Debian's python3 and tools/peers/torch_step.py, or the test is ignored with the reason PyTorch cannot run here.</summary>
    private static (string Python, string Script) TorchPeerOrIgnore()
    {
        const string python = "/usr/bin/python3";
        string script = Path.Combine(TestContext.CurrentContext.TestDirectory, "..", "..", "..", "..", "tools", "peers", "torch_step.py");
        if (PeerStepBenchmark.Unavailable(python, script) is { } why)
            Assert.Ignore($"PyTorch peer not available here: {why}");
        return (python, script);
    }

    [Test]
    public void TheDpoPeerScriptReportsStepTimesWhenPyTorchIsInstalled()
    {
        var (python, script) = TorchPeerOrIgnore();
        // Ours is a stand-in here (the DPO step itself is covered by the alignment tests): this checks the
        // peer's DPO workload runs and its JSON is read back, one timed step.
        var c = PeerStepBenchmark.Compare("DPO", (warmup, steps) => Enumerable.Repeat(1.0, steps).ToArray(), python, script, "dpo",
                                          rounds: 1, stepsPerRound: 1, threads: 1);
        Assert.That(c.PeerMilliseconds, Has.Length.EqualTo(1).And.All.GreaterThan(0));
        Assert.That(c.Peer, Does.StartWith("PyTorch "));
        Assert.That(c.Ratio, Is.EqualTo(1.0 / c.PeerMedian).Within(1e-12));
    }

    [Test]
    public void ThePeerVariantsStartFromTheSameLossWhenPyTorchIsInstalled()
    {
        var (python, script) = TorchPeerOrIgnore();
        // The tiny workload: vocabulary 1,001 (padded to 1,024), 128 rows (chunks of 48: the last one short). The same
        // seed gives every variant the same weights and batch, so the first loss is the plain step's: exactly with the
        // padding, to fp32 rounding with the chunked cross-entropy. What this torch lacks is reported, not a failure.
        JsonElement Run(params string[] flags)
        {
            var info = new System.Diagnostics.ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { script, "--workload", "tiny", "--threads", "1", "--warmup", "0", "--steps", "1", "--no-install" }.Concat(flags))
                info.ArgumentList.Add(a);
            info.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
            using var process = System.Diagnostics.Process.Start(info)!;
            var stderr = process.StandardError.ReadToEndAsync();
            string stdout = process.StandardOutput.ReadToEnd();
            Assert.That(process.WaitForExit(120_000), Is.True, "the tiny peer step took over 2 minutes");
            Assert.That(process.ExitCode, Is.EqualTo(0), $"torch_step.py {string.Join(' ', flags)}: {stderr.Result}");
            return JsonDocument.Parse(stdout.Trim().Split('\n')[^1]).RootElement.Clone();
        }
        double plain = Run().GetProperty("first_loss").GetDouble();
        Assert.That(Run("--pad-vocab").GetProperty("first_loss").GetDouble(), Is.EqualTo(plain).Within(1e-6 * plain));
        Assert.That(Run("--chunked-ce", "48").GetProperty("first_loss").GetDouble(), Is.EqualTo(plain).Within(1e-6 * plain));
        var all = Run("--attention", "sdpa", "--pad-vocab", "--fused-adamw", "--chunked-ce", "48", "--compile");
        Assert.That(all.GetProperty("first_loss").GetDouble(), Is.EqualTo(plain).Within(1e-6 * plain));
        Assert.That(all.GetProperty("on").GetProperty("padded_vocab").GetInt32(), Is.EqualTo(1024));
        Assert.That(all.GetProperty("on").GetProperty("cross_entropy").GetString(), Is.EqualTo("chunked, 48 rows"));
        string torch = all.GetProperty("torch").GetString()!;
        if (torch.StartsWith("1.", StringComparison.Ordinal))
            Assert.That(all.GetProperty("not_supported").GetProperty("compile").GetString(), Does.StartWith($"not supported by torch {string.Join('.', torch.Split('.')[..2])}"));
        Assert.That(all.GetProperty("variant").GetString(), Does.Contain("vocabulary padded to 1,024").And.Contain("chunked CE (48 rows)"));
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

/// <summary>
/// A peer that fails — non-zero exit (SIGILL's 132 where an ISA was forced), a timeout, output that is not its JSON — is
/// reported with its reason, and the other workloads still give their results. The peer is a stand-in shell script.
/// </summary>
public class PeerFailureTests : CliTestBase
{
    private static readonly double[] OneStep = [1.0];

    /// <summary>A stand-in for python: the torch check passes; the peer script runs <paramref name="peerBody"/> (sh, with $workload set).</summary>
    private string FakePython(string peerBody)
    {
        if (OperatingSystem.IsWindows()) Assert.Ignore("the stand-in peer is a shell script");
        string path = Path.Combine(TestDirectory, "python3");
        File.WriteAllText(path, "#!/bin/sh\n" +
                                "if [ \"$1\" = \"-c\" ]; then echo 1.13.0-fake; exit 0; fi\n" +
                                "workload=\"$3\"\n" + peerBody + "\n");
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return path;
    }

    private const string Json = "echo \"{\\\"torch\\\": \\\"1.13.0-fake\\\", \\\"openblas_core\\\": \\\"${OPENBLAS_CORETYPE:-own}\\\", \\\"step_ms\\\": [5.0]}\"";

    private PeerComparison Compare(string python, int rounds = 2, int timeoutSeconds = 60) =>
        PeerStepBenchmark.Compare("W2", (warmup, steps) => OneStep, python, python, "w2", rounds, stepsPerRound: 1, threads: 1, timeoutSeconds);

    [Test]
    public void APeerKilledBySigillIsAFailureWithItsExitCode()
    {
        var c = Compare(FakePython("echo 'Illegal instruction' >&2; exit 132"));
        Assert.That(c.Failed, Is.True);
        Assert.That(c.Failure, Does.Contain("round 1 of 2").And.Contain("exited with code 132").And.Contain("SIGILL").And.Contain("Illegal instruction"));
        Assert.That(c.OursMilliseconds, Is.EqualTo(OneStep), "our side of the round is kept");
        Assert.That(c.PeerMilliseconds, Is.Empty);
        Assert.That(c.Ratio, Is.NaN);
        Assert.That(c.PeerCoreType, Is.EqualTo(OpenBlasCoreType.ForPeer()));
    }

    [Test]
    public void APeerWithoutItsJsonOrPastItsTimeIsAFailure()
    {
        var noJson = Compare(FakePython("echo 'loss went to nan'"));
        Assert.That(noJson.Failure, Does.Contain("did not print its JSON result").And.Contain("loss went to nan"));
        var noTimes = Compare(FakePython("echo '{\"torch\": \"1.13.0-fake\"}'"));
        Assert.That(noTimes.Failure, Does.Contain("without a step_ms array"));
        var slow = Compare(FakePython("sleep 30"), rounds: 1, timeoutSeconds: 1);
        Assert.That(slow.Failure, Does.Contain("did not finish within 1 s"));
        var missing = Compare(Path.Combine(TestDirectory, "no-such-python"));
        Assert.That(missing.Failure, Does.Contain("could not start"));
    }

    [Test]
    public void APeerThatRunsReportsTheCoreTypeItWasGiven()
    {
        var c = Compare(FakePython(Json));
        Assert.That(c.Failed, Is.False);
        Assert.That(c.PeerMilliseconds, Is.EqualTo(new[] { 5.0, 5.0 }));
        Assert.That(c.Ratio, Is.EqualTo(0.2).Within(1e-12));
        string? given = OpenBlasCoreType.ForPeer();
        Assert.That(c.PeerOpenBlasCore, Is.EqualTo(given ?? "own"), "the stand-in echoes the OPENBLAS_CORETYPE it was started with");
        Assert.That(c.PeerCoreDescription, Does.StartWith(OpenBlasCoreType.Describe(given)));
    }

    [Test]
    public void BenchPeersReportsTheFailedWorkloadAndStillRunsTheOthers()
    {
        // W2's peer dies as SIGILL does; DPO's runs. Ours runs for real: 1 round of 1 timed step (+ 2 warm-up) each.
        string python = FakePython("if [ \"$workload\" = w2 ]; then echo 'Illegal instruction' >&2; exit 132; fi\n" + Json);
        int code = Program.Main(["bench", "peers", "--workload", "w2", "--workload", "dpo", "--python", python, "--peer-script", python,
                                 "--rounds", "1", "--steps", "1", "--threads", "1"]);
        Assert.That(code, Is.EqualTo(Program.RunFailed), Error.ToString());
        string output = Output.ToString();
        Assert.That(output, Does.Contain("peer OpenBLAS: " + OpenBlasCoreType.Describe(OpenBlasCoreType.ForPeer())));
        Assert.That(output, Does.Contain("W2 (1 threads, 1 steps of ours): DistAlign median").And.Contain("peer FAILED").And.Contain("exited with code 132"));
        Assert.That(output, Does.Contain("DPO (1 threads, 1 steps each): DistAlign median").And.Contain("PyTorch 1.13.0-fake median 5.0 ms").And.Contain("| ratio "));
        Assert.That(Error.ToString(), Does.Contain("the PyTorch peer failed on 1 of 2 workload(s)"));
    }
}
