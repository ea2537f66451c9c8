using System.Reflection;
using System.Runtime.InteropServices;

namespace DistAlign.Engine.Native;

/// <summary>
/// Binding of OpenBLAS's <c>cblas_sgemm</c> and its thread/config functions, used as the CPU GEMM peer in
/// benchmarks and self-checks. The library is found by probing the usual Debian/Ubuntu locations; call
/// <see cref="IsAvailable"/> first and show <see cref="UnavailableReason"/> when it is false.
/// </summary>
/// <remarks>
/// On AVX-512 CPUs that OpenBLAS 0.3.21 does not recognise (e.g. AMD Zen 4) it falls back to slow SSE3
/// kernels unless the process is started with <c>OPENBLAS_CORETYPE=SkylakeX</c> — only where the CPU has
/// <c>avx512f</c>: elsewhere that core dies with SIGILL (see <see cref="OpenBlasCoreType"/> for the rule). The variable is
/// read when the library loads, and .NET cannot set it for native code from inside the process: it must be in
/// the environment before the program starts. <see cref="CoreName"/> tells which kernels were picked.
/// </remarks>
public static partial class OpenBlas
{
    private const string LibraryName = "openblas";

    /// <summary>Paths tried, in order, when the runtime asks for "openblas".</summary>
    public static readonly IReadOnlyList<string> Candidates =
    [
        "libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/openblas-serial/libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
        "/usr/lib64/libopenblas.so.0",
        "/usr/local/lib/libopenblas.so.0",
        "libopenblas.so",
        "libopenblas.dylib",
        "libopenblas.dll",
    ];

    private static readonly Lazy<nint> Handle = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    static OpenBlas()
    {
        NativeLibraryResolver.Register(LibraryName, () => Handle.Value);
    }

    /// <summary>True when an OpenBLAS shared library could be loaded.</summary>
    public static bool IsAvailable => Handle.Value != 0;

    /// <summary>Why OpenBLAS is not available (what was tried, how to install it); null when it is.</summary>
    public static string? UnavailableReason => IsAvailable
        ? null
        : "OpenBLAS was not found (tried " + string.Join(", ", Candidates) + "). " +
          "Install it, e.g. `apt-get install libopenblas0-pthread` on Debian/Ubuntu.";

    /// <summary>The core type whose kernels OpenBLAS uses (e.g. "SkylakeX", "Haswell", "Prescott"); null if unknown.</summary>
    public static string? CoreName => IsAvailable && HasExport("openblas_get_corename") ? Marshal.PtrToStringUTF8(GetCoreNameNative()) : null;

    /// <summary>OpenBLAS's build configuration string (version, threading, core); null if unknown.</summary>
    public static string? Config => IsAvailable && HasExport("openblas_get_config") ? Marshal.PtrToStringUTF8(GetConfigNative()) : null;

    /// <summary>The value of OPENBLAS_CORETYPE this process was started with, or null.</summary>
    public static string? CoreTypeEnvironment => Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE");

    /// <summary>How long OpenBLAS's idle workers keep spinning after a call, with margin: see <see cref="WaitForIdleWorkers"/>.</summary>
    public static readonly TimeSpan IdleWorkerSpin = TimeSpan.FromMilliseconds(150);

    /// <summary>
    /// Waits until the library that just ran has gone quiet, between timed calls of a comparison: OpenBLAS's idle workers keep
    /// spinning (a sched_yield loop of ≈ 2^28 cycles, ≈ 80 ms on the 2-core machines here) after each call, which took half of
    /// the second core from whatever ran next — in a pair, always our GEMM. <see cref="IdleWorkerSpin"/> (150 ms) covers that
    /// spin (and the .NET pool's shorter one), so each timed call starts on an idle machine.
    /// </summary>
    public static void WaitForIdleWorkers() => Thread.Sleep(IdleWorkerSpin);

    /// <summary>
    /// Seconds one call of <paramref name="call"/> takes with its library's worker threads awake: the call runs once untimed,
    /// then once timed. Both sides of a GEMM comparison are timed this way, after <see cref="WaitForIdleWorkers"/>: in a
    /// training step each kernel follows another, so neither library's workers are asleep there, and waking them (tens of µs
    /// to a millisecond on a VM whose idle vCPU the host parked) is not what the comparison measures.
    /// </summary>
    public static double SecondsWithWorkersAwake(Action call)
    {
        ArgumentNullException.ThrowIfNull(call);
        call();
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        call();
        return System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    /// <summary>Sets the number of threads OpenBLAS uses for subsequent calls.</summary>
    public static void SetThreads(int threads)
    {
        ThrowIfUnavailable();
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        SetNumThreadsNative(threads);
    }

    /// <summary>The number of threads OpenBLAS currently uses.</summary>
    public static int Threads
    {
        get
        {
            ThrowIfUnavailable();
            return GetNumThreadsNative();
        }
    }

    /// <summary>
    /// Row-major <c>C = α·op(A)·op(B) + β·C</c> through <c>cblas_sgemm</c>; same argument meaning as
    /// <c>DistAlign.Kernels.Cpu.Gemm.Multiply</c> (without bias). Spans are not validated beyond
    /// being non-empty when their matrix is: this is a benchmark peer, not an API.
    /// </summary>
    public static unsafe void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        ThrowIfUnavailable();
        fixed (float* pa = a, pb = b, pc = c)
        {
            SgemmNative(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
        }
    }

    private static void ThrowIfUnavailable()
    {
        if (!IsAvailable) throw new DllNotFoundException(UnavailableReason);
    }

    private static nint Load()
    {
        foreach (string candidate in Candidates)
            if (NativeLibrary.TryLoad(candidate, out nint handle)) return handle;
        return 0;
    }

    private static bool HasExport(string name) => NativeLibrary.TryGetExport(Handle.Value, name, out _);

    private const int CblasRowMajor = 101;
    private const int CblasNoTrans = 111;
    private const int CblasTrans = 112;

    [LibraryImport(LibraryName, EntryPoint = "cblas_sgemm")]
    private static unsafe partial void SgemmNative(int order, int transA, int transB, int m, int n, int k,
        float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);

    [LibraryImport(LibraryName, EntryPoint = "openblas_set_num_threads")]
    private static partial void SetNumThreadsNative(int threads);

    [LibraryImport(LibraryName, EntryPoint = "openblas_get_num_threads")]
    private static partial int GetNumThreadsNative();

    [LibraryImport(LibraryName, EntryPoint = "openblas_get_corename")]
    private static partial nint GetCoreNameNative();

    [LibraryImport(LibraryName, EntryPoint = "openblas_get_config")]
    private static partial nint GetConfigNative();
}

/// <summary>
/// The Engine assembly's single <see cref="NativeLibrary.SetDllImportResolver"/> hook (the runtime allows
/// one per assembly): each binding registers the logical library name it imports and how to load it.
/// </summary>
internal static class NativeLibraryResolver
{
    private static readonly Dictionary<string, Func<nint>> Loaders = new(StringComparer.Ordinal);
    private static bool installed;

    /// <summary>Makes <c>[LibraryImport(name)]</c> in this assembly resolve through <paramref name="load"/> (0 = not found).</summary>
    public static void Register(string name, Func<nint> load)
    {
        lock (Loaders)
        {
            Loaders[name] = load;
            if (installed) return;
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);
            installed = true;
        }
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        Func<nint>? load;
        lock (Loaders) Loaders.TryGetValue(name, out load);
        return load?.Invoke() ?? 0;
    }
}
