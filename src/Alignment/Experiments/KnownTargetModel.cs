using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Alignment.Experiments;

/// <summary>
/// What the known-target evaluation needs of a model of responses: exact per-token log-probs (and entropies) of
/// given responses, and samples. Policies (<see cref="PolicyResponseModel"/>) and the target π* itself
/// (<see cref="TiltedTarget"/>) both provide it, so the evaluator can be checked on π̂ = π*.
/// </summary>
public interface IResponseModel
{
    /// <summary>ln p(y_t | x, y_&lt;t) for every response token (flattened, sequence after sequence) and, when
    /// <paramref name="tokenEntropies"/> is non-empty, the entropy of p(· | x, y_&lt;t) at each of them.</summary>
    void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default);

    /// <summary>One response per prompt, drawn exactly (temperature 1, no truncation), with each token's log-prob.</summary>
    Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed);
}

/// <summary>An <see cref="IPolicy"/> seen as an <see cref="IResponseModel"/> (scoring and sampling only).</summary>
public sealed class PolicyResponseModel(IPolicy policy) : IResponseModel
{
    public IPolicy Policy { get; } = policy;

    public void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default) =>
        Policy.Score(batch, tokenLogProbs, tokenEntropies);

    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) => Policy.Sample(prompts, options, seed);
}

/// <summary>The sentiment tilt w(v) of the known-target experiment: a lexicon score per token of the vocabulary.</summary>
public static class LexiconTilt
{
    /// <summary>
    /// w(v) for every token id: a token whose text is a whole word, with or without GPT-2's leading space
    /// ('Ġ' = the byte 0x20), gets the lexicon's score of that word (exact match first, then lower case);
    /// every other token (word pieces, punctuation, <c>&lt;|endoftext|&gt;</c>) gets 0. A word piece that
    /// happens to spell a lexicon word ("Ġgood" in "goodness") is scored too: the tilt is per token.
    /// </summary>
    public static float[] TokenWeights(Gpt2Tokenizer tokenizer, IReadOnlyDictionary<string, float> lexicon)
    {
        var weights = new float[tokenizer.VocabSize];
        for (int id = 0; id < tokenizer.VocabSize; id++)
        {
            if (id == tokenizer.EndOfText) continue;
            string text = tokenizer.Decode([id]);
            string word = text.StartsWith(' ') ? text[1..] : text;
            if (word.Length == 0 || !IsWord(word)) continue;
            if (lexicon.TryGetValue(word, out float w) || lexicon.TryGetValue(word.ToLowerInvariant(), out w)) weights[id] = w;
        }
        return weights;
    }

    private static bool IsWord(string s)
    {
        foreach (char c in s) if (!char.IsLetter(c)) return false;
        return true;
    }

    /// <summary>Σ_t w(y_t): the lexicon reward of a response.</summary>
    public static double Reward(ReadOnlySpan<float> weights, ReadOnlySpan<int> response)
    {
        double r = 0;
        foreach (int t in response) r += weights[t];
        return r;
    }
}

/// <summary>
/// Full next-token logits of a GPT at the response positions of packed (prompt, response) sequences:
/// logits = h · wteᵀ (the tied head) from <see cref="Gpt.ForwardFeatures"/>'s final hidden states, a chunk of
/// rows at a time, so the [tokens × V] matrix never exists at once. The GPT's own methods are untouched.
/// </summary>
public static class ResponseLogits
{
    /// <summary>Rows of logits computed per GEMM.</summary>
    public const int ChunkRows = 64;

    /// <summary>
    /// Calls <paramref name="row"/>(flat response token index, logits [V] of the distribution that token was drawn
    /// from) for every response token of every sequence, in order. The logits span is scratch: valid during the call.
    /// </summary>
    public static void ForEach(Gpt model, IReadOnlyList<PromptResponse> sequences, RowAction row)
    {
        int tokens = PolicyScores.TokenCount(sequences);
        if (tokens == 0) return;
        var tokenPosition = new int[tokens];
        var batch = GptPolicy.PackSequences(sequences, model.Config.MaxSequenceLength, null, includeLastResponseToken: false, tokenPosition, default);
        int c = model.Config.Channels, v = model.Config.VocabSize;
        var hidden = model.ForwardFeatures(batch);
        var wte = model.Parameters.Slice((int)model.Layout.Wte, v * c);
        int chunk = Math.Min(ChunkRows, tokens);
        var gathered = new float[chunk * c];
        var logits = new float[chunk * v];
        for (int start = 0; start < tokens; start += chunk)
        {
            int m = Math.Min(chunk, tokens - start);
            for (int i = 0; i < m; i++) hidden.Slice(tokenPosition[start + i] * c, c).CopyTo(gathered.AsSpan(i * c, c));
            // logits[i, v] = Σ_c h[i, c] · wte[v, c]
            Gemm.Multiply(Transpose.No, Transpose.Yes, m, v, c, 1f, gathered, c, wte, c, 0f, logits, v);
            for (int i = 0; i < m; i++) row(start + i, logits.AsSpan(i * v, v));
        }
    }

    /// <summary>Receives one response token's logits.</summary>
    public delegate void RowAction(int token, ReadOnlySpan<float> logits);
}

/// <summary>
/// The known target π* of OBJECTIVES.md "Known-target evaluation B": the pretrained π0 tilted token by token,
/// π*(v | ctx) = π0(v | ctx)·exp(t(v)) / Z(ctx), t(v) = w(v)/τ, Z(ctx) = Σ_u π0(u | ctx)·exp(t(u)).
/// It is a proper autoregressive model: ln π*(y | x) = Σ_t ln π*(y_t | x, y_&lt;t) exactly (one normaliser per
/// position over the full vocabulary, in fp64), and <see cref="Sample"/> draws from it exactly with a KV cache.
/// τ = ∞ gives π0 itself.
/// </summary>
public sealed class TiltedTarget : IResponseModel
{
    private readonly float[] tilt;

    /// <summary>π0 (read only; shared with whoever owns it).</summary>
    public Gpt Reference { get; }
    /// <summary>w(v) per token id.</summary>
    public IReadOnlyList<float> TokenWeights { get; }
    /// <summary>τ (&gt; 0; +∞ allowed).</summary>
    public double Temperature { get; }
    /// <summary>t(v) = w(v)/τ, the per-token log-tilt.</summary>
    public ReadOnlySpan<float> Tilt => tilt;

    public TiltedTarget(Gpt reference, float[] tokenWeights, double temperature)
    {
        ArgumentNullException.ThrowIfNull(reference);
        if (tokenWeights.Length != reference.Config.VocabSize)
            throw new ArgumentException($"one weight per token of the vocabulary ({reference.Config.VocabSize}) expected, got {tokenWeights.Length}");
        if (!(temperature > 0)) throw new ArgumentException($"the tilt temperature τ must be > 0 (got {temperature})");
        Reference = reference;
        TokenWeights = tokenWeights;
        Temperature = temperature;
        tilt = new float[tokenWeights.Length];
        for (int i = 0; i < tilt.Length; i++)
        {
            if (!float.IsFinite(tokenWeights[i])) throw new ArgumentException($"token weight {i} is not finite ({tokenWeights[i]})");
            tilt[i] = double.IsPositiveInfinity(temperature) ? 0f : (float)(tokenWeights[i] / temperature);
        }
    }

    public void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default) =>
        Score(batch, tokenLogProbs, default, tokenEntropies);

    /// <summary>
    /// ln π*(y_t | ·) per response token into <paramref name="targetLogProbs"/>; when non-empty, ln π0(y_t | ·) into
    /// <paramref name="referenceLogProbs"/> and the entropy of π*(· | ·) into <paramref name="targetEntropies"/>.
    /// </summary>
    public void Score(IReadOnlyList<PromptResponse> batch, Span<float> targetLogProbs, Span<float> referenceLogProbs, Span<float> targetEntropies)
    {
        int tokens = PolicyScores.TokenCount(batch);
        if (targetLogProbs.Length != tokens) throw new ArgumentException($"the batch has {tokens} response tokens; the log-prob span has {targetLogProbs.Length}");
        if (!referenceLogProbs.IsEmpty && referenceLogProbs.Length != tokens) throw new ArgumentException($"reference log-probs need {tokens} entries");
        if (!targetEntropies.IsEmpty && targetEntropies.Length != tokens) throw new ArgumentException($"entropies need {tokens} entries");
        var targets = new int[tokens];
        int at = 0;
        foreach (var s in batch) foreach (int y in s.Response) targets[at++] = y;
        var lp = new float[tokens];
        var lp0 = referenceLogProbs.IsEmpty ? null : new float[tokens];
        var h = targetEntropies.IsEmpty ? null : new float[tokens];
        ResponseLogits.ForEach(Reference, batch, (i, logits) =>
        {
            var (logZ, logZ0, entropy) = Normalisers(logits, tilt, h is not null);
            int y = targets[i];
            lp[i] = (float)(logits[y] + tilt[y] - logZ);
            if (lp0 is not null) lp0[i] = (float)(logits[y] - logZ0);
            if (h is not null) h[i] = (float)entropy;
        });
        lp.CopyTo(targetLogProbs);
        lp0?.CopyTo(referenceLogProbs);
        h?.CopyTo(targetEntropies);
    }

    /// <summary>
    /// ln Σ_v exp(l_v + t_v) (π*'s normaliser in logit space), ln Σ_v exp(l_v) (π0's) and, when asked, π*'s entropy
    /// H = ln Z* − Σ_v p*_v (l_v + t_v); all in fp64 around the maximum.
    /// </summary>
    internal static (double LogZ, double LogZ0, double Entropy) Normalisers(ReadOnlySpan<float> logits, ReadOnlySpan<float> tilt, bool entropy)
    {
        double max = double.NegativeInfinity, max0 = double.NegativeInfinity;
        for (int v = 0; v < logits.Length; v++)
        {
            max = Math.Max(max, logits[v] + (double)tilt[v]);
            max0 = Math.Max(max0, logits[v]);
        }
        double sum = 0, sum0 = 0, weighted = 0;
        for (int v = 0; v < logits.Length; v++)
        {
            double z = logits[v] + (double)tilt[v];
            double e = Math.Exp(z - max);
            sum += e;
            sum0 += Math.Exp(logits[v] - max0);
            if (entropy) weighted += e * z;
        }
        double logZ = max + Math.Log(sum);
        return (logZ, max0 + Math.Log(sum0), entropy ? logZ - weighted / sum : 0);
    }

    /// <summary>Draws one response per prompt from π* exactly (<see cref="TiltedSampler"/> with t = w/τ).</summary>
    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) =>
        TiltedSampler.Sample(Reference, tilt, prompts, options, seed);
}
