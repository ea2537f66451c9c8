using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Alignment.Reward;

/// <summary>
/// R̂(x, y) as a table over contexts × single-token responses, fitted to preference pairs by the
/// Bradley–Terry loss (the same <see cref="PairwiseBradleyTerryLoss"/> as the GPT reward model) plus a tiny
/// L2 term λ·mean(R̂²) that pins down the per-context constant the pairs cannot identify. The reward of the
/// tabular experiments (OBJECTIVES.md, "Known-target evaluation", A).
/// </summary>
public sealed class TabularRewardModel : IRewardFunction
{
    private readonly float[] rewards, gradients, m, v;

    public int Contexts { get; }
    public int Responses { get; }

    /// <summary>R̂ [X, Y], row-major.</summary>
    public ReadOnlySpan<float> Rewards => rewards;

    public TabularRewardModel(int contexts, int responses)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(contexts, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(responses, 1);
        Contexts = contexts;
        Responses = responses;
        rewards = new float[contexts * responses];
        gradients = new float[rewards.Length];
        m = new float[rewards.Length];
        v = new float[rewards.Length];
    }

    public float this[int context, int response] => rewards[context * Responses + response];

    /// <summary>R̂ of one-token responses to one-token (context) prompts.</summary>
    public void Score(IReadOnlyList<DistAlign.Alignment.Policies.PromptResponse> sequences, Span<float> rewards)
    {
        for (int i = 0; i < sequences.Count; i++) rewards[i] = this.rewards[Cell(sequences[i].Prompt, sequences[i].Response, i)];
    }

    /// <summary>
    /// Full-batch Adam on mean BT loss + λ·mean(R̂²) over <paramref name="pairs"/> (prompt [x], responses [y]).
    /// Returns the final mean BT loss.
    /// </summary>
    public double Fit(IReadOnlyList<PreferencePair> pairs, int steps = 500, float learningRate = 0.05f, double l2 = 1e-4)
    {
        int p = pairs.Count;
        if (p == 0) throw new ArgumentException("fitting a reward model needs at least one pair");
        var index = new int[2 * p];
        for (int i = 0; i < p; i++)
        {
            index[2 * i] = Cell(pairs[i].Prompt, pairs[i].Chosen, i);
            index[2 * i + 1] = Cell(pairs[i].Prompt, pairs[i].Rejected, i);
        }
        var chosen = new int[p];
        var rejected = new int[p];
        for (int i = 0; i < p; i++) { chosen[i] = 2 * i; rejected[i] = 2 * i + 1; }
        var perSequence = new float[2 * p];
        var dPerSequence = new float[2 * p];
        var losses = new float[p];
        var settings = new PairwiseLossSettings(PairwiseLossVariant.RewardModel);
        double loss = 0;
        for (int step = 1; step <= steps; step++)
        {
            for (int s = 0; s < perSequence.Length; s++) perSequence[s] = rewards[index[s]];
            Array.Clear(dPerSequence);
            loss = PairwiseBradleyTerryLoss.ForwardBackward(settings, new PairwiseLossBatch
            {
                Rewards = perSequence, Chosen = chosen, Rejected = rejected,
            }, losses, default, dPerSequence).Loss;
            // ∂/∂R̂[cell] = Σ over the sequences that read it, + 2λ·R̂/cells.
            for (int c = 0; c < rewards.Length; c++) gradients[c] = (float)(2 * l2 * rewards[c] / rewards.Length);
            for (int s = 0; s < perSequence.Length; s++) gradients[index[s]] += dPerSequence[s];
            AdamW.Step(rewards, gradients, m, v, step, learningRate, 0.9f, 0.999f, 1e-8f, 0f);
        }
        return loss;
    }

    private int Cell(int[] prompt, int[] response, int pair)
    {
        if (prompt.Length != 1 || (uint)prompt[0] >= (uint)Contexts || response.Length != 1 || (uint)response[0] >= (uint)Responses)
            throw new ArgumentException($"pair {pair}: a tabular pair is one context id in [0, {Contexts}) and one-token responses in [0, {Responses})");
        return prompt[0] * Responses + response[0];
    }
}
