using System.Runtime.InteropServices;
using DistAlign.Engine.Cuda;

namespace DistAlign.Engine.Distributed;

/// <summary>
/// Bindings to NCCL 2's C API, only the calls data parallelism needs. Every collective is enqueued on a CUDA stream
/// and returns before it completes; <c>ncclCommGetAsyncError</c> reports what went wrong afterwards.
/// </summary>
internal static unsafe partial class Nccl
{
    private const string Lib = CudaLibraries.NcclName;

    static Nccl() => CudaLibraries.EnsureRegistered();

    public const int UniqueIdBytes = 128;     // NCCL_UNIQUE_ID_BYTES
    public const int Float32 = 7, Float64 = 8; // ncclDataType_t
    public const int Sum = 0;                  // ncclRedOp_t
    public const int InProgress = 7;           // ncclInProgress (non-blocking communicators only)

    /// <summary>ncclUniqueId: 128 opaque bytes that rank 0 creates and every rank passes to ncclCommInitRank.</summary>
    [StructLayout(LayoutKind.Sequential, Size = UniqueIdBytes)]
    public struct UniqueId
    {
        private fixed byte bytes[UniqueIdBytes];
    }

    [LibraryImport(Lib)] public static partial int ncclGetVersion(int* version);
    [LibraryImport(Lib)] public static partial int ncclGetUniqueId(UniqueId* id);
    [LibraryImport(Lib)] public static partial int ncclCommInitRank(nint* comm, int ranks, UniqueId id, int rank);
    [LibraryImport(Lib)] public static partial int ncclCommDestroy(nint comm);
    [LibraryImport(Lib)] public static partial int ncclCommAbort(nint comm);
    [LibraryImport(Lib)] public static partial int ncclCommGetAsyncError(nint comm, int* error);
    [LibraryImport(Lib)] public static partial nint ncclGetErrorString(int result);
    [LibraryImport(Lib)] public static partial int ncclAllReduce(ulong send, ulong receive, nuint count, int type, int op, nint comm, nint stream);
    [LibraryImport(Lib)] public static partial int ncclBroadcast(ulong send, ulong receive, nuint count, int type, int root, nint comm, nint stream);
    [LibraryImport(Lib)] public static partial int ncclAllGather(ulong send, ulong receive, nuint count, int type, nint comm, nint stream);
    [LibraryImport(Lib)] public static partial int ncclReduceScatter(ulong send, ulong receive, nuint count, int type, int op, nint comm, nint stream);

    /// <summary>NCCL's text for a result code.</summary>
    public static string ErrorString(int result) => Marshal.PtrToStringUTF8(ncclGetErrorString(result)) ?? $"NCCL error {result}";

    /// <summary>"NCCL 2.21.5" from ncclGetVersion (major·10000 + minor·100 + patch since 2.9).</summary>
    public static string Version()
    {
        int v = 0;
        if (ncclGetVersion(&v) != 0) return "NCCL (version unknown)";
        return v >= 10000 ? $"NCCL {v / 10000}.{v / 100 % 100}.{v % 100}" : $"NCCL {v / 1000}.{v / 100 % 10}.{v % 100}";
    }
}

/// <summary>
/// A NCCL communicator over the ranks of an <see cref="IProcessGroup"/>, one GPU per rank: rank 0 creates the unique id,
/// the process group broadcasts it, every rank joins with ncclCommInitRank. The collectives run on the device, on the
/// given CUDA stream (the engine's), in place where the operation allows; errors name the call, the rank and the purpose.
/// </summary>
public sealed unsafe class NcclCommunicator : IDisposable
{
    private nint comm;
    private readonly int rank;

    /// <summary>"NCCL 2.21.5, 8 ranks".</summary>
    public string Description { get; }

    /// <summary>
    /// Joins every rank of <paramref name="group"/> into one NCCL communicator (a collective: every rank calls it). The CUDA
    /// context of the rank's GPU must be current on the calling thread.
    /// </summary>
    /// <exception cref="CudaUnavailableException">NCCL is not installed: the message names the files tried.</exception>
    public static NcclCommunicator Create(IProcessGroup group)
    {
        CudaLibraries.Nccl.EnsureAvailable();
        var id = new Nccl.UniqueId();
        if (group.Rank == 0) Check(Nccl.ncclGetUniqueId(&id), "ncclGetUniqueId", 0, "start-up");
        group.Broadcast(new Span<byte>(&id, Nccl.UniqueIdBytes), root: 0, "the NCCL unique id");
        nint comm;
        Check(Nccl.ncclCommInitRank(&comm, group.Size, id, group.Rank), "ncclCommInitRank", group.Rank, "start-up");
        return new NcclCommunicator(comm, group.Rank, $"{Nccl.Version()}, {group.Size} ranks");
    }

    private NcclCommunicator(nint comm, int rank, string description)
    {
        this.comm = comm;
        this.rank = rank;
        Description = description;
    }

    /// <summary>Σ over ranks of <paramref name="count"/> floats at device address <paramref name="data"/>, in place, enqueued on <paramref name="stream"/>.</summary>
    public void AllReduceSum(ulong data, long count, nint stream, string purpose) =>
        Check(Nccl.ncclAllReduce(data, data, (nuint)count, Nccl.Float32, Nccl.Sum, Live, stream), "ncclAllReduce", rank, purpose);

    /// <summary>Rank <paramref name="root"/>'s <paramref name="count"/> floats at <paramref name="data"/> to every rank, in place.</summary>
    public void Broadcast(ulong data, long count, int root, nint stream, string purpose) =>
        Check(Nccl.ncclBroadcast(data, data, (nuint)count, Nccl.Float32, root, Live, stream), "ncclBroadcast", rank, purpose);

    /// <summary>receive[r·n … (r+1)·n) ← rank r's n floats at <paramref name="send"/> (n = <paramref name="countPerRank"/>).</summary>
    public void AllGather(ulong send, ulong receive, long countPerRank, nint stream, string purpose) =>
        Check(Nccl.ncclAllGather(send, receive, (nuint)countPerRank, Nccl.Float32, Live, stream), "ncclAllGather", rank, purpose);

    /// <summary>receive ← Σ over ranks of their send[rank·n … (rank+1)·n) (n = <paramref name="countPerRank"/>).</summary>
    public void ReduceScatterSum(ulong send, ulong receive, long countPerRank, nint stream, string purpose) =>
        Check(Nccl.ncclReduceScatter(send, receive, (nuint)countPerRank, Nccl.Float32, Nccl.Sum, Live, stream), "ncclReduceScatter", rank, purpose);

    /// <summary>Throws when an enqueued collective failed (call after the stream synchronised).</summary>
    public void ThrowIfFailed(string purpose)
    {
        int error = 0;
        Check(Nccl.ncclCommGetAsyncError(Live, &error), "ncclCommGetAsyncError", rank, purpose);
        Check(error, "a NCCL collective", rank, purpose);
    }

    public void Dispose()
    {
        if (comm == 0) return;
        Nccl.ncclCommDestroy(comm);
        comm = 0;
    }

    private nint Live => comm != 0 ? comm : throw new ObjectDisposedException(nameof(NcclCommunicator));

    private static void Check(int result, string call, int rank, string purpose)
    {
        if (result == 0) return;
        throw new ProcessGroupException($"rank {rank}: {call} ({purpose}) failed: {Nccl.ErrorString(result)} (NCCL result {result})");
    }
}
