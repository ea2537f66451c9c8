using System.Runtime.InteropServices;
using DistAlign.Engine.Native;

namespace DistAlign.Engine.Distributed;

/// <summary>
/// Thrown when a collective or an MPI call fails: the message names the call, the rank and what it was for
/// ("rank 1 of 2: MPI_Allreduce (gradients of step 12, 4,206,592 floats) failed: MPI_ERR_TRUNCATE: message truncated").
/// </summary>
public sealed class ProcessGroupException(string message) : Exception(message);

/// <summary>
/// Bindings to Open MPI's C API (<c>libmpi.so.40</c>: Debian's <c>libopenmpi3</c>, installed with <c>openmpi-bin</c>),
/// only the calls data parallelism needs. Open MPI's handles are addresses of exported objects
/// (<c>MPI_COMM_WORLD</c> is <c>&amp;ompi_mpi_comm_world</c>, <c>MPI_FLOAT</c> is <c>&amp;ompi_mpi_float</c>), read once
/// from the loaded library; MPICH's integer handles are a different ABI and are not supported.
/// </summary>
internal static unsafe partial class Mpi
{
    private const string Lib = "distalign-mpi";

    /// <summary>File names tried, newest ABI first.</summary>
    public static readonly IReadOnlyList<string> Candidates = ["libmpi.so.40", "libmpi.so"];

    private static readonly Lazy<nint> Library = new(() =>
    {
        foreach (string candidate in Candidates)
            if (NativeLibrary.TryLoad(candidate, out nint handle)) return handle;
        return 0;
    });

    static Mpi() => NativeLibraryResolver.Register(Lib, () => Library.Value);

    /// <summary>True when Open MPI's library loads on this machine.</summary>
    public static bool IsAvailable => Library.Value != 0;

    public static string UnavailableReason =>
        $"Open MPI's library could not be loaded (tried {string.Join(", ", Candidates)}): install it (Debian/Ubuntu: apt-get install openmpi-bin)";

    /// <summary>The address of an exported predefined object (a handle in Open MPI's ABI).</summary>
    public static nint Handle(string symbol) => NativeLibrary.GetExport(Library.Value, symbol);

    public const int ThreadSerialized = 2;         // MPI_THREAD_SERIALIZED
    public const int MaxErrorString = 256;         // MPI_MAX_ERROR_STRING
    public const int MaxLibraryVersionString = 256; // MPI_MAX_LIBRARY_VERSION_STRING
    public static readonly nint InPlace = 1;       // MPI_IN_PLACE is (void*)1 in Open MPI

    [LibraryImport(Lib)] public static partial int MPI_Initialized(int* flag);
    [LibraryImport(Lib)] public static partial int MPI_Finalized(int* flag);
    [LibraryImport(Lib)] public static partial int MPI_Init_thread(int* argc, byte*** argv, int required, int* provided);
    [LibraryImport(Lib)] public static partial int MPI_Finalize();
    [LibraryImport(Lib)] public static partial int MPI_Abort(nint comm, int errorCode);
    [LibraryImport(Lib)] public static partial int MPI_Comm_rank(nint comm, int* rank);
    [LibraryImport(Lib)] public static partial int MPI_Comm_size(nint comm, int* size);
    [LibraryImport(Lib)] public static partial int MPI_Comm_set_errhandler(nint comm, nint handler);
    [LibraryImport(Lib)] public static partial int MPI_Error_string(int code, byte* text, int* length);
    [LibraryImport(Lib)] public static partial int MPI_Get_library_version(byte* text, int* length);
    [LibraryImport(Lib)] public static partial int MPI_Barrier(nint comm);
    [LibraryImport(Lib)] public static partial int MPI_Bcast(void* buffer, int count, nint type, int root, nint comm);
    [LibraryImport(Lib)] public static partial int MPI_Allreduce(void* send, void* receive, int count, nint type, nint op, nint comm);
    [LibraryImport(Lib)] public static partial int MPI_Allgather(void* send, int sendCount, nint sendType, void* receive, int receiveCount, nint receiveType, nint comm);
    [LibraryImport(Lib)] public static partial int MPI_Reduce_scatter_block(void* send, void* receive, int receiveCount, nint type, nint op, nint comm);

    /// <summary>MPI's text for an error code ("MPI_ERR_TRUNCATE: message truncated").</summary>
    public static string ErrorString(int code)
    {
        byte* text = stackalloc byte[MaxErrorString];
        int length = 0;
        return MPI_Error_string(code, text, &length) == 0 ? System.Text.Encoding.UTF8.GetString(text, length) : $"MPI error {code}";
    }

    /// <summary>"Open MPI v4.1.4, …" (the first line of MPI_Get_library_version).</summary>
    public static string LibraryVersion()
    {
        byte* text = stackalloc byte[MaxLibraryVersionString];
        int length = 0;
        if (MPI_Get_library_version(text, &length) != 0) return "MPI (version unknown)";
        string version = System.Text.Encoding.UTF8.GetString(text, length).TrimEnd('\0');
        int comma = version.IndexOf(',');
        return comma > 0 ? version[..comma] : version.Trim();
    }
}
