using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Filters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using DistAlign.Engine.Native;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Bench;

/// <summary>
/// Our fp32 GEMM against OpenBLAS's cblas_sgemm (baseline) on transformer shapes, both on
/// <see cref="Threads"/> threads. Run: <c>OPENBLAS_CORETYPE=SkylakeX dotnet run -c Release --project bench -- --filter '*Gemm*'</c>
/// on an AVX-512 CPU (only where /proc/cpuinfo has avx512f: elsewhere that core dies with SIGILL; leave it unset there).
/// Columns: GFLOP/s = 2·M·N·K / median time ("best": / minimum time); "vs OpenBLAS" = OpenBLAS median time /
/// ours (above 1 = faster). The two libraries run one after the other, not alternating: on a shared machine
/// a burst of other work can hit one and not the other, so compare with `distalign gemm-check` (paired runs).
/// </summary>
[Config(typeof(GemmBenchmarkConfig))]
public class GemmBenchmarks
{
    /// <summary>Threads for both libraries (the machine these figures are for has 2 cores).</summary>
    public const int Threads = 2;

    /// <summary>"NN 2048x768x768": transposes of A and B, then M×N×K.</summary>
    [ParamsSource(nameof(Cases))]
    public string Case { get; set; } = "NN 1024x1024x1024";

    public static IEnumerable<string> Cases =>
    [
        "NN 2048x768x768", "NT 2048x768x768", "TN 2048x768x768",
        "NN 2048x3072x768", "NN 2048x768x3072", "NN 1024x1024x1024",
    ];

    private bool transA, transB;
    private int m, n, k;
    private float[] a = [], b = [], c = [];

    [GlobalSetup]
    public void Setup()
    {
        (transA, transB, m, n, k) = Parse(Case);
        a = Random(m * k, 1);
        b = Random(k * n, 2);
        c = GC.AllocateArray<float>(m * n, pinned: true);
        CpuParallel.Threads = Threads;
        if (OpenBlas.IsAvailable)
        {
            OpenBlas.SetThreads(Threads);
            Console.WriteLine($"// OpenBLAS core: {OpenBlas.CoreName}, threads: {OpenBlas.Threads}; ours: {CpuParallel.Threads} threads, micro-kernel: {Gemm.MicroKernel} ({CpuVectors.Describe()})");
        }
    }

    [Benchmark(Description = "DistAlign Gemm")]
    public void Ours() =>
        Gemm.Multiply(transA ? Transpose.Yes : Transpose.No, transB ? Transpose.Yes : Transpose.No, m, n, k, 1f,
            a, transA ? m : k, b, transB ? k : n, 0f, c, n);

    [Benchmark(Baseline = true, Description = "OpenBLAS sgemm")]
    public void OpenBlasSgemm() =>
        OpenBlas.Sgemm(transA, transB, m, n, k, 1f, a, transA ? m : k, b, transB ? k : n, 0f, c, n);

    internal static (bool TransA, bool TransB, int M, int N, int K) Parse(string @case)
    {
        string[] parts = @case.Split(' ');
        int[] d = parts[1].Split('x').Select(int.Parse).ToArray();
        return (parts[0][0] == 'T', parts[0][1] == 'T', d[0], d[1], d[2]);
    }

    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        float[] x = GC.AllocateArray<float>(count, pinned: true);
        for (int i = 0; i < count; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}

/// <summary>Short job (3 warm-ups, 10 measured iterations), GFLOP/s columns, OpenBLAS dropped when not installed.</summary>
public sealed class GemmBenchmarkConfig : ManualConfig
{
    private static int announced;

    public GemmBenchmarkConfig()
    {
        // In-process: the bench project's file name (Bench.csproj) differs from its assembly name
        // (DistAlign.Bench), which BenchmarkDotNet's out-of-process toolchain cannot map back to a project.
        AddJob(Job.Default.WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(10)
            .WithToolchain(InProcessEmitToolchain.Instance).WithId("Short"));
        // Medians, and minima (the run least disturbed by other work on a shared machine).
        AddColumn(StatisticColumn.Median, StatisticColumn.Min,
            new GflopsColumn(best: false), new GflopsColumn(best: true), new SpeedVsOpenBlasColumn());
        bool firstConfig = Interlocked.Exchange(ref announced, 1) == 0;
        if (!OpenBlas.IsAvailable)
        {
            if (firstConfig) Console.WriteLine($"// OpenBLAS benchmarks skipped: {OpenBlas.UnavailableReason}");
            AddFilter(new SimpleFilter(bc => bc.Descriptor.WorkloadMethod.Name != nameof(GemmBenchmarks.OpenBlasSgemm)));
            return;
        }
        if (!firstConfig) return;
        Console.WriteLine($"// OpenBLAS: core {OpenBlas.CoreName}, {OpenBlasCoreType.Describe(OpenBlas.CoreTypeEnvironment)}; {OpenBlas.Config}");
        // SkylakeX is suggested only where the CPU has avx512f (elsewhere it dies with SIGILL); Haswell where .NET hides AVX-512
        if (OpenBlasCoreType.Mismatch(OpenBlas.CoreName, OpenBlas.CoreTypeEnvironment, CpuIsa.Current) is { } mismatch)
            Console.WriteLine($"// WARNING: {mismatch}");
    }
}

/// <summary>2·M·N·K / median (or minimum) time, in GFLOP/s.</summary>
public sealed class GflopsColumn(bool best) : IColumn
{
    public string Id => nameof(GflopsColumn) + (best ? "Best" : "");
    public string ColumnName => best ? "GFLOP/s best" : "GFLOP/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => best ? 1 : 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => best
        ? "2·M·N·K / minimum time (least disturbed iteration), 10^9 floating-point operations per second"
        : "2·M·N·K / median time, 10^9 floating-point operations per second";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var stats = summary[benchmarkCase]?.ResultStatistics;
        if (stats is null) return "NA";
        var (_, _, m, n, k) = GemmBenchmarks.Parse((string)benchmarkCase.Parameters[nameof(GemmBenchmarks.Case)]);
        double nanoseconds = best ? stats.Min : stats.Median;
        return (2.0 * m * n * k / nanoseconds).ToString("F1"); // flop/ns = GFLOP/s
    }
}

/// <summary>OpenBLAS median time / ours for the same case (above 1 = ours faster).</summary>
public sealed class SpeedVsOpenBlasColumn : IColumn
{
    public string Id => nameof(SpeedVsOpenBlasColumn);
    public string ColumnName => "vs OpenBLAS";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 2;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "OpenBLAS median time / this median time, same case (above 1: faster than OpenBLAS)";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        object @case = benchmarkCase.Parameters[nameof(GemmBenchmarks.Case)];
        BenchmarkCase? peer = summary.BenchmarksCases.FirstOrDefault(bc =>
            bc.Descriptor.WorkloadMethod.Name == nameof(GemmBenchmarks.OpenBlasSgemm) &&
            Equals(bc.Parameters[nameof(GemmBenchmarks.Case)], @case));
        double? ours = summary[benchmarkCase]?.ResultStatistics?.Median;
        double? theirs = peer is null ? null : summary[peer]?.ResultStatistics?.Median;
        return ours is null || theirs is null ? "NA" : (theirs.Value / ours.Value).ToString("F2");
    }
}
