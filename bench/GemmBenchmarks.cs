using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Filters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using DistAlign.Engine.Native;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Bench;

/// <summary>
/// Our fp32 GEMM against OpenBLAS's cblas_sgemm (baseline) on transformer shapes, both on
/// <see cref="Threads"/> threads. Run: <c>OPENBLAS_CORETYPE=SkylakeX dotnet run -c Release --project bench -- --filter '*Gemm*'</c>.
/// Columns: GFLOP/s = 2·M·N·K / median time; "vs OpenBLAS" = OpenBLAS median time / ours (above 1 = faster).
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
            Console.WriteLine($"// OpenBLAS core: {OpenBlas.CoreName}, threads: {OpenBlas.Threads}; ours: {CpuParallel.Threads} threads, Vector512 kernel: {Gemm.UsesVector512}");
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
    public GemmBenchmarkConfig()
    {
        AddJob(Job.Default.WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(10).WithId("Short"));
        AddColumn(StatisticColumn.Median, new GflopsColumn(), new SpeedVsOpenBlasColumn());
        if (!OpenBlas.IsAvailable)
        {
            Console.WriteLine($"// OpenBLAS benchmarks skipped: {OpenBlas.UnavailableReason}");
            AddFilter(new SimpleFilter(bc => bc.Descriptor.WorkloadMethod.Name != nameof(GemmBenchmarks.OpenBlasSgemm)));
            return;
        }
        Console.WriteLine($"// OpenBLAS: core {OpenBlas.CoreName}; {OpenBlas.Config}");
        if (OpenBlas.CoreTypeEnvironment is null)
            Console.WriteLine("// WARNING: OPENBLAS_CORETYPE is not set. On AVX-512 CPUs that OpenBLAS 0.3.21 does not know " +
                              "(e.g. AMD Zen 4) it then runs SSE3 kernels; rerun with OPENBLAS_CORETYPE=SkylakeX.");
    }
}

/// <summary>2·M·N·K / median time, in GFLOP/s.</summary>
public sealed class GflopsColumn : IColumn
{
    public string Id => nameof(GflopsColumn);
    public string ColumnName => "GFLOP/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "2·M·N·K / median time, 10^9 floating-point operations per second";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        double? gflops = Gflops(summary, benchmarkCase);
        return gflops is null ? "NA" : gflops.Value.ToString("F1");
    }

    internal static double? Gflops(Summary summary, BenchmarkCase benchmarkCase)
    {
        var stats = summary[benchmarkCase]?.ResultStatistics;
        if (stats is null) return null;
        var (_, _, m, n, k) = GemmBenchmarks.Parse((string)benchmarkCase.Parameters[nameof(GemmBenchmarks.Case)]);
        return 2.0 * m * n * k / stats.Median; // ns → GFLOP/s
    }
}

/// <summary>OpenBLAS median time / ours for the same case (above 1 = ours faster).</summary>
public sealed class SpeedVsOpenBlasColumn : IColumn
{
    public string Id => nameof(SpeedVsOpenBlasColumn);
    public string ColumnName => "vs OpenBLAS";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 1;
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
