using System.Diagnostics;

namespace DistAlign.Engine.Distributed;

/// <summary>
/// The ranks of a job started by Open MPI's <c>mpirun</c>, over <c>MPI_COMM_WORLD</c>. MPI is initialised once per
/// process (<see cref="Initialize"/>) with errors returned rather than fatal, so a failed call throws
/// <see cref="ProcessGroupException"/> naming the call, the rank and the purpose. A watchdog bounds every collective:
/// when one has not completed after <see cref="CollectiveTimeout"/> (a rank died, hangs or took another path), this
/// rank writes one line saying so to stderr and exits with <see cref="TimeoutExitCode"/>, and <c>mpirun</c> then stops
/// the other ranks. Nothing is written after that line, so no checkpoint is left half-written by this rank.
/// </summary>
public sealed unsafe class MpiProcessGroup : IProcessGroup
{
    /// <summary>Set by Open MPI's launcher in every rank's environment.</summary>
    public const string LauncherSizeVariable = "OMPI_COMM_WORLD_SIZE";

    /// <summary>The process exit code after a collective timed out (as timeout(1)).</summary>
    public const int TimeoutExitCode = 124;

    private static MpiProcessGroup? current;
    private static readonly object Gate = new();

    private readonly nint world, floatType, doubleType, byteType, sumOp;
    private readonly Thread watchdog;
    private volatile string? inFlight;   // "MPI_Allreduce (gradients of step 3, 1,024 floats)" while a collective runs
    private long inFlightSince;          // Stopwatch timestamp
    private volatile bool disposed;

    public int Rank { get; }
    public int Size { get; }
    public string Description { get; }

    /// <summary>How long one collective may take before this rank stops the job.</summary>
    public TimeSpan CollectiveTimeout { get; }

    /// <summary>True when Open MPI's library loads here (a job could start).</summary>
    public static bool IsAvailable => Mpi.IsAvailable;

    /// <summary>Why Open MPI cannot be used here, with what to install.</summary>
    public static string UnavailableReason => Mpi.UnavailableReason;

    /// <summary>True when this process was started by <c>mpirun</c> (Open MPI's launcher variables are set).</summary>
    public static bool LaunchedByMpirun => Environment.GetEnvironmentVariable(LauncherSizeVariable) is not null;

    /// <summary>
    /// Initialises MPI (once per process; later calls return the same group) with <c>MPI_THREAD_SERIALIZED</c> and
    /// <c>MPI_ERRORS_RETURN</c> on the world communicator.
    /// </summary>
    /// <exception cref="ProcessGroupException">Open MPI's library is missing or MPI_Init_thread failed.</exception>
    public static MpiProcessGroup Initialize(TimeSpan collectiveTimeout)
    {
        if (collectiveTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(collectiveTimeout), "the collective timeout must be positive");
        lock (Gate)
        {
            if (current is not null)
            {
                if (current.disposed) throw new InvalidOperationException("MPI was finalised in this process; it cannot be initialised again");
                return current;
            }
            if (!Mpi.IsAvailable) throw new ProcessGroupException(Mpi.UnavailableReason);
            int initialized = 0, provided = 0;
            Check(Mpi.MPI_Initialized(&initialized), "MPI_Initialized", -1, "start-up");
            if (initialized == 0) Check(Mpi.MPI_Init_thread(null, null, Mpi.ThreadSerialized, &provided), "MPI_Init_thread", -1, "start-up");
            current = new MpiProcessGroup(collectiveTimeout);
            return current;
        }
    }

    private MpiProcessGroup(TimeSpan collectiveTimeout)
    {
        CollectiveTimeout = collectiveTimeout;
        world = Mpi.Handle("ompi_mpi_comm_world");
        floatType = Mpi.Handle("ompi_mpi_float");
        doubleType = Mpi.Handle("ompi_mpi_double");
        byteType = Mpi.Handle("ompi_mpi_byte");
        sumOp = Mpi.Handle("ompi_mpi_op_sum");
        int rank = 0, size = 0;
        Check(Mpi.MPI_Comm_set_errhandler(world, Mpi.Handle("ompi_mpi_errors_return")), "MPI_Comm_set_errhandler", -1, "start-up");
        Check(Mpi.MPI_Comm_rank(world, &rank), "MPI_Comm_rank", -1, "start-up");
        Check(Mpi.MPI_Comm_size(world, &size), "MPI_Comm_size", rank, "start-up");
        Rank = rank;
        Size = size;
        Description = $"{Mpi.LibraryVersion()}, {size} rank{(size == 1 ? "" : "s")}";
        watchdog = new Thread(Watch) { IsBackground = true, Name = "distalign collective watchdog" };
        watchdog.Start();
    }

    public void Barrier(string purpose)
    {
        using (Track("MPI_Barrier", purpose, 0, ""))
            Check(Mpi.MPI_Barrier(world), "MPI_Barrier", Rank, purpose);
    }

    public void Broadcast(Span<byte> data, int root, string purpose)
    {
        CheckRank(root);
        fixed (byte* p = data)
            foreach (var (offset, count) in Chunks(data.Length))
                using (Track("MPI_Bcast", purpose, count, "bytes"))
                    Check(Mpi.MPI_Bcast(p + offset, count, byteType, root, world), "MPI_Bcast", Rank, purpose);
    }

    public void AllReduceSum(Span<float> data, string purpose)
    {
        fixed (float* p = data)
            foreach (var (offset, count) in Chunks(data.Length))
                using (Track("MPI_Allreduce", purpose, count, "floats"))
                    Check(Mpi.MPI_Allreduce((void*)Mpi.InPlace, p + offset, count, floatType, sumOp, world), "MPI_Allreduce", Rank, purpose);
    }

    public void AllReduceSum(Span<double> data, string purpose)
    {
        fixed (double* p = data)
            foreach (var (offset, count) in Chunks(data.Length))
                using (Track("MPI_Allreduce", purpose, count, "doubles"))
                    Check(Mpi.MPI_Allreduce((void*)Mpi.InPlace, p + offset, count, doubleType, sumOp, world), "MPI_Allreduce", Rank, purpose);
    }

    public void AllGather(ReadOnlySpan<float> mine, Span<float> all, string purpose)
    {
        CheckGathered(mine.Length, all.Length);
        fixed (float* s = mine)
        fixed (float* r = all)
            AllGather(s, r, mine.Length, floatType, "floats per rank", purpose);
    }

    public void AllGather(ReadOnlySpan<byte> mine, Span<byte> all, string purpose)
    {
        CheckGathered(mine.Length, all.Length);
        fixed (byte* s = mine)
        fixed (byte* r = all)
            AllGather(s, r, mine.Length, byteType, "bytes per rank", purpose);
    }

    private void AllGather(void* send, void* receive, int count, nint type, string unit, string purpose)
    {
        using (Track("MPI_Allgather", purpose, count, unit))
            Check(Mpi.MPI_Allgather(send, count, type, receive, count, type, world), "MPI_Allgather", Rank, purpose);
    }

    public void AllGatherInPlace(Span<float> all, string purpose)
    {
        if (all.Length % Size != 0)
            throw new ArgumentException($"rank {Rank}: an in-place all-gather of {all.Length} elements over {Size} ranks needs a multiple of {Size}");
        int count = all.Length / Size;
        fixed (float* r = all)
            using (Track("MPI_Allgather", purpose, count, "floats per rank, in place"))
                Check(Mpi.MPI_Allgather((void*)Mpi.InPlace, 0, floatType, r, count, floatType, world), "MPI_Allgather", Rank, purpose);
    }

    public void ReduceScatterSum(ReadOnlySpan<float> all, Span<float> mine, string purpose)
    {
        CheckGathered(mine.Length, all.Length);
        fixed (float* s = all)
        fixed (float* r = mine)
        using (Track("MPI_Reduce_scatter_block", purpose, mine.Length, "floats per rank"))
            Check(Mpi.MPI_Reduce_scatter_block(s, r, mine.Length, floatType, sumOp, world), "MPI_Reduce_scatter_block", Rank, purpose);
    }

    /// <summary>Finalises MPI (after a barrier, so that no rank leaves while another still sends).</summary>
    public void Dispose()
    {
        lock (Gate)
        {
            if (disposed) return;
            Barrier("shutdown");
            disposed = true;
            Mpi.MPI_Finalize();
        }
    }

    // ---- the watchdog and error reporting --------------------------------------------------------------------

    // Marks a collective as in flight for the watchdog until the returned scope is disposed.
    private InFlightScope Track(string call, string purpose, int count, string unit)
    {
        if (disposed) throw new ObjectDisposedException(nameof(MpiProcessGroup), "MPI was finalised");
        Interlocked.Exchange(ref inFlightSince, Stopwatch.GetTimestamp());
        inFlight = count > 0 ? $"{call} ({purpose}, {count:N0} {unit})" : $"{call} ({purpose})";
        return new InFlightScope(this);
    }

    private readonly struct InFlightScope(MpiProcessGroup group) : IDisposable
    {
        public void Dispose() => group.inFlight = null;
    }

    private void Watch()
    {
        while (!disposed)
        {
            Thread.Sleep(100);
            string? call = inFlight;
            if (call is null) continue;
            var waited = Stopwatch.GetElapsedTime(Interlocked.Read(ref inFlightSince));
            if (waited < CollectiveTimeout || inFlight != call) continue;
            Console.Out.Flush();
            Console.Error.WriteLine($"distalign: rank {Rank} of {Size}: {call} did not complete within {CollectiveTimeout.TotalSeconds:0.#} s: " +
                                    "another rank died, hangs or took another path; stopping the job");
            Console.Error.Flush();
            Environment.Exit(TimeoutExitCode);
        }
    }

    private static void Check(int code, string call, int rank, string purpose)
    {
        if (code == 0) return;
        string who = rank >= 0 ? $"rank {rank}" : "MPI";
        throw new ProcessGroupException($"{who}: {call} ({purpose}) failed: {Mpi.ErrorString(code)}");
    }

    private void CheckRank(int root)
    {
        if (root < 0 || root >= Size) throw new ArgumentOutOfRangeException(nameof(root), $"root {root} is not a rank of this {Size}-rank job");
    }

    private void CheckGathered(int perRank, int total)
    {
        if ((long)perRank * Size != total)
            throw new ArgumentException($"rank {Rank}: {perRank} elements per rank × {Size} ranks ≠ the {total} of the gathered buffer");
    }

    // MPI counts are ints: long buffers go in chunks of at most 2^30 elements.
    private static IEnumerable<(int Offset, int Count)> Chunks(int length)
    {
        const int MaxChunk = 1 << 30;
        for (int offset = 0; offset < length; offset += MaxChunk) yield return (offset, Math.Min(MaxChunk, length - offset));
    }
}
