using DistAlign.Alignment.Data;
using DistAlign.Alignment.Policies;

namespace DistAlign.Alignment.Objectives;

/// <summary>What one SFT minibatch measured.</summary>
/// <param name="Loss">L = −(1/T) Σ ln π(y_t | ·) over the minibatch's T response tokens</param>
/// <param name="Tokens">T, the response tokens the loss averages over</param>
/// <param name="Sequences">the number of (prompt, response) sequences</param>
/// <param name="MeanTokenLogProb">(1/T) Σ ln π(y_t | ·) = −Loss</param>
/// <param name="MeanSequenceLogProb">mean over sequences of ln π(y | x) (summed over each response's tokens)</param>
public sealed record SftMetrics(double Loss, int Tokens, int Sequences, double MeanTokenLogProb, double MeanSequenceLogProb);

/// <summary>
/// Supervised fine-tuning (OBJECTIVES.md, "SFT / pretraining") on (prompt, response) sequences — usually the
/// chosen responses of a preference set (<see cref="ChosenSequences"/>):
/// L = −(1/T) Σ_s Σ_t ln π(y_{s,t} | x_s, y_{s,&lt;t}), T = the total number of response tokens in the minibatch.
/// </summary>
/// <remarks>
/// The mean is over <em>tokens of the minibatch</em>, not over sequences: a long response weighs in proportion to its
/// length, as in pretraining. Prompt tokens are context only and carry no loss. Hence ∂L/∂ln π(y_t) = −1/T for every
/// response token, which is what is handed to <see cref="IPolicy.Backward"/>. When several minibatches are accumulated
/// into one step each is normalised by its own T (scale the learning rate or weight the calls if that matters).
/// </remarks>
public sealed class SftObjective
{
    /// <summary>
    /// Scores <paramref name="batch"/>, adds ∇L of this minibatch's mean token loss to the policy's gradients
    /// (accumulates; call <see cref="IPolicy.ZeroGradients"/> first for a fresh step) and returns the metrics.
    /// </summary>
    /// <param name="gradientScale">multiplies the gradient added (1/A for gradient accumulation over A micro-batches)</param>
    /// <exception cref="ArgumentException">The batch is empty or has no response tokens.</exception>
    public SftMetrics Accumulate(IPolicy policy, IReadOnlyList<PromptResponse> batch, double gradientScale = 1.0)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(batch);
        if (batch.Count == 0) throw new ArgumentException("an SFT minibatch needs at least one sequence", nameof(batch));
        int tokens = PolicyScores.TokenCount(batch);
        if (tokens == 0) throw new ArgumentException("an SFT minibatch needs at least one response token", nameof(batch));

        var tokenLogProbs = new float[tokens];
        policy.Score(batch, tokenLogProbs);
        double sum = 0;
        foreach (float lp in tokenLogProbs) sum += lp;
        double meanToken = sum / tokens;

        var dTokens = new float[tokens];
        Array.Fill(dTokens, (float)(-gradientScale / tokens));
        policy.Backward(dTokens);

        return new SftMetrics(-meanToken, tokens, batch.Count, meanToken, sum / batch.Count);
    }

    /// <summary>The (prompt, chosen) sequences of preference pairs, in order: SFT on the preferred responses.</summary>
    public static List<PromptResponse> ChosenSequences(IReadOnlyList<PreferencePair> pairs)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        var sequences = new List<PromptResponse>(pairs.Count);
        foreach (var pair in pairs) sequences.Add(new PromptResponse(pair.Prompt, pair.Chosen));
        return sequences;
    }
}
