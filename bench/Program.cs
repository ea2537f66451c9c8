using BenchmarkDotNet.Running;

namespace DistAlign.Bench;

public static class Program
{
    /// <summary>
    /// BenchmarkDotNet suites: <c>dotnet run -c Release --project bench -- --filter '*'</c>;
    /// the fused-vs-unfused LM-head harness: <c>dotnet run -c Release --project bench -- lmhead</c>.
    /// </summary>
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "lmhead") return LmHeadHarness.Run(args[1..]);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
