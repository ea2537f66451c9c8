using DistAlign.Alignment.Policies;

namespace DistAlign.Alignment.Objectives;

/// <summary>A learned (or known) reward R̂(x, y) the on-policy objectives query; never differentiated by them.</summary>
public interface IRewardFunction
{
    /// <summary>R̂ of every (prompt, response) sequence.</summary>
    void Score(IReadOnlyList<PromptResponse> sequences, Span<float> rewards);
}
