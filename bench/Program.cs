using BenchmarkDotNet.Running;

namespace DistAlign.Bench;

public static class Program
{
    /// <summary>
    /// BenchmarkDotNet entry point: <c>dotnet run -c Release --project bench -- --filter '*'</c>.
    /// </summary>
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
