namespace DistAlign.Engine.Native;

/// <summary>
/// Which OpenBLAS kernels (<c>OPENBLAS_CORETYPE</c>) a benchmark should ask for, by one rule: never force an ISA the CPU
/// lacks. OpenBLAS 0.3.21 (Debian's DYNAMIC_ARCH build) runs its slow SSE3 kernels on AVX-512 CPUs it does not recognise
/// unless told <c>SkylakeX</c>; but <c>SkylakeX</c> on a CPU without <c>avx512f</c> dies with SIGILL, and on an AVX2 CPU
/// OpenBLAS's own choice is right. <c>Haswell</c> (AVX2 + FMA) runs on any AVX2 CPU: it is the AVX2 view of an AVX-512 CPU,
/// the one to compare with our kernels when .NET's AVX-512 is hidden (<c>DOTNET_EnableAVX512=0</c>).
/// </summary>
public static class OpenBlasCoreType
{
    /// <summary>The environment variable OpenBLAS reads when it loads.</summary>
    public const string Variable = "OPENBLAS_CORETYPE";

    /// <summary>OpenBLAS's AVX-512 core (needs <c>avx512f</c>).</summary>
    public const string SkylakeX = "SkylakeX";

    /// <summary>OpenBLAS's AVX2 + FMA core (needs <c>avx2</c> and <c>fma</c>).</summary>
    public const string Haswell = "Haswell";

    /// <summary>What the description says where the variable is left unset.</summary>
    public const string OwnChoice = "OpenBLAS's own choice";

    /// <summary>OpenBLAS 0.3.21's cores that use AVX-512 instructions.</summary>
    private static readonly string[] Avx512Cores = ["SkylakeX", "Cooperlake", "SapphireRapids"];

    /// <summary>
    /// The <c>OPENBLAS_CORETYPE</c> to start a peer process with (the PyTorch peer), null to leave it unset: the caller's
    /// value when it set one; else <see cref="SkylakeX"/> where the CPU has <c>avx512f</c> and our kernels use Vector512;
    /// <see cref="Haswell"/> where the CPU has <c>avx512f</c> but our kernels do not use it (AVX-512 hidden from .NET), so the
    /// peer sees the same AVX2 view of the CPU as we do; otherwise unset (an AVX2 or older CPU: OpenBLAS's own choice).
    /// </summary>
    /// <param name="callerValue">The <c>OPENBLAS_CORETYPE</c> this process was started with, or null.</param>
    /// <param name="cpuFlags">The CPU's feature flags (<see cref="CpuIsa.Flags"/>).</param>
    /// <param name="vector512Accelerated">Whether our kernels run Vector512 (<see cref="CpuIsa.Vector512"/>).</param>
    public static string? ForPeer(string? callerValue, IReadOnlySet<string> cpuFlags, bool vector512Accelerated)
    {
        if (!string.IsNullOrWhiteSpace(callerValue)) return callerValue;
        if (!cpuFlags.Contains("avx512f")) return null;
        if (vector512Accelerated) return SkylakeX;
        return cpuFlags.Contains("avx2") && cpuFlags.Contains("fma") ? Haswell : null;
    }

    /// <summary><see cref="ForPeer(string?, IReadOnlySet{string}, bool)"/> for this process: its variable, this CPU, this runtime.</summary>
    public static string? ForPeer() => ForPeer(OpenBlas.CoreTypeEnvironment, CpuIsa.Current.Flags, CpuIsa.Current.Vector512);

    /// <summary>"OPENBLAS_CORETYPE=SkylakeX", or "OPENBLAS_CORETYPE unset (OpenBLAS's own choice)" for null.</summary>
    public static string Describe(string? value) => string.IsNullOrWhiteSpace(value) ? $"{Variable} unset ({OwnChoice})" : $"{Variable}={value}";

    /// <summary>Whether <paramref name="coreName"/> (<see cref="OpenBlas.CoreName"/>) is one of OpenBLAS's AVX-512 cores.</summary>
    public static bool IsAvx512Core(string? coreName) => coreName is not null && Avx512Cores.Contains(coreName, StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// A warning when OpenBLAS's kernels and ours see different ISAs on this CPU, null when they match: OpenBLAS below
    /// AVX-512 on an AVX-512 CPU where our kernels use Vector512 (start it with <c>SkylakeX</c> — only ever suggested where
    /// the CPU has <c>avx512f</c>), or OpenBLAS on AVX-512 where our kernels do not use it (start it with <c>Haswell</c>).
    /// </summary>
    /// <param name="coreName">The core OpenBLAS picked (<see cref="OpenBlas.CoreName"/>); null if unknown (no warning).</param>
    /// <param name="coreTypeEnvironment">The <c>OPENBLAS_CORETYPE</c> this process was started with, or null.</param>
    /// <param name="isa">The CPU and the widths our kernels use.</param>
    public static string? Mismatch(string? coreName, string? coreTypeEnvironment, CpuIsa isa)
    {
        if (coreName is null) return null;
        string started = string.IsNullOrWhiteSpace(coreTypeEnvironment) ? $"{Variable} is not set" : Describe(coreTypeEnvironment);
        if (isa.HasAvx512F && isa.Vector512 && !IsAvx512Core(coreName))
            return $"OpenBLAS runs its {coreName} kernels on this AVX-512 CPU ({started}), while ours use Vector512: " +
                   $"start the process with {Variable}={SkylakeX} for OpenBLAS's AVX-512 kernels.";
        if (!isa.Vector512 && IsAvx512Core(coreName))
            return $"OpenBLAS runs its AVX-512 {coreName} kernels ({started}), while ours run without Vector512 (AVX-512 hidden from .NET): " +
                   $"start the process with {Variable}={Haswell} so both use AVX2.";
        return null;
    }
}
