using DistAlign.Alignment.Policies;

namespace DistAlign.Alignment.Objectives;

/// <summary>A learned (or known) reward R̂(x, y) the on-policy objectives query; never differentiated by them.</summary>
public interface IRewardFunction
{
    /// <summary>R̂ of every (prompt, response) sequence.</summary>
    void Score(IReadOnlyList<PromptResponse> sequences, Span<float> rewards);
}

/// <summary>
/// A reward that is a sum over response tokens, R̂(x, y) = Σ_t r̂(x, y_≤t) — a likelihood ln π(y|x) is one. PPO then places
/// each token's share where it was earned instead of the whole sum on the last token: a token's return then leaves out the
/// rewards of the tokens before it, which do not depend on its action (the expected gradient is the same; its variance,
/// with sequence rewards spread over tens of nats, far smaller).
/// </summary>
public interface ITokenRewardFunction : IRewardFunction
{
    /// <summary>r̂ per response token, flattened sequence after sequence (Σ over a sequence = its <see cref="IRewardFunction.Score"/>).</summary>
    void ScoreTokens(IReadOnlyList<PromptResponse> sequences, Span<float> tokenRewards);
}
