using DistAlign.Engine.Distributed;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Transformer.Model;

/// <summary>
/// The one contract of a GPT that trains: everything a policy, a reward model, a trainer or a benchmark asks of the
/// model, whatever runs it. Two engines implement it: <see cref="Gpt"/> on the CPU (it is also the host model that
/// checkpoints read and write) and <c>GpuGpt</c> on an ILGPU accelerator (cuBLAS on CUDA). Consumers are written once
/// against this interface and get an engine from <c>GptDevice</c>; a CPU/GPU difference lives inside an engine.
/// </summary>
/// <remarks>
/// <para>The model computes per-position log-probabilities of targets, never a loss: an objective turns them into a
/// loss and hands back ∂L/∂(log-prob). Every backward ACCUMULATES (+=) into the engine's gradients and reads the
/// activations of the last forward on a batch of the same shape.</para>
/// <para>Host copies: spans passed in and out are host memory. A device engine copies them over the bus (and
/// synchronises where it reads back); the CPU engine reads and writes its arenas directly.</para>
/// </remarks>
public interface IGptEngine : IDisposable
{
    GptConfig Config { get; }

    /// <summary>Where each parameter tensor sits in the flat parameter, gradient and moment buffers.</summary>
    ParameterLayout Layout { get; }

    /// <summary>When set, the wall time of each kind of op is charged to it (the step benchmark's breakdown).</summary>
    OpProfile? Profile { get; set; }

    // ---- the tied LM head: log-probs of targets and their gradients ------------------------------------------

    /// <summary>
    /// logProbs[i] = ln π(target_i | its segment's prefix), 0 where the target is −1, and, when <paramref name="entropy"/>
    /// is non-empty, H(π(· | prefix)) at those positions. Keeps what <see cref="Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float})"/> needs.
    /// </summary>
    void Forward(GptBatch batch, Span<float> logProbs, Span<float> entropy = default);

    /// <summary>Forward and backward in one pass for a gradient known before the forward (pretraining, SFT); fills <paramref name="logProbs"/>.</summary>
    void ForwardBackward(GptBatch batch, ReadOnlySpan<float> dLogProbs, Span<float> logProbs);

    /// <summary>
    /// After <see cref="Forward"/> on the same batch: the gradient of a loss given ∂L/∂logprob per position and, when
    /// <paramref name="dEntropy"/> is non-empty, ∂L/∂H (the forward must have computed entropies).
    /// </summary>
    void Backward(GptBatch batch, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy = default);

    /// <summary>
    /// <see cref="Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float})"/> with a second head on the same backbone
    /// (a value head): ∂L/∂h[featurePositions[s], :] += dFeatureRows[s, :] on the final hidden states h = ln_f(x), joined
    /// with the LM head's gradient before one transformer backward. Positions are distinct flat positions b·T + t.
    /// </summary>
    void Backward(GptBatch batch, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy,
                  ReadOnlySpan<int> featurePositions, ReadOnlySpan<float> dFeatureRows);

    // ---- the backbone alone: heads other than the LM head (a reward model's, a separate value model's) --------

    /// <summary>Runs the transformer forward only (no logits); read h with <see cref="CopyFeaturesToHost"/>.</summary>
    void ForwardFeatures(GptBatch batch);

    /// <summary>destination [S, C] = h[positions[s], :] of the last forward (<see cref="ForwardFeatures"/> or <see cref="Forward"/>).</summary>
    void CopyFeaturesToHost(ReadOnlySpan<int> positions, Span<float> destination);

    /// <summary>
    /// After <see cref="ForwardFeatures"/>: the transformer backward for ∂L/∂h that is dRows[s, :] at row positions[s]
    /// (distinct) and 0 elsewhere. No LM head is involved: wte gets gradient only through the embedding lookup.
    /// </summary>
    void BackwardFeatureRows(GptBatch batch, ReadOnlySpan<int> positions, ReadOnlySpan<float> dRows);

    // ---- gradients and the optimizer ------------------------------------------------------------------------

    /// <summary>Zeroes the gradients (every backward accumulates into them).</summary>
    void ZeroGradients();

    /// <summary>Σ g² over every gradient, deterministic: for a global norm that also covers parameters kept elsewhere (a host head).</summary>
    double GradientSumOfSquares();

    /// <summary>
    /// g ← Σ over the ranks of <paramref name="group"/> of g, in place (data parallelism's one exchange per step, before
    /// clipping); every rank ends with the same bits. Nothing happens in a one-process group.
    /// </summary>
    /// <param name="purpose">what is exchanged, for errors and the watchdog ("gradients of step 12")</param>
    void AllReduceGradients(IProcessGroup group, string purpose);

    /// <summary>g ← factor·g for every gradient.</summary>
    void ScaleGradients(float factor);

    /// <summary>
    /// The global gradient norm and, when <paramref name="maxNorm"/> &gt; 0, clipping to it: one factor
    /// min(1, maxNorm/(norm + 1e-6)) for all gradients, none when the norm is not finite.
    /// </summary>
    GradientClip ClipGradients(float maxNorm);

    /// <summary>One AdamW step over every tensor, weight decay on the matrices only (1-based <paramref name="step"/>).</summary>
    void AdamWStep(int step, float learningRate, AdamWSettings settings);

    /// <summary>The first NaN/±Inf gradient element with its tensor's name, or null (a download on a device).</summary>
    NonFiniteElement? FirstNonFiniteGradient();

    /// <summary>The first NaN/±Inf parameter element with its tensor's name, or null (a download on a device).</summary>
    NonFiniteElement? FirstNonFiniteParameter();

    // ---- host copies ----------------------------------------------------------------------------------------

    /// <summary>Copies parameters, gradients and AdamW moments into <paramref name="host"/> (same config); nothing when it is this engine.</summary>
    void CopyStateTo(Gpt host);

    /// <summary>Takes parameters and AdamW moments from <paramref name="host"/> (same config) and zeroes the gradients; nothing to copy when it is this engine.</summary>
    void CopyStateFrom(Gpt host);

    /// <summary>destination = the parameters, flat in <see cref="Layout"/> order.</summary>
    void CopyParametersToHost(Span<float> destination);

    /// <summary>The parameters ← <paramref name="source"/>'s (an engine of the same kind, config and device; not gradients or moments).</summary>
    void CopyParametersFrom(IGptEngine source);

    /// <summary>Waits for all queued work (nothing on the CPU).</summary>
    void Synchronize();

    // ---- decoding -------------------------------------------------------------------------------------------

    /// <summary>A KV-cache decoder over this engine's current weights (what <see cref="Sampler"/> drives); the caller disposes it when it is <see cref="IDisposable"/>.</summary>
    IIncrementalDecoder CreateDecoder(int rows, int maxLength);
}
