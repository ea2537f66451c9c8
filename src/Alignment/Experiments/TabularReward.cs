using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Alignment.Experiments;

/// <summary>
/// R̂(x, y), a table fitted by Bradley–Terry on the pair counts: the objective of
/// <see cref="Reward.TabularRewardModel.Fit"/> — mean over the n pairs of −ln σ(R̂⁺ − R̂⁻), plus λ·mean(R̂²), full-batch
/// Adam (lr 0.05, β1 0.9, β2 0.999) from zero — evaluated on the distinct pairs with count weights, so a step costs
/// O(distinct pairs) instead of O(n). The loss and its gradient go through <see cref="PairwiseBradleyTerryLoss"/>
/// (<see cref="PairwiseLossVariant.RewardModel"/>); the test suite checks it against TabularRewardModel.Fit on the full list.
/// </summary>
public sealed class TabularReward : IRewardFunction
{
    private readonly float[] rewards;

    public int Contexts { get; }
    public int Responses { get; }

    /// <summary>R̂ [X·Y], row-major.</summary>
    public ReadOnlySpan<float> Rewards => rewards;

    /// <summary>The final mean Bradley–Terry loss over the n pairs (without the L2 term).</summary>
    public double Loss { get; }

    /// <summary>‖∇‖ of the full objective (BT mean + L2) at the returned R̂.</summary>
    public double GradientNorm { get; }

    public float this[int x, int y] => rewards[x * Responses + y];

    private TabularReward(int contexts, int responses, float[] rewards, double loss, double gradientNorm)
    {
        Contexts = contexts;
        Responses = responses;
        this.rewards = rewards;
        Loss = loss;
        GradientNorm = gradientNorm;
    }

    /// <summary>A reward table with the given values (tests, closed forms).</summary>
    public static TabularReward FromValues(int contexts, int responses, float[] values) =>
        values.Length == contexts * responses ? new TabularReward(contexts, responses, values, double.NaN, double.NaN)
                                              : throw new ArgumentException($"expected {contexts}×{responses} rewards, got {values.Length}");

    public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> rewards)
    {
        for (int i = 0; i < sequences.Count; i++)
        {
            var s = sequences[i];
            if (s.Prompt.Length != 1 || (uint)s.Prompt[0] >= (uint)Contexts || s.Response.Length != 1 || (uint)s.Response[0] >= (uint)Responses)
                throw new ArgumentException($"sequence {i}: a tabular sequence is one context id in [0, {Contexts}) and one response id in [0, {Responses})");
            rewards[i] = this.rewards[s.Prompt[0] * Responses + s.Response[0]];
        }
    }

    /// <summary>
    /// Fits R̂ on <paramref name="data"/>:
    /// <code>
    /// L(R̂) = (1/n) Σ_(x,a⁺,a⁻) c(x,a⁺,a⁻)·[−ln σ(R̂(x,a⁺) − R̂(x,a⁻))] + λ·(1/XY) Σ R̂²
    /// ∂L/∂R̂(x,a±) = ∓ (c/n)·σ(−(R̂⁺ − R̂⁻)) summed over the pairs that read it, + 2λR̂/XY
    /// </code>
    /// Pairs with a⁺ = a⁻ add a constant ln 2 per pair to the loss and nothing to the gradient.
    /// </summary>
    public static TabularReward Fit(TabularPairCounts data, int steps = 500, float learningRate = 0.05f, double l2 = 1e-4)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        if (data.Total == 0) throw new ArgumentException("fitting a reward model needs at least one pair");
        int cells = data.Contexts * data.Responses, responses = data.Responses;
        var distinct = data.Distinct().ToList();
        int p = distinct.Count;
        var index = new int[2 * p];
        var weights = new double[p];
        int tied = data.Total;
        for (int i = 0; i < p; i++)
        {
            var (pair, count) = distinct[i];
            index[2 * i] = pair.Context * responses + pair.Chosen;
            index[2 * i + 1] = pair.Context * responses + pair.Rejected;
            weights[i] = (double)count / data.Total;
            tied -= count;
        }
        var chosen = new int[p];
        var rejected = new int[p];
        for (int i = 0; i < p; i++) { chosen[i] = 2 * i; rejected[i] = 2 * i + 1; }
        var r = new float[cells];
        var g = new float[cells];
        var m = new float[cells];
        var v = new float[cells];
        var perSequence = new float[2 * p];
        var dPerSequence = new float[2 * p];
        var losses = new float[p];
        var settings = new PairwiseLossSettings(PairwiseLossVariant.RewardModel);

        double Evaluate()
        {
            for (int s = 0; s < perSequence.Length; s++) perSequence[s] = r[index[s]];
            Array.Clear(dPerSequence);
            PairwiseBradleyTerryLoss.ForwardBackward(settings, new PairwiseLossBatch { Rewards = perSequence, Chosen = chosen, Rejected = rejected },
                                                     losses, default, dPerSequence);
            for (int c = 0; c < cells; c++) g[c] = (float)(2 * l2 * r[c] / cells);
            double loss = tied * Math.Log(2) / data.Total;
            for (int i = 0; i < p; i++)
            {
                // The kernel's gradient is of the mean over p pairs; ×w_i·p makes it the count-weighted sum.
                double scale = weights[i] * p;
                g[index[2 * i]] += (float)(dPerSequence[2 * i] * scale);
                g[index[2 * i + 1]] += (float)(dPerSequence[2 * i + 1] * scale);
                loss += weights[i] * losses[i];
            }
            return loss;
        }

        for (int step = 1; step <= steps; step++)
        {
            Evaluate();
            AdamW.Step(r, g, m, v, step, learningRate, 0.9f, 0.999f, 1e-8f, 0f);
        }
        double final = Evaluate();
        return new TabularReward(data.Contexts, responses, r, final, Kernels.Cpu.GradientNorm.GlobalNorm(g));
    }
}
