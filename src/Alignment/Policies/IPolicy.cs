using DistAlign.Engine.Distributed;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>A prompt and one response to it, as token ids. The response is what gets scored.</summary>
public readonly record struct PromptResponse(int[] Prompt, int[] Response);

/// <summary>
/// What every objective is written against: a conditional distribution over responses that can score
/// them token by token, take the gradient of any loss of those scores, sample, and step its optimizer.
/// The GPT implements it (<see cref="GptPolicy"/>), and so does a table of logits over a finite response
/// set per context (<see cref="TabularPolicy"/>) — which is how objectives are checked against closed forms.
/// </summary>
/// <remarks>
/// Scores are per response token, flattened in order: sequence 0's tokens, then sequence 1's, ….
/// ln π(y | x) of a sequence is the sum of its tokens' scores (<see cref="PolicyScores"/> helps).
/// <see cref="Backward"/> refers to the batch of the last <see cref="Score"/> call and accumulates.
/// </remarks>
public interface IPolicy : IDisposable
{
    /// <summary>
    /// Writes ln π(y_t | x, y_&lt;t) for every response token of every sequence into <paramref name="tokenLogProbs"/>
    /// (length = total response tokens) and, when <paramref name="tokenEntropies"/> is non-empty, the entropy of
    /// π(· | x, y_&lt;t) at each of those positions. Keeps what <see cref="Backward"/> needs.
    /// </summary>
    void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default);

    /// <summary>
    /// Accumulates into the gradients the gradient of a loss, given ∂L/∂(token log-prob) (and ∂L/∂(token entropy)
    /// when non-empty; that needs entropies from the last <see cref="Score"/>).
    /// </summary>
    void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default);

    /// <summary>Draws one response per prompt, with each token's ln π (temperature 1, no truncation for the log-prob).</summary>
    Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed);

    /// <summary>Zeroes the gradients.</summary>
    void ZeroGradients();

    /// <summary>Clips the gradients to a global norm (0 = no clipping) and returns the norm before clipping.</summary>
    double ClipGradients(float maxNorm);

    /// <summary>One AdamW step (1-based <paramref name="step"/> for bias correction).</summary>
    void OptimizerStep(int step, float learningRate);

    /// <summary>A copy that shares nothing (same weights, zero gradients and moments): the frozen π0 or an anchor π_t.</summary>
    IPolicy Snapshot();

    /// <summary>Copies the weights (not gradients or moments) from a policy of the same kind and shape.</summary>
    void CopyWeightsFrom(IPolicy other);

    /// <summary>
    /// The first gradient element that is NaN or ±Inf, with the name of its parameter tensor, so a NaN guard can say
    /// where it appeared; null when every gradient is finite (or the policy cannot name its tensors).
    /// </summary>
    DistAlign.Transformer.Model.NonFiniteElement? FirstNonFiniteGradient() => null;

    /// <summary>
    /// Sums the gradients over the ranks of a data-parallel job, in place (every rank ends with the same bits). Policies
    /// that do not train across ranks throw <see cref="NotSupportedException"/>.
    /// </summary>
    void AllReduceGradients(IProcessGroup group, string purpose) =>
        throw new NotSupportedException($"{GetType().Name} does not train across ranks");

    /// <summary>A fingerprint of the exact weights (every rank's must be equal in a data-parallel job).</summary>
    ulong WeightsHash() => throw new NotSupportedException($"{GetType().Name} does not train across ranks");
}

/// <summary>
/// A policy with a scalar value head on its own backbone (PPO's default): one forward gives each response token's
/// ln π and the value V(s_t) of the state before that token; one backward takes the gradients of both.
/// Gradients, clipping and the optimizer step cover the head as well.
/// </summary>
public interface IValuePolicy : IPolicy
{
    /// <summary>As <see cref="IPolicy.Score"/>, also writing V(s_t) per response token into <paramref name="tokenValues"/>.</summary>
    void ScoreWithValues(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenValues, Span<float> tokenEntropies = default);

    /// <summary>As <see cref="IPolicy.Backward"/>, also taking ∂L/∂V per response token (the batch of the last <see cref="ScoreWithValues"/>).</summary>
    void BackwardWithValues(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenValues, ReadOnlySpan<float> dTokenEntropies = default);
}

/// <summary>Sequence-level views of per-token scores.</summary>
public static class PolicyScores
{
    /// <summary>Total response tokens of a batch (the length of the per-token spans).</summary>
    public static int TokenCount(IReadOnlyList<PromptResponse> batch)
    {
        int n = 0;
        foreach (var s in batch) n += s.Response.Length;
        return n;
    }

    /// <summary>sums[s] = Σ of sequence s's token values (fp64, in order); counts[s] = its response length.</summary>
    public static void SumPerSequence(IReadOnlyList<PromptResponse> batch, ReadOnlySpan<float> tokenValues, Span<float> sums, Span<int> counts)
    {
        int at = 0;
        for (int s = 0; s < batch.Count; s++)
        {
            int len = batch[s].Response.Length;
            double total = 0;
            for (int i = 0; i < len; i++) total += tokenValues[at + i];
            sums[s] = (float)total;
            if (!counts.IsEmpty) counts[s] = len;
            at += len;
        }
    }

    /// <summary>The backward of <see cref="SumPerSequence"/>: dTokens[t] += dSums[s] for every token of sequence s.</summary>
    public static void ScatterPerSequence(IReadOnlyList<PromptResponse> batch, ReadOnlySpan<float> dSums, Span<float> dTokens)
    {
        int at = 0;
        for (int s = 0; s < batch.Count; s++)
        {
            int len = batch[s].Response.Length;
            for (int i = 0; i < len; i++) dTokens[at + i] += dSums[s];
            at += len;
        }
    }
}
