using DistAlign.Engine.Distributed;

namespace DistAlign.Transformer.Model;

/// <summary>
/// ZeRO-1 (optimizer-state sharding): the flat parameter buffer is cut into <see cref="ProcessGroup"/>.Size equal
/// chunks of <see cref="ChunkLength"/> elements (the last padded); rank r keeps the AdamW moments of chunk r only,
/// updates those parameters, and an in-place all-gather gives every rank the whole updated parameter buffer. AdamW is
/// elementwise, so the weights are bit-identical to an unsharded run's.
/// </summary>
public sealed record OptimizerShard
{
    public IProcessGroup ProcessGroup { get; }
    /// <summary>Parameters in the model.</summary>
    public long TotalElements { get; }
    /// <summary>Elements per chunk: ⌈total / ranks⌉.</summary>
    public long ChunkLength { get; }
    /// <summary>First parameter of this rank's chunk.</summary>
    public long Start => ProcessGroup.Rank * ChunkLength;
    /// <summary>Parameters in this rank's chunk (the last rank's may be short, or 0).</summary>
    public long Length => Math.Clamp(TotalElements - Start, 0, ChunkLength);
    /// <summary>The parameter buffer's length with the padding that makes the chunks equal.</summary>
    public long PaddedElements => ChunkLength * ProcessGroup.Size;

    public OptimizerShard(IProcessGroup processGroup, long totalElements)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(totalElements);
        ProcessGroup = processGroup;
        TotalElements = totalElements;
        ChunkLength = (totalElements + processGroup.Size - 1) / processGroup.Size;
    }
}
