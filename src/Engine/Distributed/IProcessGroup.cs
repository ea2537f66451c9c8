using System.Runtime.InteropServices;

namespace DistAlign.Engine.Distributed;

/// <summary>
/// The ranks of one data-parallel job and the collectives they run together. Every rank calls the same collectives
/// in the same order with the same element counts; each call names what it is for (<c>purpose</c>), so an error or a
/// timeout says which step and which tensor were being exchanged. The sums are deterministic for a fixed rank count:
/// every rank receives the same bits, run after run.
/// </summary>
public interface IProcessGroup : IDisposable
{
    /// <summary>This process's rank, 0 … <see cref="Size"/> − 1.</summary>
    int Rank { get; }

    /// <summary>Number of ranks.</summary>
    int Size { get; }

    /// <summary>"Open MPI v4.1.4, 2 ranks" or "one process".</summary>
    string Description { get; }

    /// <summary>Returns when every rank has called it.</summary>
    void Barrier(string purpose);

    /// <summary>Every rank's <paramref name="data"/> ← rank <paramref name="root"/>'s.</summary>
    void Broadcast(Span<byte> data, int root, string purpose);

    /// <summary>data ← Σ over ranks of data, in place, the same bits on every rank.</summary>
    void AllReduceSum(Span<float> data, string purpose);

    /// <inheritdoc cref="AllReduceSum(Span{float}, string)"/>
    void AllReduceSum(Span<double> data, string purpose);

    /// <summary>all[r·n … (r+1)·n) ← rank r's <paramref name="mine"/> (n = mine.Length, the same on every rank; all.Length = Size·n).</summary>
    void AllGather(ReadOnlySpan<float> mine, Span<float> all, string purpose);

    /// <inheritdoc cref="AllGather(ReadOnlySpan{float}, Span{float}, string)"/>
    void AllGather(ReadOnlySpan<byte> mine, Span<byte> all, string purpose);

    /// <summary>
    /// In place: rank r's slice all[r·n … (r+1)·n) (n = all.Length / Size) is sent to every rank, and every rank's
    /// <paramref name="all"/> ends as the concatenation (ZeRO-1's weight exchange after each rank updated its shard).
    /// </summary>
    void AllGatherInPlace(Span<float> all, string purpose);

    /// <summary>mine ← Σ over ranks of all[Rank·n … (Rank+1)·n) (n = mine.Length; all.Length = Size·n).</summary>
    void ReduceScatterSum(ReadOnlySpan<float> all, Span<float> mine, string purpose);
}

/// <summary>Typed helpers over <see cref="IProcessGroup"/>'s byte collectives.</summary>
public static class ProcessGroupExtensions
{
    /// <summary>Every rank's <paramref name="data"/> ← rank <paramref name="root"/>'s.</summary>
    public static void Broadcast<T>(this IProcessGroup group, Span<T> data, int root, string purpose) where T : unmanaged =>
        group.Broadcast(MemoryMarshal.AsBytes(data), root, purpose);

    /// <summary>One value from every rank, in rank order.</summary>
    public static T[] AllGather<T>(this IProcessGroup group, T mine, string purpose) where T : unmanaged
    {
        var all = new T[group.Size];
        group.AllGather(MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in mine)), MemoryMarshal.AsBytes(all.AsSpan()), purpose);
        return all;
    }

    /// <summary>
    /// Every rank's items concatenated in rank order, where ranks hold different counts (a rollout's responses): the counts
    /// are gathered first, then the items, each rank's padded to the longest.
    /// </summary>
    public static T[] AllGatherConcatenated<T>(this IProcessGroup group, ReadOnlySpan<T> mine, string purpose) where T : unmanaged
    {
        if (group.Size == 1) return mine.ToArray();
        int[] counts = group.AllGather(mine.Length, $"{purpose} (counts)");
        int longest = counts.Max();
        var padded = new T[longest];
        mine.CopyTo(padded);
        var all = new T[(long)longest * group.Size];
        group.AllGather(MemoryMarshal.AsBytes(padded.AsSpan()), MemoryMarshal.AsBytes(all.AsSpan()), purpose);
        var result = new T[counts.Sum()];
        for (int r = 0, at = 0; r < counts.Length; at += counts[r], r++)
            all.AsSpan(r * longest, counts[r]).CopyTo(result.AsSpan(at));
        return result;
    }

    /// <summary>Σ over ranks of one value (the same bits on every rank).</summary>
    public static double Sum(this IProcessGroup group, double value, string purpose)
    {
        Span<double> one = [value];
        group.AllReduceSum(one, purpose);
        return one[0];
    }

    /// <summary>
    /// This rank's contiguous part [start, end) of <paramref name="total"/> items when they need not divide evenly (held-out
    /// pairs, a minibatch's sequences): ⌊total·r/N⌋ … ⌊total·(r+1)/N⌋, possibly empty.
    /// </summary>
    public static Range PartOf(this IProcessGroup group, int total) =>
        (int)((long)total * group.Rank / group.Size)..(int)((long)total * (group.Rank + 1) / group.Size);

    /// <summary>The [start, start + count) of <paramref name="total"/> items that this rank takes: equal, contiguous shares in rank order.</summary>
    /// <exception cref="ArgumentException"><paramref name="total"/> is not a multiple of the rank count (<paramref name="what"/> names it).</exception>
    public static (int Start, int Count) ShareOf(this IProcessGroup group, int total, string what)
    {
        if (total % group.Size != 0)
            throw new ArgumentException($"{what} ({total}) must be a multiple of the number of ranks ({group.Size}) so that every rank takes an equal share");
        int count = total / group.Size;
        return (group.Rank * count, count);
    }
}
