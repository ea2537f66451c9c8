using System.Diagnostics;
using System.Text.Json;

namespace DistAlign.Transformer.Training;

/// <summary>Our step times and a peer's for one workload, from alternating rounds in one invocation.</summary>
public sealed record PeerComparison(string Workload, string Peer, double[] OursMilliseconds, double[] PeerMilliseconds)
{
    public double OursMedian => Median(OursMilliseconds);
    public double PeerMedian => Median(PeerMilliseconds);
    /// <summary>Our median step time over the peer's (below 1: we are faster).</summary>
    public double Ratio => OursMedian / PeerMedian;

    internal static double Median(double[] values)
    {
        var s = values.Order().ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
    }
}

/// <summary>
/// Runs our whole training step and the PyTorch peer (<c>tools/peers/torch_step.py</c>, Debian's python3-torch)
/// alternately, round by round, so drift in machine load hits both. The peer runs with
/// <c>OPENBLAS_CORETYPE=SkylakeX</c> and <c>OMP_WAIT_POLICY=PASSIVE</c> and the same thread count.
/// </summary>
public static class PeerStepBenchmark
{
    /// <summary>Why the peer cannot run here, or null when it can.</summary>
    public static string? Unavailable(string python, string script)
    {
        if (!File.Exists(script)) return $"peer script {script} not found";
        try
        {
            var (code, output) = RunProcess(python, ["-c", "import torch; print(torch.__version__)"], 60);
            return code == 0 ? null : $"{python} cannot import torch ({output.Trim()}); install Debian's python3-torch";
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return $"{python} not found ({e.Message})";
        }
    }

    /// <summary>A training-step workload (W1, W2) against the peer's <c>--workload w1|w2</c>.</summary>
    public static PeerComparison Run(StepWorkload workload, string python, string script, int rounds, int stepsPerRound, int threads) =>
        Compare(workload.Name, (warmup, steps) => StepBenchmark.Run(workload, warmup, steps).StepMilliseconds,
                python, script, workload.Name.ToLowerInvariant(), rounds, stepsPerRound, threads);

    /// <summary>
    /// Any workload: <paramref name="ours"/>(warm-up steps, timed steps) returns our step times; the peer runs
    /// <c>script --workload peerWorkload</c> with the same counts and prints JSON with <c>torch</c> and <c>step_ms</c>.
    /// Each round runs ours, then the peer, each with 2 warm-up steps.
    /// </summary>
    public static PeerComparison Compare(string name, Func<int, int, double[]> ours, string python, string script, string peerWorkload,
                                         int rounds, int stepsPerRound, int threads)
    {
        var mine = new List<double>();
        var peer = new List<double>();
        string version = "";
        for (int round = 0; round < rounds; round++)
        {
            mine.AddRange(ours(2, stepsPerRound));
            var (code, output) = RunProcess(python,
                [script, "--workload", peerWorkload, "--threads", threads.ToString(), "--warmup", "2", "--steps", stepsPerRound.ToString(), "--no-install"], 1800);
            if (code != 0) throw new InvalidOperationException($"the PyTorch peer failed (exit {code}): {output.Trim()}");
            using var json = JsonDocument.Parse(output.Trim().Split('\n')[^1]);
            version = json.RootElement.GetProperty("torch").GetString() ?? "";
            foreach (var ms in json.RootElement.GetProperty("step_ms").EnumerateArray()) peer.Add(ms.GetDouble());
        }
        return new PeerComparison(name, $"PyTorch {version}", [.. mine], [.. peer]);
    }

    private static (int Code, string Output) RunProcess(string file, string[] arguments, int timeoutSeconds)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        info.Environment["OPENBLAS_CORETYPE"] = "SkylakeX";
        info.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeoutSeconds * 1000))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} did not finish within {timeoutSeconds} s");
        }
        return (process.ExitCode, stdout.Result + (process.ExitCode == 0 ? "" : stderr.Result));
    }
}
