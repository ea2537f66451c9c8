using System.Diagnostics;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Bench;

/// <summary>
/// Fused vs unfused LM head + target log-probs, forward and backward, in one process, alternating:
/// <c>dotnet run -c Release --project bench -- lmhead [--tokens 4096] [--channels 768] [--vocab 50304] [--repeats 3]</c>.
/// </summary>
/// <remarks>
/// Unfused is what a framework does eagerly: logits = h·Eᵀ (N×V), log-softmax into a second N×V buffer,
/// gather the targets; backward: d(log-softmax) as a dense N×V one-hot matrix, d(logits) = d(ls) −
/// softmax·Σ d(ls) (another N×V buffer), then the two GEMMs. Fused is <see cref="SequenceLogProbs"/>.
/// Peak memory is the process's resident high-water mark during each path, reset between paths
/// through /proc/self/clear_refs (Linux), minus the inputs both paths share.
/// </remarks>
internal static class LmHeadHarness
{
    public static int Run(string[] args)
    {
        int n = Arg(args, "--tokens", 4096), c = Arg(args, "--channels", 768), v = Arg(args, "--vocab", 50304), repeats = Arg(args, "--repeats", 3);
        CpuParallel.Threads = Arg(args, "--threads", Environment.ProcessorCount);
        var rng = new Random(1);
        var h = new float[n * c];
        var e = new float[v * c];
        for (int i = 0; i < h.Length; i++) h[i] = (float)(rng.NextDouble() - 0.5);
        for (int i = 0; i < e.Length; i++) e[i] = (float)(rng.NextDouble() - 0.5) * 0.1f;
        var targets = new int[n];
        for (int i = 0; i < n; i++) targets[i] = rng.Next(v);
        var d = new float[n];
        Array.Fill(d, -1f / n);
        var dh = new float[n * c];
        var de = new float[v * c];
        var logProbs = new float[n];
        var lse = new float[n];

        Console.WriteLine($"LM head + log-probs, forward and backward: N = {n}, C = {c}, V = {v}, {CpuParallel.Threads} threads, {repeats} repeats alternating");
        long baseline = ResetPeak();
        var fused = new List<double>();
        var unfused = new List<double>();
        long fusedPeak = 0, unfusedPeak = 0;
        float[] fusedLp = [], unfusedLp = [];
        for (int r = 0; r < repeats; r++)
        {
            baseline = ResetPeak();
            var sw = Stopwatch.StartNew();
            var scratch = new float[SequenceLogProbs.ScratchLength(n, v)];
            SequenceLogProbs.ForwardBackward(h, e, targets, c, v, d, default, scratch, logProbs, lse, default, dh, de);
            fused.Add(sw.Elapsed.TotalMilliseconds);
            fusedPeak = Math.Max(fusedPeak, PeakResident() - baseline);
            fusedLp = (float[])logProbs.Clone();
            scratch = null;
            GC.Collect();

            baseline = ResetPeak();
            sw.Restart();
            Unfused(h, e, targets, c, v, d, logProbs, dh, de);
            unfused.Add(sw.Elapsed.TotalMilliseconds);
            unfusedPeak = Math.Max(unfusedPeak, PeakResident() - baseline);
            unfusedLp = (float[])logProbs.Clone();
            GC.Collect();
        }
        double maxDiff = fusedLp.Zip(unfusedLp, (x, y) => Math.Abs(x - y)).Max();
        double flops = 3.0 * 2 * n * (double)v * c;
        Console.WriteLine($"| path | median ms | GFLOP/s (3 GEMMs) | extra peak RSS |");
        Console.WriteLine($"|---|---|---|---|");
        Console.WriteLine($"| fused (SequenceLogProbs) | {BenchmarkReport.Median(fused):F0} | {flops / BenchmarkReport.Median(fused) / 1e6:F1} | {fusedPeak / 1048576.0:F0} MiB |");
        Console.WriteLine($"| unfused (full logits, log-softmax, dense backward) | {BenchmarkReport.Median(unfused):F0} | {flops / BenchmarkReport.Median(unfused) / 1e6:F1} | {unfusedPeak / 1048576.0:F0} MiB |");
        Console.WriteLine($"time fused/unfused = {BenchmarkReport.Median(fused) / BenchmarkReport.Median(unfused):F3}; peak memory fused/unfused = {(double)fusedPeak / Math.Max(1, unfusedPeak):F3}; max |Δ log-prob| = {maxDiff:E2}");
        return 0;
    }

    /// <summary>The eager framework path: every intermediate is a full N×V tensor.</summary>
    private static void Unfused(float[] h, float[] e, int[] targets, int c, int v, float[] d, float[] logProbs, float[] dh, float[] de)
    {
        int n = targets.Length;
        var logits = new float[(long)n * v];
        Gemm.Multiply(Transpose.No, Transpose.Yes, n, v, c, 1f, h, c, e, c, 0f, logits, v);
        var logSoftmax = new float[(long)n * v];
        for (int i = 0; i < n; i++)
        {
            var row = logits.AsSpan(i * v, v);
            float lse = System.Numerics.Tensors.TensorPrimitives.Max(row);
            double z = 0;
            foreach (float x in row) z += Math.Exp(x - lse);
            lse += (float)Math.Log(z);
            System.Numerics.Tensors.TensorPrimitives.Subtract(row, lse, logSoftmax.AsSpan(i * v, v));
            logProbs[i] = logSoftmax[(long)i * v + targets[i]];
        }
        var dLogSoftmax = new float[(long)n * v];
        for (int i = 0; i < n; i++) dLogSoftmax[(long)i * v + targets[i]] = d[i];
        var dLogits = new float[(long)n * v];
        for (int i = 0; i < n; i++)
        {
            var dls = dLogSoftmax.AsSpan(i * v, v);
            float sum = System.Numerics.Tensors.TensorPrimitives.Sum(dls);
            var ls = logSoftmax.AsSpan(i * v, v);
            var dl = dLogits.AsSpan(i * v, v);
            System.Numerics.Tensors.TensorPrimitives.Exp(ls, dl);
            System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(dl, -sum, dls, dl);
        }
        Gemm.Multiply(Transpose.No, Transpose.No, n, c, v, 1f, dLogits, v, e, c, 1f, dh, c);
        Gemm.Multiply(Transpose.Yes, Transpose.No, v, c, n, 1f, dLogits, v, h, c, 1f, de, c);
    }

    private static long ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        return CurrentResident();
    }

    private static long CurrentResident() => ReadStatus("VmRSS:");
    private static long PeakResident() => ReadStatus("VmHWM:");

    private static long ReadStatus(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line[key.Length..].Trim().Split(' ')[0]) * 1024;
        return 0;
    }

    private static int Arg(string[] args, string name, int fallback)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1]) : fallback;
    }
}
