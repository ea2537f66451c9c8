using System.Globalization;

namespace DistAlign.Engine.Memory;

/// <summary>Thrown when the host cannot provide an arena's block; says which arena and how many bytes.</summary>
public sealed class ArenaOutOfMemoryException : OutOfMemoryException
{
    /// <summary>Creates the exception for a failed request of <paramref name="requestedBytes"/> for arena <paramref name="arenaName"/>.</summary>
    public ArenaOutOfMemoryException(string arenaName, long requestedBytes, Exception? innerException = null)
        : base(string.Format(CultureInfo.InvariantCulture,
            "Arena '{0}' could not allocate {1:N0} bytes ({2}) of host memory. Reduce the batch size, sequence length or model size, " +
            "or give a memory budget so that the plan is checked (MemoryPlan.EnsureFits) before anything is allocated.",
            arenaName, requestedBytes, MemoryPlan.FormatBytes(requestedBytes)), innerException)
    {
        ArenaName = arenaName;
        RequestedBytes = requestedBytes;
    }

    /// <summary>The arena whose block could not be allocated.</summary>
    public string ArenaName { get; }

    /// <summary>How many bytes were requested.</summary>
    public long RequestedBytes { get; }
}
