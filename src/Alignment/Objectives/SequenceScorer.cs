using DistAlign.Alignment.Data;
using DistAlign.Alignment.Policies;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Alignment.Objectives;

/// <summary>A scored sequence: ln π(response | prompt) = Σ of its tokens' log-probs (fp64 in order, stored as fp32), and the tokens' own.</summary>
/// <param name="Line">the example's source line (0 when made in code)</param>
/// <param name="TokenEntropies">H(π(· | prefix)) at each response token, when asked for; else empty</param>
public sealed record SequenceScore(int Line, float LogProb, float[] TokenLogProbs, float[] TokenEntropies)
{
    /// <summary>Response tokens scored.</summary>
    public int Tokens => TokenLogProbs.Length;

    /// <summary>Mean log-prob per response token (the negative of the per-token loss).</summary>
    public double MeanLogProb => Tokens == 0 ? 0 : (double)LogProb / Tokens;
}

/// <summary>
/// Scores (prompt, response) sequences with any policy, a fixed number of sequences per batch, so a file's scores
/// depend only on the model, the sequences, the batch size and the thread count: what <c>distalign score</c> prints and
/// what embedders compare their own calls to.
/// </summary>
public static class SequenceScorer
{
    /// <summary>Sequences per scoring batch, by default (they are packed into rows of the model's context).</summary>
    public const int DefaultBatchSize = 32;

    /// <summary>
    /// Token ids of each example: the prompt as <c>[EOT] + its tokens</c>, the response's tokens as they are (no EOT
    /// appended). A sequence longer than <paramref name="context"/> + 1 tokens (the last token is only a target), a
    /// response with no token, or the literal <c>&lt;|endoftext|&gt;</c> in a text is refused naming the line.
    /// </summary>
    public static List<PromptResponse> Tokenize(IReadOnlyList<ScoreExample> examples, Gpt2Tokenizer tokenizer, int context, string sourceName)
    {
        var sequences = new List<PromptResponse>(examples.Count);
        foreach (var e in examples)
        {
            TextRules.CheckNoReservedText(e.Prompt, "prompt", sourceName, e.Line);
            TextRules.CheckNoReservedText(e.Response, "response", sourceName, e.Line);
            int[] prompt = [tokenizer.EndOfText, .. tokenizer.Encode(e.Prompt)];
            int[] response = tokenizer.Encode(e.Response);
            if (response.Length == 0)
                throw new DatasetFormatException(sourceName, e.Line, DatasetRule.EmptyText, "the response encodes to no token");
            int positions = prompt.Length + response.Length - 1;
            if (positions > context)
                throw new ArgumentException($"{sourceName}:{e.Line}: prompt ({prompt.Length} tokens with the start token) + response " +
                                            $"({response.Length}) − 1 = {positions} positions exceed the model's context of {context}; shorten the line");
            sequences.Add(new PromptResponse(prompt, response));
        }
        return sequences;
    }

    /// <summary>Scores every sequence, <paramref name="batchSize"/> at a time; entropies too when <paramref name="withEntropies"/>.</summary>
    /// <param name="lines">each sequence's source line (empty: 0 for all)</param>
    public static SequenceScore[] Score(IPolicy policy, IReadOnlyList<PromptResponse> sequences, ReadOnlySpan<int> lines = default,
                                        int batchSize = DefaultBatchSize, bool withEntropies = false)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (!lines.IsEmpty && lines.Length != sequences.Count)
            throw new ArgumentException($"lines must be empty or have one entry per sequence ({sequences.Count}), got {lines.Length}");
        var scores = new SequenceScore[sequences.Count];
        for (int start = 0; start < sequences.Count; start += batchSize)
        {
            var batch = sequences.Skip(start).Take(batchSize).ToList();
            int tokens = PolicyScores.TokenCount(batch);
            var logProbs = new float[tokens];
            var entropies = withEntropies ? new float[tokens] : [];
            policy.Score(batch, logProbs, entropies);
            var sums = new float[batch.Count];
            PolicyScores.SumPerSequence(batch, logProbs, sums, default);
            int at = 0;
            for (int s = 0; s < batch.Count; s++)
            {
                int n = batch[s].Response.Length;
                scores[start + s] = new SequenceScore(lines.IsEmpty ? 0 : lines[start + s], sums[s], logProbs[at..(at + n)],
                                                      withEntropies ? entropies[at..(at + n)] : []);
                at += n;
            }
        }
        return scores;
    }
}
