using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using BenchmarkDotNet.Attributes;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Bench;

/// <summary>
/// The bandwidth kernels from memory, each timed in interleaved rounds against its copy (the goal's measure, ≥ 0.7 of the copy):
/// <c>dotnet run -c Release --project bench -- bandwidth [--rounds N] [--threads N] [--kernel NAME]...</c>, and a table of the report.
/// <para>
/// Why not the BenchmarkDotNet classes alone: there every iteration of the copy runs, then every iteration of the kernel, a few
/// seconds apart, each re-reading the same buffers. On a VM the rate of memory moves over seconds with the neighbours' load, and
/// part of a 25–50 MB working set can still sit in the 32 MiB L3 from the call before; measured that way the same 50 MB copy ran
/// at 33–104 GB/s from class to class. Here (1) copy and kernel alternate call by call (which goes first alternates too), so both
/// sample the same minutes of the machine, and (2) each round takes the next of several instances of the benchmark class — its
/// own kernel and copy buffers — with enough instances that at least four L3s of other data were moved since an instance was last
/// touched, so neither side finds its data in the cache. The kernel is the BenchmarkDotNet class's own method on its own buffers,
/// at N = 8192 for the [N, C] kernels.
/// </para>
/// </summary>
internal static class BandwidthPairs
{
    /// <summary>One kernel's rounds: medians of its and its copy's GB/s, their ratio, and the middle 80 % of the per-round ratios.</summary>
    internal sealed record Pair(string Kernel, long Bytes, int Instances, int Rounds, double KernelGBps, double CopyGBps, double Ratio,
                                double RatioLow, double RatioHigh);

    /// <summary>The from-memory kernels, in the report's order.</summary>
    internal static readonly Type[] Classes = [typeof(LayerNormForwardBandwidth), typeof(LayerNormBackwardBandwidth), typeof(GeluForwardBandwidth),
        typeof(GeluBackwardBandwidth), typeof(ResidualForwardBandwidth), typeof(AdamWBandwidth), typeof(TargetLogProbsForwardBandwidth)];

    /// <summary>The last-level cache of cpu0 in bytes, from sysfs (32 MiB where it cannot be read).</summary>
    internal static long LastLevelCacheBytes()
    {
        const long Fallback = 32L << 20;
        try
        {
            string text = File.ReadAllText("/sys/devices/system/cpu/cpu0/cache/index3/size").Trim();
            long scale = text.EndsWith('K') ? 1L << 10 : text.EndsWith('M') ? 1L << 20 : 1;
            return long.TryParse(text.TrimEnd('K', 'M'), NumberStyles.Integer, CultureInfo.InvariantCulture, out long value) ? value * scale : Fallback;
        }
        catch (IOException) { return Fallback; }
        catch (UnauthorizedAccessException) { return Fallback; }
    }

    public static int RunCommand(string[] args)
    {
        int rounds = 31, threads = Environment.ProcessorCount;
        var only = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--rounds": rounds = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--threads": threads = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--kernel": only.Add(Next()); break;
                default:
                    Console.Error.WriteLine($"bandwidth: unknown option '{args[i]}' (expected --rounds N, --threads N, --kernel NAME)");
                    return 2;
            }
        }
        if (rounds < 1 || threads < 1) { Console.Error.WriteLine("bandwidth: --rounds and --threads must be at least 1"); return 2; }
        var classes = Classes.Where(t => only.Count == 0 || only.Any(name => t.Name.StartsWith(name, StringComparison.OrdinalIgnoreCase))).ToArray();
        if (classes.Length == 0)
        {
            Console.Error.WriteLine($"bandwidth: no kernel named {string.Join(", ", only)} (expected one of {string.Join(", ", Classes.Select(t => t.Name[..^"Bandwidth".Length]))})");
            return 2;
        }
        CpuParallel.Threads = threads;
        Console.WriteLine($"bandwidth: {CpuVectors.Describe()}, {threads} threads, {rounds} rounds, L3 {LastLevelCacheBytes() >> 20} MiB");
        Console.WriteLine(Header);
        foreach (var pair in Run(rounds, classes)) Console.WriteLine(Row(pair));
        return 0;
    }

    /// <summary>The markdown header of <see cref="Row"/>'s table.</summary>
    internal const string Header = "| kernel | MB per call | instances | kernel GB/s | copy GB/s | kernel / copy | per-round ratio, middle 80 % |\n|---|---:|---:|---:|---:|---:|---|";

    /// <summary>A markdown row for <paramref name="pair"/>.</summary>
    internal static string Row(Pair pair) => string.Create(CultureInfo.InvariantCulture,
        $"| {pair.Kernel} | {pair.Bytes / 1e6:F1} | {pair.Instances} | {pair.KernelGBps:F1} | {pair.CopyGBps:F1} | **{pair.Ratio:F2}** | {pair.RatioLow:F2}–{pair.RatioHigh:F2} |");

    /// <summary>The rounds of each of <paramref name="classes"/> (all of <see cref="Classes"/> by default).</summary>
    public static List<Pair> Run(int rounds, Type[]? classes = null)
    {
        long cache = LastLevelCacheBytes();
        var pairs = new List<Pair>();
        foreach (var type in classes ?? Classes)
        {
            pairs.Add(Measure(type, rounds, cache));
            GC.Collect();   // the instances' pinned buffers (up to ~2 GB for AdamW) go before the next class's
        }
        return pairs;
    }

    private static Pair Measure(Type type, int rounds, long cache)
    {
        var methods = type.GetMethods().Where(m => m.GetCustomAttribute<BenchmarkAttribute>() is not null).ToArray();
        var copyMethod = methods.Single(m => m.GetCustomAttribute<BenchmarkAttribute>()!.Baseline);
        var kernelMethod = methods.Single(m => !m.GetCustomAttribute<BenchmarkAttribute>()!.Baseline);
        long bytes = kernelMethod.GetCustomAttribute<BytesMovedAttribute>()!.For(BandwidthSizes.StreamedTokens);
        // Each round moves 2·bytes (kernel + copy) through one instance: between two visits to an instance the others move ≥ 4 L3s.
        int instances = 1 + (int)Math.Ceiling(4.0 * cache / (2.0 * bytes));
        var kernels = new Action[instances];
        var copies = new Action[instances];
        for (int i = 0; i < instances; i++)
        {
            object bench = Activator.CreateInstance(type)!;
            if (bench is TokenBandwidthBenchmark tokens) tokens.Tokens = BandwidthSizes.StreamedTokens;
            type.GetMethods().Single(m => m.GetCustomAttribute<GlobalSetupAttribute>() is not null).Invoke(bench, null);
            kernels[i] = kernelMethod.CreateDelegate<Action>(bench);
            copies[i] = copyMethod.CreateDelegate<Action>(bench);
        }
        for (int i = 0; i < instances; i++) { copies[i](); kernels[i](); }   // first touch of every output page, JIT at full optimisation
        for (int i = 0; i < instances; i++) { copies[i](); kernels[i](); }

        var kernelSeconds = new double[rounds];
        var copySeconds = new double[rounds];
        for (int r = 0; r < rounds; r++)
        {
            int i = r % instances;
            if (r % 2 == 0)
            {
                copySeconds[r] = Seconds(copies[i]);
                kernelSeconds[r] = Seconds(kernels[i]);
            }
            else
            {
                kernelSeconds[r] = Seconds(kernels[i]);
                copySeconds[r] = Seconds(copies[i]);
            }
        }
        var ratios = copySeconds.Zip(kernelSeconds, (c, k) => c / k).Order().ToArray();
        double kernelMedian = BenchmarkReport.Median(kernelSeconds), copyMedian = BenchmarkReport.Median(copySeconds);
        return new Pair(kernelMethod.Name, bytes, instances, rounds, bytes / kernelMedian / 1e9, bytes / copyMedian / 1e9, copyMedian / kernelMedian,
                        ratios[(int)(0.1 * (rounds - 1))], ratios[(int)Math.Ceiling(0.9 * (rounds - 1))]);
    }

    private static double Seconds(Action call)
    {
        long start = Stopwatch.GetTimestamp();
        call();
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }
}
