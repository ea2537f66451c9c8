using DistAlign.Engine.Random;

namespace DistAlign.Transformer.Training;

/// <summary>
/// Deterministic language-modelling batches from one token stream: the stream is cut into
/// non-overlapping windows of B·T + 1 tokens (input plus the next-token targets), visited in an order
/// shuffled once per epoch by a Philox stream of (seed, epoch). The whole position is
/// (<see cref="Epoch"/>, <see cref="Index"/>), which a checkpoint saves so that a resumed run reads
/// exactly the batches the uninterrupted one would have.
/// </summary>
public sealed class TokenWindowLoader
{
    private readonly int[] tokens;
    private readonly ulong seed;
    private readonly bool shuffle;
    private int[] order = [];

    public int WindowTokens { get; }
    public int WindowCount { get; }
    public int Epoch { get; private set; }
    public int Index { get; private set; }

    public TokenWindowLoader(int[] tokens, int rows, int length, ulong seed, bool shuffle = true)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        WindowTokens = checked(rows * length + 1);
        // Windows overlap by one token: window w covers [w·(B·T), w·(B·T) + B·T].
        WindowCount = tokens.Length < WindowTokens ? 0 : (tokens.Length - 1) / (WindowTokens - 1);
        if (WindowCount == 0)
            throw new ArgumentException($"the token stream has {tokens.Length} tokens; one batch of {rows}×{length} needs {WindowTokens}");
        this.tokens = tokens;
        this.seed = seed;
        this.shuffle = shuffle;
        Seek(0, 0);
    }

    /// <summary>Moves to a saved position.</summary>
    public void Seek(int epoch, int index)
    {
        if (epoch < 0 || index < 0 || index > WindowCount)
            throw new ArgumentOutOfRangeException(nameof(index), $"loader position ({epoch}, {index}) is outside 0 ≤ index ≤ {WindowCount}");
        Epoch = epoch;
        Index = index;
        order = OrderOf(epoch);
    }

    /// <summary>The next window of B·T + 1 tokens; wraps into the next epoch (reshuffled) at the end.</summary>
    public ReadOnlySpan<int> Next()
    {
        if (Index == WindowCount) Seek(Epoch + 1, 0);
        int w = order[Index++];
        return tokens.AsSpan(w * (WindowTokens - 1), WindowTokens);
    }

    private int[] OrderOf(int epoch)
    {
        if (!shuffle)
        {
            var o = new int[WindowCount];
            for (int i = 0; i < o.Length; i++) o[i] = i;
            return o;
        }
        // A pure function of (seed, epoch).
        return new PhiloxStream(seed, (ulong)epoch + 1).Permutation(WindowCount);
    }
}
