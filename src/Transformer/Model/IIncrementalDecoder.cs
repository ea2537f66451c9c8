namespace DistAlign.Transformer.Model;

/// <summary>
/// KV-cache decoding of a GPT, one new position per row per <see cref="Step"/>: what <see cref="Sampler"/> drives.
/// Rows advance in lockstep; the cache holds the keys and values of every position already processed.
/// Implementations: <see cref="GptDecoder"/> (the CPU) and <c>GpuGptDecoder</c> (a <c>GpuGpt</c>'s weights on its accelerator).
/// </summary>
public interface IIncrementalDecoder
{
    /// <summary>Sequences decoded side by side.</summary>
    int Rows { get; }

    /// <summary>Positions the cache holds; a step past it is refused.</summary>
    int MaxLength { get; }

    /// <summary>Positions already processed (the next <see cref="Step"/> processes this one).</summary>
    int Position { get; }

    /// <summary>Forgets the cache: the next step is position 0.</summary>
    void Reset();

    /// <summary>Feeds tokens[r] at <see cref="Position"/> for every row r and leaves the next-token logits in <see cref="Logits"/>.</summary>
    /// <exception cref="ArgumentException">Not one token per row, or a token outside the vocabulary.</exception>
    /// <exception cref="InvalidOperationException">The decoder is full (<see cref="MaxLength"/> positions processed).</exception>
    void Step(ReadOnlySpan<int> tokens);

    /// <summary>Logits [R, V] of the last step on the host: row r's distribution of the token after its last fed one.</summary>
    ReadOnlySpan<float> Logits { get; }
}
