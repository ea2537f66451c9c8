using System.Runtime.InteropServices;
using DistAlign.Engine.Native;

namespace DistAlign.Engine.Cuda;

/// <summary>
/// Thrown when a CUDA library (the driver, cuBLAS, cuBLASLt or NVRTC) cannot be loaded: the message says
/// which one and every file name that was tried, e.g. "no CUDA driver found: tried libcuda.so.1, libcuda.so".
/// </summary>
public sealed class CudaUnavailableException(string message) : Exception(message);

/// <summary>
/// One native library probed over the file names that CUDA 12 and 13 installs use (newest first). Loading
/// is lazy, happens once, and goes through the Engine assembly's single DllImport resolver
/// (<see cref="NativeLibraryResolver"/>), so <c>[LibraryImport(LogicalName)]</c> binds to whatever was found.
/// Directories listed in <c>DISTALIGN_CUDA_LIBRARY_PATH</c> (colon-separated; e.g. a pip wheel's
/// <c>nvidia/cublas/lib</c>) are tried before the loader's own search (LD_LIBRARY_PATH, ld.so.cache).
/// </summary>
public sealed class CudaLibrary
{
    /// <summary>Environment variable naming extra directories to search first.</summary>
    public const string SearchPathVariable = "DISTALIGN_CUDA_LIBRARY_PATH";

    private readonly Lazy<(nint Handle, string? Path)> loaded;

    public CudaLibrary(string logicalName, string description, IReadOnlyList<string> candidates)
    {
        LogicalName = logicalName;
        Description = description;
        Candidates = candidates;
        loaded = new(() => Probe(candidates), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    /// <summary>The name used in <c>[LibraryImport]</c> (not a file name).</summary>
    public string LogicalName { get; }
    /// <summary>What the library is, for messages ("CUDA driver", "cuBLAS", …).</summary>
    public string Description { get; }
    /// <summary>File names tried in order.</summary>
    public IReadOnlyList<string> Candidates { get; }

    /// <summary>True when one of the candidates loaded.</summary>
    public bool IsAvailable => loaded.Value.Handle != 0;
    /// <summary>The candidate (or directory-qualified path) that loaded; null when none did.</summary>
    public string? LoadedFrom => loaded.Value.Path;
    internal nint Handle => loaded.Value.Handle;

    /// <summary>"no CUDA driver found: tried libcuda.so.1, libcuda.so" (null when the library is loaded).</summary>
    public string? UnavailableReason => IsAvailable ? null : $"no {Description} found: tried {string.Join(", ", Candidates)}";

    /// <summary>Throws <see cref="CudaUnavailableException"/> unless the library loaded.</summary>
    public void EnsureAvailable()
    {
        if (!IsAvailable) throw new CudaUnavailableException(UnavailableReason!);
    }

    /// <summary>
    /// Loads the first candidate that loads: each one in the <see cref="SearchPathVariable"/> directories,
    /// then by bare name (the system loader's search). Returns (0, null) when none does.
    /// </summary>
    public static (nint Handle, string? Path) Probe(IReadOnlyList<string> candidates)
    {
        var directories = (Environment.GetEnvironmentVariable(SearchPathVariable) ?? "")
            .Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (string candidate in candidates)
        {
            foreach (string directory in directories)
            {
                string path = System.IO.Path.Combine(directory, candidate);
                if (File.Exists(path) && NativeLibrary.TryLoad(path, out nint inDirectory)) return (inDirectory, path);
            }
            if (NativeLibrary.TryLoad(candidate, out nint handle)) return (handle, candidate);
        }
        return (0, null);
    }
}

/// <summary>The CUDA libraries the engine binds, registered with the Engine assembly's DllImport resolver.</summary>
public static class CudaLibraries
{
    internal const string DriverName = "distalign-cuda";
    internal const string CublasName = "distalign-cublas";
    internal const string CublasLtName = "distalign-cublaslt";
    internal const string NvrtcName = "distalign-nvrtc";

    /// <summary>libcuda (the driver API; installed with the NVIDIA driver, not the toolkit).</summary>
    public static readonly CudaLibrary Driver = new(DriverName, "CUDA driver", ["libcuda.so.1", "libcuda.so"]);

    /// <summary>cuBLAS (CUDA 13, 12, 11).</summary>
    public static readonly CudaLibrary Cublas = new(CublasName, "cuBLAS library",
        ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"]);

    /// <summary>cuBLASLt (CUDA 13, 12, 11).</summary>
    public static readonly CudaLibrary CublasLt = new(CublasLtName, "cuBLASLt library",
        ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"]);

    /// <summary>
    /// NVRTC (CUDA 13, 12, 11.2+). NVRTC itself loads <c>libnvrtc-builtins.so.MAJOR.MINOR</c> from its own
    /// directory at compile time; a missing builtins library surfaces as NVRTC_ERROR_BUILTIN_OPERATION_FAILURE,
    /// which <see cref="NvrtcException"/> explains.
    /// </summary>
    public static readonly CudaLibrary Nvrtc = new(NvrtcName, "NVRTC library",
        ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"]);

    /// <summary>All four, in dependency order.</summary>
    public static IReadOnlyList<CudaLibrary> All { get; } = [Driver, Cublas, CublasLt, Nvrtc];

    internal const string NcclName = "distalign-nccl";

    /// <summary>
    /// NCCL 2 (<c>libnccl.so.2</c>: Debian/Ubuntu's <c>libnccl2</c>, or a pip wheel's <c>nvidia/nccl/lib</c> through
    /// <see cref="CudaLibrary.SearchPathVariable"/>): the device all-reduce of data-parallel training on GPUs. Only
    /// multi-rank GPU runs need it, so it is not one of <see cref="All"/>.
    /// </summary>
    public static readonly CudaLibrary Nccl = new(NcclName, "NCCL library", ["libnccl.so.2", "libnccl.so"]);

    static CudaLibraries()
    {
        foreach (var library in All.Append(Nccl)) NativeLibraryResolver.Register(library.LogicalName, () => library.Handle);
    }

    /// <summary>Makes sure the resolver registrations ran (the static constructor); called by every binding class.</summary>
    internal static void EnsureRegistered() { }
}
