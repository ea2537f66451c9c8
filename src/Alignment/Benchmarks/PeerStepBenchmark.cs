using System.Diagnostics;
using System.Text.Json;
using DistAlign.Engine.Native;
using DistAlign.Transformer.Devices;

namespace DistAlign.Alignment.Benchmarks;

/// <summary>
/// Our step times and a peer's for one workload, from alternating rounds in one invocation — or, where the peer failed
/// (<see cref="Failure"/>), our step times and why there are none of the peer's.
/// </summary>
/// <param name="PeerCoreType">The <c>OPENBLAS_CORETYPE</c> the peer was started with; null: left unset (OpenBLAS's own choice).</param>
/// <param name="PeerOpenBlasCore">The core the peer's OpenBLAS reported it uses (<c>openblas_core</c> in its JSON); null if unknown.</param>
/// <param name="Failure">Why the peer gave no (or not all) step times: its exit code and last output, a timeout, bad JSON; null when it ran.</param>
public sealed record PeerComparison(string Workload, string Peer, double[] OursMilliseconds, double[] PeerMilliseconds,
                                    string? PeerCoreType = null, string? PeerOpenBlasCore = null, string? Failure = null)
{
    public double OursMedian => Median(OursMilliseconds);
    public double PeerMedian => Median(PeerMilliseconds);
    /// <summary>Our median step time over the peer's (below 1: we are faster); NaN when the peer failed.</summary>
    public double Ratio => Failed ? double.NaN : OursMedian / PeerMedian;
    /// <summary>The peer failed: see <see cref="Failure"/>.</summary>
    public bool Failed => Failure is not null;

    /// <summary>How the peer's OpenBLAS was set up, e.g. "OPENBLAS_CORETYPE=SkylakeX, OpenBLAS core SkylakeX".</summary>
    public string PeerCoreDescription => OpenBlasCoreType.Describe(PeerCoreType) + (PeerOpenBlasCore is null ? "" : $", OpenBLAS core {PeerOpenBlasCore}");

    internal static double Median(double[] values)
    {
        var s = values.Order().ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
    }
}

/// <summary>
/// Runs our whole training step and the PyTorch peer (<c>tools/peers/torch_step.py</c>, Debian's python3-torch)
/// alternately, round by round, so drift in machine load hits both. The peer runs with <c>OMP_WAIT_POLICY=PASSIVE</c>, the
/// same thread count, and the <c>OPENBLAS_CORETYPE</c> of <see cref="OpenBlasCoreType.ForPeer()"/>: the caller's, else
/// SkylakeX only on an AVX-512 CPU whose AVX-512 our kernels use, Haswell where it is hidden from .NET, else unset.
/// A peer that fails (non-zero exit such as SIGILL's 132, a timeout, output that is not its JSON) is a result
/// (<see cref="PeerComparison.Failure"/>), not an exception, so a caller reports it and goes on with the next workload.
/// </summary>
public static class PeerStepBenchmark
{
    /// <summary>How long one peer round may take before it is killed and reported as failed.</summary>
    public const int DefaultPeerTimeoutSeconds = 1800;

    /// <summary>Why the peer cannot run here, or null when it can.</summary>
    public static string? Unavailable(string python, string script)
    {
        if (!File.Exists(script)) return $"peer script {script} not found";
        try
        {
            string? coreType = OpenBlasCoreType.ForPeer();
            var (code, output) = RunProcess(python, ["-c", "import torch; print(torch.__version__)"], 60, coreType);
            return code == 0 ? null
                : $"{python} cannot import torch with {OpenBlasCoreType.Describe(coreType)} (exit {code}{Signal(code)}: {Tail(output)}); install Debian's python3-torch";
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return $"{python} not found ({e.Message})";
        }
        catch (TimeoutException e)
        {
            return e.Message;
        }
    }

    /// <summary>A training-step workload (W1, W2) against the peer's <c>--workload w1|w2</c>.</summary>
    public static PeerComparison Run(StepWorkload workload, string python, string script, int rounds, int stepsPerRound, int threads) =>
        Compare(workload.Name, (warmup, steps) => StepBenchmark.Run(GptDevice.Cpu, workload, StepSettings.Peer, Math.Max(1, warmup), steps, profiledSteps: 0).StepMilliseconds,
                python, script, workload.Name.ToLowerInvariant(), rounds, stepsPerRound, threads);

    /// <summary>
    /// Any workload: <paramref name="ours"/>(warm-up steps, timed steps) returns our step times; the peer runs
    /// <c>script --workload peerWorkload</c> with the same counts and prints JSON with <c>torch</c> and <c>step_ms</c>
    /// (and, optionally, <c>openblas_core</c>). Each round runs ours, then the peer, each with 2 warm-up steps. The first
    /// round whose peer fails ends the comparison: the result then holds our times so far and the peer's failure.
    /// </summary>
    public static PeerComparison Compare(string name, Func<int, int, double[]> ours, string python, string script, string peerWorkload,
                                         int rounds, int stepsPerRound, int threads, int peerTimeoutSeconds = DefaultPeerTimeoutSeconds)
    {
        string? coreType = OpenBlasCoreType.ForPeer();
        var mine = new List<double>();
        var peer = new List<double>();
        string version = "";
        string? core = null;
        for (int round = 0; round < rounds; round++)
        {
            mine.AddRange(ours(2, stepsPerRound));
            var (output, failure) = RunPeer(python, [script, "--workload", peerWorkload, "--threads", threads.ToString(), "--warmup", "2",
                                                     "--steps", stepsPerRound.ToString(), "--no-install"], peerTimeoutSeconds, coreType);
            failure ??= Read(output, peer, ref version, ref core);
            if (failure is not null)
                return new PeerComparison(name, version.Length > 0 ? $"PyTorch {version}" : "PyTorch", [.. mine], [.. peer], coreType, core,
                                          $"round {round + 1} of {rounds}: {failure}");
        }
        return new PeerComparison(name, $"PyTorch {version}", [.. mine], [.. peer], coreType, core);
    }

    /// <summary>Reads the peer's last output line as its JSON result into <paramref name="peer"/>; the reason when it is not one, else null.</summary>
    private static string? Read(string output, List<double> peer, ref string version, ref string? core)
    {
        string last = output.Trim().Split('\n')[^1].Trim();
        try
        {
            using var json = JsonDocument.Parse(last);
            var root = json.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("step_ms", out var steps) || steps.ValueKind != JsonValueKind.Array)
                return $"printed JSON without a step_ms array: {Tail(last)}";
            var times = steps.EnumerateArray().Select(ms => ms.GetDouble()).ToList();
            if (times.Count == 0 || times.Any(t => !(t > 0) || double.IsInfinity(t)))
                return $"printed step_ms without positive, finite times: {Tail(last)}";
            peer.AddRange(times);
            if (root.TryGetProperty("torch", out var torch) && torch.ValueKind == JsonValueKind.String) version = torch.GetString() ?? "";
            if (root.TryGetProperty("openblas_core", out var c) && c.ValueKind == JsonValueKind.String) core = c.GetString();
            return null;
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException)
        {
            return $"did not print its JSON result (last line: {Tail(last)})";
        }
    }

    /// <summary>Runs the peer; a failure to start, a timeout or a non-zero exit comes back as the failure.</summary>
    private static (string Output, string? Failure) RunPeer(string python, string[] arguments, int timeoutSeconds, string? coreType)
    {
        try
        {
            var (code, output) = RunProcess(python, arguments, timeoutSeconds, coreType);
            return (output, code == 0 ? null : $"{python} exited with code {code}{Signal(code)}: {Tail(output)}");
        }
        catch (TimeoutException e)
        {
            return ("", e.Message);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return ("", $"could not start {python} ({e.Message})");
        }
    }

    /// <summary>What an exit code above 128 means on Unix (killed by signal code − 128); SIGILL names its usual cause here.</summary>
    internal static string Signal(int code) => code switch
    {
        132 => $" (SIGILL: an instruction this CPU lacks; was {OpenBlasCoreType.Variable} forcing an ISA the CPU does not have?)",
        134 => " (SIGABRT)",
        135 => " (SIGBUS)",
        136 => " (SIGFPE)",
        137 => " (SIGKILL: killed, e.g. out of memory)",
        139 => " (SIGSEGV)",
        > 128 and < 160 => $" (killed by signal {code - 128})",
        _ => "",
    };

    /// <summary>The end of a process's output, on one line, at most 400 characters.</summary>
    private static string Tail(string output)
    {
        string text = string.Join(" | ", output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        if (text.Length == 0) return "(no output)";
        return text.Length <= 400 ? text : "…" + text[^399..];
    }

    private static (int Code, string Output) RunProcess(string file, string[] arguments, int timeoutSeconds, string? coreType)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        if (coreType is null) info.Environment.Remove(OpenBlasCoreType.Variable);
        else info.Environment[OpenBlasCoreType.Variable] = coreType;
        info.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeoutSeconds * 1000))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            throw new TimeoutException($"{file} did not finish within {timeoutSeconds} s and was killed");
        }
        return (process.ExitCode, stdout.Result + (process.ExitCode == 0 ? "" : stderr.Result));
    }
}
