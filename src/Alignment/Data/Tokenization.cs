using DistAlign.Transformer.Tokenization;

namespace DistAlign.Alignment.Data;

/// <summary>
/// A preference pair as token ids. The arrays are owned by this object; treat them as read-only. Record equality
/// compares the array references, not the ids: compare contents with <c>SequenceEqual</c> or <see cref="DatasetHash"/>.
/// </summary>
/// <param name="PromptIds">Starts with <c>&lt;|endoftext|&gt;</c> (the start token), then the kept end of the prompt.</param>
/// <param name="ChosenIds">The kept start of the chosen response, ending with <c>&lt;|endoftext|&gt;</c> if it was not cut.</param>
/// <param name="RejectedIds">Likewise for the rejected response.</param>
/// <param name="Line">The source line of the example (0 if made in code).</param>
public sealed record TokenizedPreference(int[] PromptIds, int[] ChosenIds, int[] RejectedIds, int Line);

/// <summary>A prompt as token ids, starting with the <c>&lt;|endoftext|&gt;</c> start token. Treat as read-only.</summary>
public sealed record TokenizedPrompt(int[] PromptIds, int Line);

/// <summary>Token budgets for <see cref="PreferenceTokenizer"/>.</summary>
public sealed record TruncationOptions
{
    /// <summary>Most prompt tokens, counting the prepended start token (so at least 1).</summary>
    public required int MaxPromptTokens { get; init; }

    /// <summary>Most tokens per response, counting the appended end-of-text token (at least 1).</summary>
    public required int MaxResponseTokens { get; init; }

    /// <summary>Append <c>&lt;|endoftext|&gt;</c> to each response that fits, so the model learns to stop. Default true.</summary>
    public bool AppendEndOfText { get; init; } = true;

    /// <summary>Drop pairs whose chosen and rejected ids are equal after truncation (no preference signal left). Default true.</summary>
    public bool DropIdenticalPairs { get; init; } = true;
}

/// <summary>
/// What truncation did. Truncation counts describe the examples that were kept; dropped examples are only counted
/// as dropped (and their source lines listed).
/// </summary>
public sealed record TruncationReport
{
    /// <summary>Examples given.</summary>
    public int Examples { get; init; }
    /// <summary>Examples returned.</summary>
    public int Kept { get; init; }
    /// <summary>Prompts that lost tokens from their start.</summary>
    public int PromptsTruncated { get; init; }
    /// <summary>Prompt tokens removed in all.</summary>
    public long PromptTokensRemoved { get; init; }
    /// <summary>Chosen responses cut (including those that only lost their end-of-text token).</summary>
    public int ChosenTruncated { get; init; }
    /// <summary>Chosen tokens removed in all, counting each lost end-of-text token.</summary>
    public long ChosenTokensRemoved { get; init; }
    /// <summary>Rejected responses cut.</summary>
    public int RejectedTruncated { get; init; }
    /// <summary>Rejected tokens removed in all.</summary>
    public long RejectedTokensRemoved { get; init; }
    /// <summary>Pairs dropped because a response had no tokens (empty text with <see cref="TruncationOptions.AppendEndOfText"/> off).</summary>
    public int DroppedEmptyResponse { get; init; }
    /// <summary>Pairs dropped because chosen and rejected were the same ids after truncation.</summary>
    public int DroppedIdentical { get; init; }
    /// <summary>Source lines of dropped examples, in order (0 for examples made in code).</summary>
    public IReadOnlyList<int> DroppedLines { get; init; } = [];

    /// <summary>One line for logs.</summary>
    public override string ToString() =>
        $"{Kept:N0} of {Examples:N0} kept; prompts cut {PromptsTruncated:N0} (-{PromptTokensRemoved:N0} tokens), " +
        $"chosen cut {ChosenTruncated:N0} (-{ChosenTokensRemoved:N0}), rejected cut {RejectedTruncated:N0} (-{RejectedTokensRemoved:N0}); " +
        $"dropped {DroppedEmptyResponse:N0} with an empty response, {DroppedIdentical:N0} identical after truncation";
}

/// <summary>Tokenized examples with the report of what truncation did to them.</summary>
public sealed record TokenizedDataset<T>(IReadOnlyList<T> Examples, TruncationReport Report);

/// <summary>
/// Turns preference pairs into token ids with fixed budgets.
/// </summary>
/// <remarks>
/// <list type="bullet">
/// <item><b>Prompt</b>: <c>[EOT] + Encode(prompt)</c>. The <c>&lt;|endoftext|&gt;</c> start token gives every prompt,
/// even an empty one, a first token to condition on (GPT-2 was trained with it between documents). If it is longer than
/// <see cref="TruncationOptions.MaxPromptTokens"/>, tokens are removed from the <i>start</i> of the text, keeping the end
/// (the part next to the response), and the start token stays first.</item>
/// <item><b>Responses</b>: <c>Encode(response) + [EOT]</c> when <see cref="TruncationOptions.AppendEndOfText"/>. If that is
/// longer than <see cref="TruncationOptions.MaxResponseTokens"/>, the <i>start</i> of the text is kept
/// (<c>MaxResponseTokens</c> text tokens) and no end-of-text token is added: the response was cut, so the model must not
/// learn to stop there. A text of exactly <c>MaxResponseTokens</c> tokens therefore loses only its end-of-text token,
/// and counts as cut.</item>
/// <item>The literal text <c>&lt;|endoftext|&gt;</c> inside any field is refused (<see cref="DatasetRule.ReservedToken"/>):
/// the tokenizer would make it the special token, silently ending the prompt or response early.</item>
/// <item>Pairs whose response has no tokens, or (by default) whose two responses are equal after truncation, are dropped
/// and counted in <see cref="TruncationReport"/>.</item>
/// </list>
/// </remarks>
public static class PreferenceTokenizer
{
    public static TokenizedDataset<TokenizedPreference> Tokenize(IReadOnlyList<PreferenceExample> examples,
        Gpt2Tokenizer tokenizer, TruncationOptions options, string sourceName = "examples")
    {
        ArgumentNullException.ThrowIfNull(examples);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(sourceName);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxPromptTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxResponseTokens, 1);

        var kept = new List<TokenizedPreference>(examples.Count);
        var dropped = new List<int>();
        int promptsCut = 0, chosenCut = 0, rejectedCut = 0, droppedEmpty = 0, droppedSame = 0;
        long promptRemoved = 0, chosenRemoved = 0, rejectedRemoved = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            PreferenceExample e = examples[i] ?? throw new ArgumentException($"example {i} is null", nameof(examples));
            TextRules.CheckNoReservedText(e.Prompt, "prompt", sourceName, e.Line);
            TextRules.CheckNoReservedText(e.Chosen, "chosen", sourceName, e.Line);
            TextRules.CheckNoReservedText(e.Rejected, "rejected", sourceName, e.Line);

            int[] prompt = TextRules.PromptIds(tokenizer, e.Prompt, options.MaxPromptTokens, out int pCut);
            int[] chosen = TextRules.ResponseIds(tokenizer, e.Chosen, options.MaxResponseTokens, options.AppendEndOfText, out int cCut);
            int[] rejected = TextRules.ResponseIds(tokenizer, e.Rejected, options.MaxResponseTokens, options.AppendEndOfText, out int rCut);

            if (chosen.Length == 0 || rejected.Length == 0)
            {
                droppedEmpty++;
                dropped.Add(e.Line);
                continue;
            }
            if (options.DropIdenticalPairs && chosen.AsSpan().SequenceEqual(rejected))
            {
                droppedSame++;
                dropped.Add(e.Line);
                continue;
            }
            if (pCut > 0) { promptsCut++; promptRemoved += pCut; }
            if (cCut > 0) { chosenCut++; chosenRemoved += cCut; }
            if (rCut > 0) { rejectedCut++; rejectedRemoved += rCut; }
            kept.Add(new TokenizedPreference(prompt, chosen, rejected, e.Line));
        }
        var report = new TruncationReport
        {
            Examples = examples.Count,
            Kept = kept.Count,
            PromptsTruncated = promptsCut,
            PromptTokensRemoved = promptRemoved,
            ChosenTruncated = chosenCut,
            ChosenTokensRemoved = chosenRemoved,
            RejectedTruncated = rejectedCut,
            RejectedTokensRemoved = rejectedRemoved,
            DroppedEmptyResponse = droppedEmpty,
            DroppedIdentical = droppedSame,
            DroppedLines = dropped,
        };
        return new TokenizedDataset<TokenizedPreference>(kept, report);
    }
}

/// <summary>Turns prompts into token ids: <c>[EOT] + Encode(prompt)</c>, keeping the end when too long (as <see cref="PreferenceTokenizer"/>).</summary>
public static class PromptTokenizer
{
    /// <param name="maxPromptTokens">Most tokens per prompt, counting the start token (at least 1).</param>
    public static TokenizedDataset<TokenizedPrompt> Tokenize(IReadOnlyList<PromptExample> examples,
        Gpt2Tokenizer tokenizer, int maxPromptTokens, string sourceName = "examples")
    {
        ArgumentNullException.ThrowIfNull(examples);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(sourceName);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPromptTokens, 1);

        var result = new List<TokenizedPrompt>(examples.Count);
        int cut = 0;
        long removed = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            PromptExample e = examples[i] ?? throw new ArgumentException($"example {i} is null", nameof(examples));
            TextRules.CheckNoReservedText(e.Prompt, "prompt", sourceName, e.Line);
            int[] ids = TextRules.PromptIds(tokenizer, e.Prompt, maxPromptTokens, out int pCut);
            if (pCut > 0) { cut++; removed += pCut; }
            result.Add(new TokenizedPrompt(ids, e.Line));
        }
        var report = new TruncationReport
        {
            Examples = examples.Count,
            Kept = result.Count,
            PromptsTruncated = cut,
            PromptTokensRemoved = removed,
        };
        return new TokenizedDataset<TokenizedPrompt>(result, report);
    }
}

internal static class TextRules
{
    public static void CheckNoReservedText(string? text, string field, string sourceName, int line)
    {
        if (text is null) throw new ArgumentException($"{sourceName}:{line}: {field} is null");
        if (text.Contains(Gpt2Tokenizer.EndOfTextText, StringComparison.Ordinal))
            throw new DatasetFormatException(sourceName, line, DatasetRule.ReservedToken,
                $"field '{field}' contains the literal text {Gpt2Tokenizer.EndOfTextText}, which would become the end-of-text token");
    }

    /// <summary><c>[EOT] + last (max - 1) tokens of the text</c>; <paramref name="removed"/> counts the text tokens cut.</summary>
    public static int[] PromptIds(Gpt2Tokenizer tokenizer, string text, int max, out int removed)
    {
        int[] body = tokenizer.Encode(text);
        int keep = Math.Min(body.Length, max - 1);
        removed = body.Length - keep;
        var ids = new int[keep + 1];
        ids[0] = tokenizer.EndOfText;
        Array.Copy(body, body.Length - keep, ids, 1, keep);
        return ids;
    }

    /// <summary>
    /// <c>text tokens + [EOT]</c> if that fits in <paramref name="max"/>, else the first <paramref name="max"/> text
    /// tokens and no EOT; <paramref name="removed"/> counts removed tokens, the lost EOT included.
    /// </summary>
    public static int[] ResponseIds(Gpt2Tokenizer tokenizer, string text, int max, bool appendEndOfText, out int removed)
    {
        int[] body = tokenizer.Encode(text);
        int full = body.Length + (appendEndOfText ? 1 : 0);
        if (full <= max)
        {
            removed = 0;
            if (!appendEndOfText) return body;
            var ids = new int[full];
            body.CopyTo(ids, 0);
            ids[^1] = tokenizer.EndOfText;
            return ids;
        }
        removed = full - max;
        return body[..max];
    }
}
