namespace DistAlign.Engine.Random;

/// <summary>
/// A sequential reader over one Philox stream: word <see cref="Position"/> of stream <see cref="Stream"/> under
/// <see cref="Seed"/>, advancing as values are drawn. Its whole state is (seed, stream, position), so saving
/// <see cref="State"/> in a checkpoint and restoring it continues the sequence bit for bit.
/// </summary>
/// <remarks>
/// <see cref="NextUInt"/> returns the same words as <see cref="Philox.FillUInt32"/> for the same stream and
/// offset. <see cref="NextNormal"/> consumes two words and, when <see cref="Position"/> is even, returns
/// exactly element <c>Position</c> of <see cref="Philox.FillNormal"/> (with mean 0, deviation 1, before the
/// cast to float). Not thread-safe: give each thread its own stream.
/// </remarks>
public sealed class PhiloxStream
{
    private readonly Philox philox;
    private ulong cachedBlock = ulong.MaxValue;
    private bool hasCachedBlock;
    private (uint, uint, uint, uint) cachedWords;

    /// <summary>Starts reading stream <paramref name="stream"/> of <paramref name="seed"/> at word <paramref name="position"/>.</summary>
    public PhiloxStream(ulong seed, ulong stream, ulong position = 0)
    {
        philox = new Philox(seed);
        Stream = stream;
        Position = position;
    }

    /// <summary>Resumes from a saved <see cref="PhiloxStreamState"/>.</summary>
    public PhiloxStream(PhiloxStreamState state) : this(state.Seed, state.Stream, state.Position)
    {
    }

    /// <summary>The seed (Philox key).</summary>
    public ulong Seed => philox.Seed;

    /// <summary>The stream id (counter high 64 bits).</summary>
    public ulong Stream { get; }

    /// <summary>Index of the next 32-bit word to be drawn. Settable, e.g. to skip ahead or to restore.</summary>
    public ulong Position { get; set; }

    /// <summary>Everything needed to continue this sequence later.</summary>
    public PhiloxStreamState State => new(Seed, Stream, Position);

    /// <summary>The next 32-bit word.</summary>
    public uint NextUInt()
    {
        ulong position = Position;
        ulong block = position >> 2;
        if (!hasCachedBlock || block != cachedBlock)
        {
            cachedWords = philox.BlockAt(Stream, block);
            cachedBlock = block;
            hasCachedBlock = true;
        }
        Position = position + 1;
        var (r0, r1, r2, r3) = cachedWords;
        return (position & 3) switch { 0 => r0, 1 => r1, 2 => r2, _ => r3 };
    }

    /// <summary>The next uniform float in [0, 1) (24-bit: <c>(w >> 8)·2^-24</c>); one word.</summary>
    public float NextFloat() => Philox.ToUniform(NextUInt());

    /// <summary>
    /// A uniformly shuffled permutation of 0 … count−1 (Fisher–Yates, drawing from this stream; the modulo
    /// bias is below count/2³², negligible for data orders). A pure function of (seed, stream, position).
    /// </summary>
    public int[] Permutation(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var order = new int[count];
        for (int i = 0; i < count; i++) order[i] = i;
        for (int i = count - 1; i > 0; i--)
        {
            int j = (int)(NextUInt() % (uint)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    /// <summary>The next standard normal (Box–Muller cosine branch); consumes two words.</summary>
    public float NextNormal()
    {
        uint w1 = NextUInt();
        uint w2 = NextUInt();
        return (float)Philox.BoxMuller(w1, w2, sine: false);
    }
}

/// <summary>The saved state of a <see cref="PhiloxStream"/>: enough to resume it exactly.</summary>
/// <param name="Seed">Seed (key).</param>
/// <param name="Stream">Stream id.</param>
/// <param name="Position">Index of the next word.</param>
public readonly record struct PhiloxStreamState(ulong Seed, ulong Stream, ulong Position);
