namespace DistAlign.Transformer.Data;

/// <summary>A text cut in two at a paragraph boundary: training text, then held-out text.</summary>
/// <param name="Train">The first part (it ends with the blank line that closes its last paragraph).</param>
/// <param name="HeldOut">The rest, starting at the first character of a paragraph.</param>
public sealed record TextSplit(string Train, string HeldOut)
{
    /// <summary>
    /// Cuts <paramref name="text"/> so that <see cref="Train"/> is at most the first
    /// <paramref name="trainFraction"/> of its characters and <see cref="HeldOut"/> starts at the beginning
    /// of the paragraph that contains the cut point (the character just after the last blank line, i.e.
    /// <c>"\n\n"</c>, before that point). Where no paragraph break comes before the point, it falls back to
    /// the start of the line, and where there is no line break either, to the point itself.
    /// <c>Train + HeldOut == text</c> always.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="trainFraction"/> is not in (0, 1).</exception>
    public static TextSplit AtParagraph(string text, double trainFraction)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!(trainFraction > 0 && trainFraction < 1))
            throw new ArgumentOutOfRangeException(nameof(trainFraction), trainFraction, "The training fraction must lie strictly between 0 and 1.");

        int point = (int)(text.Length * trainFraction);
        int cut;
        int paragraph = point >= 2 ? text.LastIndexOf("\n\n", point - 1, StringComparison.Ordinal) : -1;
        if (paragraph >= 0)
        {
            cut = paragraph + 2;
        }
        else
        {
            int line = point >= 1 ? text.LastIndexOf('\n', point - 1) : -1;
            cut = line >= 0 ? line + 1 : point;
        }
        return new TextSplit(text[..cut], text[cut..]);
    }
}
