using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;

namespace DistAlign.Alignment.Reward;

/// <summary>
/// R(x, y) = scale · ln π(y | x) under a frozen policy (summed over response tokens, the same kernel the policies use):
/// the reference-likelihood baseline of a <see cref="RewardModel"/>, or a "generative" reward in its own right (the tilt
/// class's reward model). Per token it is scale · ln π(y_t | ·), which PPO can place token by token.
/// </summary>
public sealed class LogLikelihoodReward(IPolicy policy, double scale) : ITokenRewardFunction
{
    public IPolicy Policy { get; } = policy;
    public double Scale { get; } = scale;

    public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> rewards)
    {
        if (rewards.Length != sequences.Count) throw new ArgumentException($"rewards must have one entry per sequence ({sequences.Count}), got {rewards.Length}");
        if (sequences.Count == 0) return;
        var tokenLogProbs = new float[PolicyScores.TokenCount(sequences)];
        Policy.Score(sequences, tokenLogProbs);
        PolicyScores.SumPerSequence(sequences, tokenLogProbs, rewards, default);
        for (int i = 0; i < rewards.Length; i++) rewards[i] = (float)(rewards[i] * Scale);
    }

    /// <summary>scale · ln π(y_t | x, y_&lt;t) per response token.</summary>
    public void ScoreTokens(IReadOnlyList<PromptResponse> sequences, Span<float> tokenRewards)
    {
        int tokens = PolicyScores.TokenCount(sequences);
        if (tokenRewards.Length != tokens) throw new ArgumentException($"token rewards must have one entry per response token ({tokens}), got {tokenRewards.Length}");
        if (tokens == 0) return;
        Policy.Score(sequences, tokenRewards);
        for (int t = 0; t < tokens; t++) tokenRewards[t] = (float)(tokenRewards[t] * Scale);
    }
}
