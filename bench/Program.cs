using BenchmarkDotNet.Running;

namespace DistAlign.Bench;

public static class Program
{
    /// <summary>
    /// BenchmarkDotNet suites: <c>dotnet run -c Release --project bench -- --filter '*'</c>;
    /// the fused-vs-unfused LM-head harness: <c>dotnet run -c Release --project bench -- lmhead</c>;
    /// the bandwidth kernels in rounds against their copy: <c>dotnet run -c Release --project bench -- bandwidth</c>;
    /// docs/benchmarks.md regenerated: <c>tools/bench-report.sh</c> (<c>... --project bench -- report --out docs/benchmarks.md</c>).
    /// </summary>
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "lmhead") return LmHeadHarness.Run(args[1..]);
        if (args.Length > 0 && args[0] == "bandwidth") return BandwidthPairs.RunCommand(args[1..]);
        if (args.Length > 0 && args[0] == "report") return BenchmarkReport.Run(args[1..]);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
