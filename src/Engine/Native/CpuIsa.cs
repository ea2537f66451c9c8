namespace DistAlign.Engine.Native;

/// <summary>
/// What the CPU offers and which part of it this process's CPU kernels use: the CPU's feature flags (the
/// <c>flags</c> line of /proc/cpuinfo) next to the vector widths .NET accelerates. They differ where .NET is told to hide an
/// ISA — <c>DOTNET_EnableAVX512=0</c> leaves Vector256 (AVX2 + FMA), <c>DOTNET_EnableAVX2=0</c> leaves Vector128 — so a
/// benchmark names the view it measured (<see cref="View"/>) next to every figure.
/// </summary>
/// <param name="Flags">The CPU's feature flags (lower case, e.g. <c>avx512f</c>); empty where /proc/cpuinfo is not readable.</param>
/// <param name="Vector512">Whether <see cref="System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated"/> in this process.</param>
/// <param name="Vector256">Whether <see cref="System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated"/> in this process.</param>
/// <param name="Vector128">Whether <see cref="System.Runtime.Intrinsics.Vector128.IsHardwareAccelerated"/> in this process.</param>
public sealed record CpuIsa(IReadOnlySet<string> Flags, bool Vector512, bool Vector256, bool Vector128)
{
    private static readonly Lazy<CpuIsa> CurrentIsa = new(() => new CpuIsa(ReadFlags(), System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated,
        System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated, System.Runtime.Intrinsics.Vector128.IsHardwareAccelerated));

    /// <summary>This machine's CPU as this process sees it.</summary>
    public static CpuIsa Current => CurrentIsa.Value;

    /// <summary>The CPU has AVX-512 Foundation (whatever .NET makes of it).</summary>
    public bool HasAvx512F => Flags.Contains("avx512f");

    /// <summary>The CPU has AVX2 and FMA.</summary>
    public bool HasAvx2 => Flags.Contains("avx2") && Flags.Contains("fma");

    /// <summary>The widest vectors our kernels run: "AVX-512" (Vector512), "AVX2" (Vector256) or "Vector128" (SSE, NEON).</summary>
    public string KernelIsa => Vector512 ? "AVX-512" : Vector256 ? "AVX2" : "Vector128";

    /// <summary>
    /// How this process sees the CPU: "native AVX-512", "native AVX2", or, where .NET hides part of the CPU,
    /// e.g. "AVX2 view of an AVX-512 CPU: .NET AVX-512 disabled, OpenBLAS Haswell core".
    /// </summary>
    /// <param name="openBlasCore">The core OpenBLAS picked (<c>OpenBlas.CoreName</c>), named in a reduced view; null if unknown.</param>
    /// <param name="environment">Reads an environment variable (default: this process's), to tell a view asked for from one .NET chose.</param>
    public string View(string? openBlasCore, Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        string cpu = HasAvx512F ? "AVX-512" : HasAvx2 ? "AVX2" : KernelIsa;
        if (KernelIsa == cpu || KernelIsa == "AVX-512") return $"native {KernelIsa}";
        string hidden = KernelIsa == "AVX2"
            ? environment("DOTNET_EnableAVX512") == "0" ? ".NET AVX-512 disabled" : ".NET does not accelerate Vector512 here"
            : environment("DOTNET_EnableAVX2") == "0" ? ".NET AVX2 disabled" : ".NET does not accelerate Vector256 here";
        return $"{KernelIsa} view of an {cpu} CPU: {hidden}, OpenBLAS {openBlasCore ?? "?"} core";
    }

    /// <summary>The feature flags of the first processor in /proc/cpuinfo text (its <c>flags</c> line); empty if there is none.</summary>
    public static IReadOnlySet<string> ParseFlags(IEnumerable<string> cpuinfoLines)
    {
        string? line = cpuinfoLines.FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal) && l.Contains(':'));
        return line is null
            ? new HashSet<string>(StringComparer.Ordinal)
            : line.Split(':', 2)[1].Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet(StringComparer.Ordinal);
    }

    /// <summary>This machine's CPU flags (<see cref="ParseFlags"/> of /proc/cpuinfo); empty where it cannot be read.</summary>
    public static IReadOnlySet<string> ReadFlags(string path = "/proc/cpuinfo")
    {
        try
        {
            return File.Exists(path) ? ParseFlags(File.ReadLines(path)) : new HashSet<string>(StringComparer.Ordinal);
        }
        catch (IOException)
        {
            return new HashSet<string>(StringComparer.Ordinal);
        }
        catch (UnauthorizedAccessException)
        {
            return new HashSet<string>(StringComparer.Ordinal);
        }
    }
}
