using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// PPO's "separate value model" option: a policy and a second GPT with a value head, trained together as one
/// <see cref="IValuePolicy"/> (one global gradient-norm clip, one optimizer step each). The value model reads only
/// its backbone's final hidden states (no LM head). Costs a second backbone forward and backward per minibatch,
/// and frees the policy's features from serving two heads.
/// </summary>
public sealed class PolicyWithValueModel : IValuePolicy
{
    private readonly bool ownsModels;

    public IPolicy Policy { get; }
    /// <summary>
    /// The value model: a GPT policy built with a value head (<see cref="GptPolicy"/>, on any device), of which only the backbone and the head are used.
    /// </summary>
    public GptPolicy ValueModel { get; }

    public PolicyWithValueModel(IPolicy policy, GptPolicy valueModel, bool ownsModels = false)
    {
        if (valueModel.ValueHead is null) throw new ArgumentException("the value model needs a value head (withValueHead: true)");
        Policy = policy;
        ValueModel = valueModel;
        this.ownsModels = ownsModels;
    }

    public void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default) =>
        Policy.Score(batch, tokenLogProbs, tokenEntropies);

    public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default) =>
        Policy.Backward(dTokenLogProbs, dTokenEntropies);

    public void ScoreWithValues(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenValues, Span<float> tokenEntropies = default)
    {
        Policy.Score(batch, tokenLogProbs, tokenEntropies);
        ValueModel.ScoreValuesOnly(batch, tokenValues);
    }

    public void BackwardWithValues(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenValues, ReadOnlySpan<float> dTokenEntropies = default)
    {
        Policy.Backward(dTokenLogProbs, dTokenEntropies);
        ValueModel.BackwardValuesOnly(dTokenValues);
    }

    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) => Policy.Sample(prompts, options, seed);

    public void ZeroGradients()
    {
        Policy.ZeroGradients();
        ValueModel.ZeroGradients();
    }

    /// <summary>
    /// One global norm over both models' gradients; when clipping, each is clipped to its own share of
    /// <paramref name="maxNorm"/> (n_i/n · maxNorm), which scales both by the same maxNorm/n.
    /// </summary>
    public double ClipGradients(float maxNorm)
    {
        double policyNorm = Policy.ClipGradients(0), valueNorm = ValueModel.ClipGradients(0);
        double norm = Math.Sqrt(policyNorm * policyNorm + valueNorm * valueNorm);
        if (maxNorm > 0 && double.IsFinite(norm) && norm > maxNorm)
        {
            if (policyNorm > 0) Policy.ClipGradients((float)(maxNorm * policyNorm / norm));
            if (valueNorm > 0) ValueModel.ClipGradients((float)(maxNorm * valueNorm / norm));
        }
        return norm;
    }

    public void OptimizerStep(int step, float learningRate)
    {
        Policy.OptimizerStep(step, learningRate);
        ValueModel.OptimizerStep(step, learningRate);
    }

    /// <summary>The policy's first non-finite gradient, else the value model's (its tensor names prefixed <c>value_model.</c>).</summary>
    public DistAlign.Transformer.Model.NonFiniteElement? FirstNonFiniteGradient() =>
        Policy.FirstNonFiniteGradient() ?? (ValueModel.FirstNonFiniteGradient() is { } e ? e with { Tensor = "value_model." + e.Tensor } : null);

    /// <summary>A snapshot of the policy alone (the frozen π0 needs no values).</summary>
    public IPolicy Snapshot() => Policy.Snapshot();

    public void CopyWeightsFrom(IPolicy other) => Policy.CopyWeightsFrom(other is PolicyWithValueModel p ? p.Policy : other);

    public void Dispose()
    {
        if (!ownsModels) return;
        Policy.Dispose();
        ValueModel.Dispose();
    }
}
