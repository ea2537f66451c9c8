namespace DistAlign.Engine.Distributed;

/// <summary>A job of one process: every collective is the identity (a copy where input and output differ).</summary>
public sealed class SingleProcessGroup : IProcessGroup
{
    public static readonly SingleProcessGroup Instance = new();

    private SingleProcessGroup() { }

    public int Rank => 0;
    public int Size => 1;
    public string Description => "one process";

    public void Barrier(string purpose) { }
    public void Broadcast(Span<byte> data, int root, string purpose) => CheckRoot(root);
    public void AllReduceSum(Span<float> data, string purpose) { }
    public void AllReduceSum(Span<double> data, string purpose) { }
    public void AllGather(ReadOnlySpan<float> mine, Span<float> all, string purpose) => CopyChecked(mine, all);
    public void AllGather(ReadOnlySpan<byte> mine, Span<byte> all, string purpose) => CopyChecked(mine, all);
    public void AllGatherInPlace(Span<float> all, string purpose) { }
    public void ReduceScatterSum(ReadOnlySpan<float> all, Span<float> mine, string purpose) => CopyChecked(all, mine);
    public void Dispose() { }

    private static void CheckRoot(int root)
    {
        if (root != 0) throw new ArgumentOutOfRangeException(nameof(root), $"root {root} is not a rank of a one-process job");
    }

    private static void CopyChecked<T>(ReadOnlySpan<T> source, Span<T> destination)
    {
        if (source.Length != destination.Length)
            throw new ArgumentException($"one rank: the input has {source.Length} elements and the output {destination.Length}; they must be equal");
        source.CopyTo(destination);
    }
}
