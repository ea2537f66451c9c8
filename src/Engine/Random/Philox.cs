using System.Runtime.CompilerServices;

namespace DistAlign.Engine.Random;

/// <summary>
/// The Philox-4x32-10 counter-based random generator (Salmon, Moraes, Dror and Shaw, "Parallel random numbers:
/// as easy as 1, 2, 3", SC 2011). Each call maps a 128-bit counter and a 64-bit key to four 32-bit words
/// through ten rounds of multiply-and-xor; there is no hidden state.
/// </summary>
/// <remarks>
/// <para>
/// The key is the 64-bit seed (low word k0, high word k1). Random values are addressed by (stream, index):
/// the 32-bit word <c>index</c> of stream <c>s</c> is lane <c>index % 4</c> of the block whose counter is
/// (low 64 bits = <c>index / 4</c>, high 64 bits = <c>s</c>). Every value is therefore a pure function of
/// (seed, stream, index), so a fill gives the same bits whatever the thread count or chunking, and a fill of
/// a sub-range at an offset equals the matching slice of a larger fill.
/// </para>
/// <para>Counter words: c0 = low 32 bits of counterLo, c1 = high 32 bits of counterLo, c2/c3 likewise for counterHi.</para>
/// </remarks>
public sealed class Philox
{
    /// <summary>Round multiplier applied to counter word 0.</summary>
    public const uint Multiplier0 = 0xD2511F53;

    /// <summary>Round multiplier applied to counter word 2.</summary>
    public const uint Multiplier1 = 0xCD9E8D57;

    /// <summary>Weyl increment added to key word 0 between rounds (golden ratio).</summary>
    public const uint KeyIncrement0 = 0x9E3779B9;

    /// <summary>Weyl increment added to key word 1 between rounds (sqrt(3) − 1).</summary>
    public const uint KeyIncrement1 = 0xBB67AE85;

    /// <summary>Number of rounds.</summary>
    public const int Rounds = 10;

    /// <summary>Elements per chunk in parallel fills. Fixed, so results never depend on scheduling.</summary>
    internal const int ParallelChunkElements = 1 << 16;

    private const float TwoToMinus24 = 1.0f / (1 << 24);

    private readonly uint key0;
    private readonly uint key1;

    /// <summary>Creates a generator keyed by <paramref name="seed"/>.</summary>
    public Philox(ulong seed)
    {
        Seed = seed;
        key0 = (uint)seed;
        key1 = (uint)(seed >> 32);
    }

    /// <summary>The 64-bit seed, used as the Philox key.</summary>
    public ulong Seed { get; }

    /// <summary>
    /// The raw Philox-4x32-10 bijection: four output words for a four-word <paramref name="counter"/> and a
    /// two-word <paramref name="key"/>. This is the function the Random123 known-answer vectors test.
    /// </summary>
    public static void Block(ReadOnlySpan<uint> counter, ReadOnlySpan<uint> key, Span<uint> destination)
    {
        if (counter.Length != 4) throw new ArgumentException($"Philox4x32 needs a 4-word counter, got {counter.Length} words.", nameof(counter));
        if (key.Length != 2) throw new ArgumentException($"Philox4x32 needs a 2-word key, got {key.Length} words.", nameof(key));
        if (destination.Length < 4) throw new ArgumentException($"Destination needs room for 4 words, has {destination.Length}.", nameof(destination));
        var (r0, r1, r2, r3) = Block(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
        destination[0] = r0;
        destination[1] = r1;
        destination[2] = r2;
        destination[3] = r3;
    }

    /// <summary>The four words of the block at counter (<paramref name="counterHi"/>, <paramref name="counterLo"/>) under this seed.</summary>
    public void Block(ulong counterHi, ulong counterLo, Span<uint> destination)
    {
        if (destination.Length < 4) throw new ArgumentException($"Destination needs room for 4 words, has {destination.Length}.", nameof(destination));
        var (r0, r1, r2, r3) = BlockAt(counterHi, counterLo);
        destination[0] = r0;
        destination[1] = r1;
        destination[2] = r2;
        destination[3] = r3;
    }

    /// <summary>The four words of the block at counter (<paramref name="counterHi"/>, <paramref name="counterLo"/>), as a new array.</summary>
    public uint[] Block(ulong counterHi, ulong counterLo)
    {
        var words = new uint[4];
        Block(counterHi, counterLo, words);
        return words;
    }

    /// <summary>The 32-bit word <paramref name="index"/> of stream <paramref name="stream"/>.</summary>
    public uint UInt32At(ulong stream, ulong index)
    {
        var (r0, r1, r2, r3) = BlockAt(stream, index >> 2);
        return (index & 3) switch { 0 => r0, 1 => r1, 2 => r2, _ => r3 };
    }

    /// <summary>Fills <paramref name="destination"/> with words <paramref name="offset"/>, offset+1, … of <paramref name="stream"/>.</summary>
    public void FillUInt32(Span<uint> destination, ulong stream, ulong offset)
    {
        CheckRange(offset, destination.Length);
        ulong index = offset;
        for (int i = 0; i < destination.Length;)
        {
            var (r0, r1, r2, r3) = BlockAt(stream, index >> 2);
            for (int lane = (int)(index & 3); lane < 4 && i < destination.Length; lane++, i++, index++)
                destination[i] = lane switch { 0 => r0, 1 => r1, 2 => r2, _ => r3 };
        }
    }

    /// <summary>
    /// Fills <paramref name="destination"/> with uniform floats in [0, 1): element i is
    /// <c>(w >> 8) · 2^-24</c> where w is word <c>offset + i</c> of <paramref name="stream"/>.
    /// </summary>
    /// <param name="destination">Where to write.</param>
    /// <param name="stream">Stream id (counter high 64 bits), e.g. one per tensor.</param>
    /// <param name="offset">Index of the first element within the stream.</param>
    /// <param name="maxDegreeOfParallelism">1 = on this thread; more (or −1 = all cores) splits into fixed chunks. Bits never depend on it.</param>
    public unsafe void FillUniform(Span<float> destination, ulong stream, ulong offset, int maxDegreeOfParallelism = 1)
    {
        CheckRange(offset, destination.Length);
        CheckParallelism(maxDegreeOfParallelism);
        fixed (float* p = destination)
        {
            float* basePointer = p;
            RunChunked(destination.Length, maxDegreeOfParallelism,
                (start, count) => FillUniformSequential(new Span<float>(basePointer + start, count), stream, offset + (ulong)start));
        }
    }

    /// <summary>
    /// Fills <paramref name="destination"/> with normal floats of the given <paramref name="mean"/> and
    /// <paramref name="standardDeviation"/>, by Box–Muller. Normal element j of a stream uses words 2⌊j/2⌋
    /// (u1, mapped to (0, 1] so log never sees 0) and 2⌊j/2⌋+1 (u2): z = √(−2 ln u1) · cos(2π u2) for even j,
    /// · sin(2π u2) for odd j. Element i of the destination is normal element <c>offset + i</c>.
    /// </summary>
    /// <param name="destination">Where to write.</param>
    /// <param name="stream">Stream id, e.g. one per tensor.</param>
    /// <param name="offset">Index of the first normal element within the stream.</param>
    /// <param name="mean">Mean of the distribution.</param>
    /// <param name="standardDeviation">Standard deviation; finite and non-negative.</param>
    /// <param name="maxDegreeOfParallelism">1 = on this thread; more (or −1 = all cores) splits into fixed chunks. Bits never depend on it.</param>
    public unsafe void FillNormal(Span<float> destination, ulong stream, ulong offset, float mean, float standardDeviation,
        int maxDegreeOfParallelism = 1)
    {
        if (!float.IsFinite(mean)) throw new ArgumentOutOfRangeException(nameof(mean), mean, "The mean must be finite.");
        if (!(standardDeviation >= 0) || !float.IsFinite(standardDeviation))
            throw new ArgumentOutOfRangeException(nameof(standardDeviation), standardDeviation, "The standard deviation must be finite and non-negative.");
        CheckRange(offset, destination.Length);
        CheckParallelism(maxDegreeOfParallelism);
        fixed (float* p = destination)
        {
            float* basePointer = p;
            RunChunked(destination.Length, maxDegreeOfParallelism,
                (start, count) => FillNormalSequential(new Span<float>(basePointer + start, count), stream, offset + (ulong)start, mean, standardDeviation));
        }
    }

    /// <summary>Uniform float in [0, 1) from one 32-bit word: the top 24 bits times 2^-24.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToUniform(uint word) => (word >> 8) * TwoToMinus24;

    /// <summary>
    /// One Box–Muller normal from two words: z = √(−2 ln u1)·cos(2π u2) (or sin when <paramref name="sine"/>),
    /// with u1 = ((w1 >> 8) + 1)·2^-24 in (0, 1] and u2 = (w2 >> 8)·2^-24 in [0, 1).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static double BoxMuller(uint word1, uint word2, bool sine)
    {
        double u1 = ((word1 >> 8) + 1) * (1.0 / (1 << 24));
        double u2 = (word2 >> 8) * (1.0 / (1 << 24));
        double radius = Math.Sqrt(-2.0 * Math.Log(u1));
        double angle = 2.0 * Math.PI * u2;
        return radius * (sine ? Math.Sin(angle) : Math.Cos(angle));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal (uint, uint, uint, uint) BlockAt(ulong counterHi, ulong counterLo) =>
        Block((uint)counterLo, (uint)(counterLo >> 32), (uint)counterHi, (uint)(counterHi >> 32), key0, key1);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (uint, uint, uint, uint) Block(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1)
    {
        for (int round = 0; round < Rounds; round++)
        {
            if (round > 0)
            {
                k0 += KeyIncrement0;
                k1 += KeyIncrement1;
            }
            ulong product0 = (ulong)Multiplier0 * c0;
            ulong product1 = (ulong)Multiplier1 * c2;
            uint hi0 = (uint)(product0 >> 32), lo0 = (uint)product0;
            uint hi1 = (uint)(product1 >> 32), lo1 = (uint)product1;
            c0 = hi1 ^ c1 ^ k0;
            c1 = lo1;
            c2 = hi0 ^ c3 ^ k1;
            c3 = lo0;
        }
        return (c0, c1, c2, c3);
    }

    private void FillUniformSequential(Span<float> destination, ulong stream, ulong offset)
    {
        ulong index = offset;
        for (int i = 0; i < destination.Length;)
        {
            var (r0, r1, r2, r3) = BlockAt(stream, index >> 2);
            for (int lane = (int)(index & 3); lane < 4 && i < destination.Length; lane++, i++, index++)
                destination[i] = ToUniform(lane switch { 0 => r0, 1 => r1, 2 => r2, _ => r3 });
        }
    }

    private void FillNormalSequential(Span<float> destination, ulong stream, ulong offset, float mean, float standardDeviation)
    {
        // Normal pair p uses words 2p and 2p+1, i.e. lanes (0,1) or (2,3) of block p/2.
        for (int i = 0; i < destination.Length;)
        {
            ulong element = offset + (ulong)i;
            ulong pair = element >> 1;
            var (r0, r1, r2, r3) = BlockAt(stream, pair >> 1);
            uint w1 = (pair & 1) == 0 ? r0 : r2;
            uint w2 = (pair & 1) == 0 ? r1 : r3;
            bool sine = (element & 1) == 1;
            destination[i++] = (float)(mean + standardDeviation * BoxMuller(w1, w2, sine));
            if (!sine && i < destination.Length)
                destination[i++] = (float)(mean + standardDeviation * BoxMuller(w1, w2, sine: true));
        }
    }

    private static void RunChunked(int length, int maxDegreeOfParallelism, Action<int, int> fillRange)
    {
        int chunks = (int)(((long)length + ParallelChunkElements - 1) / ParallelChunkElements);
        if (maxDegreeOfParallelism == 1 || chunks <= 1)
        {
            fillRange(0, length);
            return;
        }
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = maxDegreeOfParallelism }, chunk =>
        {
            int start = chunk * ParallelChunkElements;
            fillRange(start, Math.Min(ParallelChunkElements, length - start));
        });
    }

    private static void CheckRange(ulong offset, int length)
    {
        if (length > 0 && offset > ulong.MaxValue - (ulong)(length - 1))
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"Elements [{offset}, {offset} + {length}) run past the end of the 2^64-element stream.");
    }

    private static void CheckParallelism(int maxDegreeOfParallelism)
    {
        if (maxDegreeOfParallelism == 0 || maxDegreeOfParallelism < -1)
            throw new ArgumentOutOfRangeException(nameof(maxDegreeOfParallelism), maxDegreeOfParallelism,
                "Use 1 for a sequential fill, a positive thread cap, or -1 for all cores.");
    }
}
