namespace DistAlign.Alignment.Policies;

/// <summary>
/// A GPT policy that can carry a PPO value head (<see cref="ScalarHead"/> on the backbone's final hidden state, kept on the
/// host): the CPU <see cref="GptPolicy"/> and the CUDA <see cref="GpuGptPolicy"/>. What <see cref="PolicyWithValueModel"/>
/// needs of a separate value model (the backbone and the head alone, no LM head) and what PPO checkpoints save (the host
/// model and the head).
/// </summary>
public interface IGptValueModel : IValuePolicy, IHostGptPolicy
{
    /// <summary>The value head, or null when built without one.</summary>
    ScalarHead? ValueHead { get; }

    /// <summary>
    /// V(s_t) per response token from the backbone and the value head alone (no LM head): a separate value model.
    /// <see cref="BackwardValuesOnly"/> refers to this batch.
    /// </summary>
    void ScoreValuesOnly(IReadOnlyList<PromptResponse> sequences, Span<float> tokenValues);

    /// <summary>Accumulates the gradient of a loss given ∂L/∂V per response token of the last <see cref="ScoreValuesOnly"/>.</summary>
    void BackwardValuesOnly(ReadOnlySpan<float> dTokenValues);
}
