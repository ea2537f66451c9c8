using System.CommandLine;
using System.Diagnostics;
using DistAlign.Engine.Native;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign gemm-check</c>: checks the CPU GEMM against a double-precision reference, then times it
/// (and OpenBLAS, when installed) on transformer-sized shapes, alternating, and prints the ratio of medians.
/// </summary>
internal static class GemmCheckCommand
{
    public static Command Create()
    {
        var threads = new Option<int>("--threads")
        {
            Description = "Worker threads for our GEMM and for OpenBLAS.",
            DefaultValueFactory = _ => Math.Min(2, Environment.ProcessorCount),
        };
        var size = new Option<string[]>("--size")
        {
            Description = "Shapes to time, as N (for N×N×N) or MxNxK; repeatable. Default: 1024 and 2048x768x768.",
            AllowMultipleArgumentsPerToken = true,
        };
        var repeats = new Option<int>("--repeats")
        {
            Description = "Timed runs per shape (the median is reported).",
            DefaultValueFactory = _ => 10,
        };
        var command = new Command("gemm-check", "Check the CPU GEMM against an fp64 reference and time it against OpenBLAS.")
        {
            threads, size, repeats,
        };
        command.SetAction(parse => Run(parse.GetValue(threads), parse.GetValue(size), parse.GetValue(repeats)));
        return command;
    }

    private static int Run(int threads, string[]? sizes, int repeats)
    {
        if (threads < 1) { Console.Error.WriteLine("--threads must be at least 1."); return 2; }
        if (repeats < 1) { Console.Error.WriteLine("--repeats must be at least 1."); return 2; }
        var shapes = new List<(int M, int N, int K)>();
        foreach (string s in sizes is { Length: > 0 } ? sizes : ["1024", "2048x768x768"])
        {
            if (!TryParseShape(s, out var shape)) { Console.Error.WriteLine($"--size '{s}': expected N or MxNxK with positive integers."); return 2; }
            shapes.Add(shape);
        }

        CpuParallel.Threads = threads;
        Console.WriteLine($"threads: {threads}; " +
                          $"vectors: {CpuVectors.Describe()}; micro-kernel: {Gemm.MicroKernel}");

        // Correctness on an odd shape (not a multiple of any tile), all four transpose cases.
        const int cm = 97, cn = 131, ck = 67;
        const double tolerance = 1e-5;
        bool pass = true;
        foreach (var (ta, tb) in new[] { (Transpose.No, Transpose.No), (Transpose.No, Transpose.Yes), (Transpose.Yes, Transpose.No), (Transpose.Yes, Transpose.Yes) })
        {
            double err = GemmSelfCheck.MaxRelativeError(ta, tb, cm, cn, ck);
            bool ok = err <= tolerance;
            pass &= ok;
            Console.WriteLine($"check {Case(ta, tb)} {cm}×{cn}×{ck}: max relative error {err:E2} (≤ {tolerance:E0}) {(ok ? "PASS" : "FAIL")}");
        }
        Console.WriteLine(pass ? "PASS" : "FAIL");
        if (!pass) return 1;

        bool blas = OpenBlas.IsAvailable;
        if (blas)
        {
            OpenBlas.SetThreads(threads);
            Console.WriteLine($"OpenBLAS: core {OpenBlas.CoreName ?? "?"}, {OpenBlasCoreType.Describe(OpenBlas.CoreTypeEnvironment)}; {OpenBlas.Config ?? ""}");
            // SkylakeX is suggested only where the CPU has avx512f (elsewhere it dies with SIGILL); Haswell where .NET hides AVX-512
            if (OpenBlasCoreType.Mismatch(OpenBlas.CoreName, OpenBlas.CoreTypeEnvironment, CpuIsa.Current) is { } mismatch)
                Console.WriteLine($"warning: {mismatch}");
        }
        else
        {
            Console.WriteLine(OpenBlas.UnavailableReason);
        }

        foreach (var (m, n, k) in shapes)
        {
            float[] a = Random(m * k, 1), b = Random(k * n, 2), c = new float[m * n];
            double flops = 2.0 * m * n * k;
            var ours = new List<double>();
            var theirs = new List<double>();
            // Two warm-up rounds, then alternate ours/OpenBLAS. With OpenBLAS in the pair, every call starts after its idle
            // workers stopped spinning (OpenBlas.WaitForIdleWorkers, 150 ms, as the report's GEMM pairs): their spin would
            // otherwise take a core from the call after it. Each timed call follows an untimed one of its own library, so
            // both run with their workers awake (OpenBlas.SecondsWithWorkersAwake).
            for (int r = -2; r < repeats; r++)
            {
                double t = OpenBlas.SecondsWithWorkersAwake(() => Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, a, k, b, n, 0f, c, n));
                if (r >= 0) ours.Add(t);
                if (!blas) continue;
                OpenBlas.WaitForIdleWorkers();
                t = OpenBlas.SecondsWithWorkersAwake(() => OpenBlas.Sgemm(false, false, m, n, k, 1f, a, k, b, n, 0f, c, n));
                if (r >= 0) theirs.Add(t);
                OpenBlas.WaitForIdleWorkers();
            }
            double oursMedian = Median(ours);
            string line = $"NN {m}×{n}×{k}: ours {flops / oursMedian / 1e9,7:F1} GFLOP/s";
            if (blas)
            {
                double theirsMedian = Median(theirs);
                // Ratio of the medians (OpenBLAS's median time / ours = our GFLOP/s over theirs; above 1: ours faster).
                line += $" | OpenBLAS {flops / theirsMedian / 1e9,7:F1} GFLOP/s | ratio of medians {theirsMedian / oursMedian:F2}";
            }
            Console.WriteLine(line + $" (median of {repeats})");
        }
        return 0;
    }

    private static string Case(Transpose a, Transpose b) => (a == Transpose.No ? "N" : "T") + (b == Transpose.No ? "N" : "T");

    private static bool TryParseShape(string s, out (int M, int N, int K) shape)
    {
        string[] parts = s.Split('x', 'X', '×');
        shape = default;
        var v = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], out v[i]) || v[i] < 1) return false;
        if (v.Length == 1) shape = (v[0], v[0], v[0]);
        else if (v.Length == 3) shape = (v[0], v[1], v[2]);
        else return false;
        return true;
    }

    private static double Median(List<double> values)
    {
        var xs = values.Order().ToList();
        int h = xs.Count / 2;
        return xs.Count % 2 == 1 ? xs[h] : 0.5 * (xs[h - 1] + xs[h]);
    }

    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        var x = new float[count];
        for (int i = 0; i < count; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
