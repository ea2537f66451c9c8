using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace DistAlign.Engine.Distributed;

/// <summary>
/// Data parallelism's invariant: every rank holds the same weights. Each rank hashes its weights, the hashes are
/// gathered, and a rank whose hash differs from rank 0's stops the job with both named.
/// </summary>
public static class ReplicaCheck
{
    /// <summary>The first 8 bytes of SHA-256 over the floats' bytes (a fingerprint of the exact bits).</summary>
    public static ulong Hash(ReadOnlySpan<float> values)
    {
        Span<byte> digest = stackalloc byte[32];
        SHA256.HashData(MemoryMarshal.AsBytes(values), digest);
        return BinaryPrimitives.ReadUInt64LittleEndian(digest);
    }

    /// <summary>Combines fingerprints of several buffers (a backbone and a head) into one.</summary>
    public static ulong Combine(ulong first, ulong second) => Hash(MemoryMarshal.Cast<ulong, float>(new ReadOnlySpan<ulong>([first, second])));

    /// <summary>
    /// Gathers every rank's <paramref name="hash"/> and throws <see cref="ProcessGroupException"/> on every rank when one
    /// differs from rank 0's: "the ranks' weights diverged after step 40: rank 1 has 0x…, rank 0 has 0x…".
    /// </summary>
    public static void EnsureSameOnEveryRank(IProcessGroup group, ulong hash, string what)
    {
        if (group.Size == 1) return;
        var all = group.AllGather(hash, $"weight hashes {what}");
        for (int r = 1; r < all.Length; r++)
            if (all[r] != all[0])
                throw new ProcessGroupException(
                    $"the ranks' weights diverged {what}: rank {r} has 0x{all[r]:x16}, rank 0 has 0x{all[0]:x16}; stopping");
    }
}
