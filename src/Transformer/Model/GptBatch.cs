namespace DistAlign.Transformer.Model;

/// <summary>
/// One batch of B rows × T positions for the GPT. A row may pack several sequences back to back: each
/// position carries its sequence's segment id, and positions restart at 0 with each segment, so
/// attention never crosses a sequence boundary and no position is padding unless its target is −1.
/// </summary>
public sealed class GptBatch
{
    /// <summary>Rows (B).</summary>
    public int Rows { get; }
    /// <summary>Positions per row (T).</summary>
    public int Length { get; }
    /// <summary>Input token ids [B·T].</summary>
    public int[] Tokens { get; }
    /// <summary>Position of each token within its own sequence [B·T] (restarts at 0 per segment).</summary>
    public int[] Positions { get; }
    /// <summary>Sequence id of each token [B·T]; attention is restricted to equal ids.</summary>
    public int[] Segments { get; }
    /// <summary>Target id at each position [B·T]; −1 means no target (prompt tokens, padding).</summary>
    public int[] Targets { get; }

    public GptBatch(int rows, int length)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(length, 1);
        Rows = rows;
        Length = length;
        Tokens = new int[rows * length];
        Positions = new int[rows * length];
        Segments = new int[rows * length];
        Targets = new int[rows * length];
        Clear();
    }

    public int TokenCount => Rows * Length;

    /// <summary>Resets every row to one empty segment: tokens 0, positions 0..T−1, no targets.</summary>
    public void Clear()
    {
        Array.Clear(Tokens);
        Array.Clear(Segments);
        Array.Fill(Targets, -1);
        for (int i = 0; i < Positions.Length; i++) Positions[i] = i % Length;
    }

    /// <summary>
    /// Fills the batch as plain language modelling over contiguous windows: row r gets
    /// tokens[r·T … r·T+T−1] as input and the next token of each as target (one segment per row).
    /// <paramref name="window"/> must hold B·T + 1 tokens.
    /// </summary>
    public void SetLanguageModelling(ReadOnlySpan<int> window)
    {
        if (window.Length != TokenCount + 1)
            throw new ArgumentException($"a language-modelling window for {Rows}×{Length} needs {TokenCount + 1} tokens, got {window.Length}");
        Clear();
        for (int r = 0; r < Rows; r++)
            for (int t = 0; t < Length; t++)
            {
                int i = r * Length + t;
                Tokens[i] = window[i];
                Targets[i] = window[i + 1];
            }
    }

    /// <summary>Number of positions that carry a target.</summary>
    public int TargetCount()
    {
        int n = 0;
        foreach (int t in Targets) if (t >= 0) n++;
        return n;
    }

    /// <summary>
    /// Checks every id against the model: tokens and targets within the vocabulary, positions within
    /// the context, positions restarting at 0 where a segment starts and counting up inside it.
    /// Throws <see cref="ArgumentException"/> naming the first offending row and position.
    /// </summary>
    public void Validate(GptConfig config)
    {
        if (Length > config.MaxSequenceLength)
            throw new ArgumentException($"batch length {Length} exceeds the model's context of {config.MaxSequenceLength}");
        for (int r = 0; r < Rows; r++)
            for (int t = 0; t < Length; t++)
            {
                int i = r * Length + t;
                if ((uint)Tokens[i] >= (uint)config.VocabSize)
                    throw new ArgumentException($"row {r}, position {t}: token id {Tokens[i]} is outside the vocabulary [0, {config.VocabSize})");
                if (Targets[i] < -1 || Targets[i] >= config.VocabSize)
                    throw new ArgumentException($"row {r}, position {t}: target id {Targets[i]} is neither −1 nor inside the vocabulary [0, {config.VocabSize})");
                bool segmentStart = t == 0 || Segments[i] != Segments[i - 1];
                int expected = segmentStart ? 0 : Positions[i - 1] + 1;
                if (Positions[i] != expected)
                    throw new ArgumentException($"row {r}, position {t}: position id {Positions[i]} should be {expected} (positions restart at 0 with each segment)");
            }
    }
}
