using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;
using ILGPU.Runtime;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// A GPT policy that trains on an ILGPU accelerator (<see cref="GpuGpt"/>: cuBLAS GEMMs on CUDA): the offline
/// objectives (SFT, the DPO family and IPO, PMLE with or without its sampled KL) run on it exactly as on
/// <see cref="GptPolicy"/>. Batches are packed as <see cref="GptPolicy"/> packs them (several sequences per row, in
/// order, first fit, rows rounded up to a power of two); scores, gradients, clipping and AdamW stay on the device.
/// </summary>
/// <remarks>
/// <list type="bullet">
/// <item><b>Host mirror</b>: <see cref="Model"/> is a CPU <see cref="Gpt"/> of the same config. The device copy is the one
/// trained; the mirror is refreshed only when the device weights changed since the last refresh and something needs it:
/// the weights alone for <see cref="Sample"/> and <see cref="Snapshot"/>, weights, gradients and AdamW moments for
/// <see cref="CopyToHost"/> (checkpoints); <see cref="FirstNonFiniteGradient"/> downloads the gradients.</item>
/// <item><b>Sampling</b> runs on the host: <see cref="GpuGpt"/> has no KV-cache decoder, so <see cref="Sample"/> refreshes the
/// mirror and calls <see cref="Sampler.Generate"/> on it (same draws as a CPU policy with the same weights).</item>
/// <item><b>Entropies</b> are not computed (the GPU forward has none); the offline objectives do not ask for them. A
/// caller that does (the entropy bonus of reverse-KL PPO) gets <see cref="NotSupportedException"/>. There is no value head.</item>
/// <item><b>AdamW</b> is <see cref="GpuGpt.AdamWStep"/> with the <see cref="AdamWSettings"/> the CPU policy uses
/// (β1, β2, ε, decoupled weight decay on the matrices only, as <see cref="AdamWOptimizer.Step"/>).</item>
/// </list>
/// The accelerator, the GEMM and the flash-attention kernels are borrowed (not disposed here); a <see cref="Snapshot"/>
/// borrows the same ones.
/// </remarks>
public sealed class GpuGptPolicy : IHostGptPolicy
{
    private readonly Accelerator accelerator;
    private readonly IGemm gemm;
    private readonly NvrtcFlashAttention? flashAttention;
    private readonly AdamWSettings optimizer;
    private readonly bool ownsModel;
    private GptBatch? batch;
    private int[] tokenPosition = [];   // flat response token → position in the packed batch
    private float[] positionLogProbs = [], dPosition = [];
    // The device weights change at every optimizer step and weight copy; the mirror's weights (and its whole state:
    // weights, gradients, moments) are current when their version agrees with the device's.
    private long deviceVersion, hostWeightsVersion, hostStateVersion;

    /// <summary>The host mirror (current after <see cref="CopyToHost"/>); checkpoints save it.</summary>
    public Gpt Model { get; }

    /// <summary>The device model that is trained.</summary>
    public GpuGpt Device { get; }

    /// <summary>The accelerator the policy trains on.</summary>
    public Accelerator Accelerator => accelerator;

    /// <summary>Uploads <paramref name="model"/>'s weights and AdamW moments to a new <see cref="GpuGpt"/> on <paramref name="accelerator"/>.</summary>
    /// <param name="model">the host model: initial weights, and from then on the mirror</param>
    /// <param name="gemm">the matrix products, for the same accelerator (<see cref="GpuContext.CreateGemm"/>)</param>
    /// <param name="optimizer">AdamW's hyper-parameters (as for <see cref="GptPolicy"/>)</param>
    /// <param name="flashAttention">when given (CUDA, head size 64), attention runs as its tiled bf16 kernels</param>
    /// <param name="ownsModel">dispose <paramref name="model"/> with the policy</param>
    public GpuGptPolicy(Gpt model, Accelerator accelerator, IGemm gemm, AdamWSettings optimizer, NvrtcFlashAttention? flashAttention = null,
                        bool ownsModel = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(gemm);
        ArgumentNullException.ThrowIfNull(optimizer);
        Model = model;
        this.accelerator = accelerator;
        this.gemm = gemm;
        this.flashAttention = flashAttention;
        this.optimizer = optimizer;
        this.ownsModel = ownsModel;
        Device = new GpuGpt(accelerator, model.Config, gemm, flashAttention);
        Device.Upload(model);
    }

    private GptBatch Pack(IReadOnlyList<PromptResponse> sequences)
    {
        int total = PolicyScores.TokenCount(sequences);
        if (tokenPosition.Length != total) tokenPosition = new int[total];
        batch = GptPolicy.PackSequences(sequences, Model.Config.MaxSequenceLength, batch, includeLastResponseToken: false, tokenPosition, default);
        return batch;
    }

    /// <summary>ln π per response token, from one <see cref="GpuGpt.Forward"/> over the packed batch.</summary>
    /// <exception cref="NotSupportedException"><paramref name="tokenEntropies"/> is non-empty: the GPU forward computes no entropies.</exception>
    public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> tokenLogProbs, Span<float> tokenEntropies = default)
    {
        if (!tokenEntropies.IsEmpty)
            throw new NotSupportedException("GpuGptPolicy computes no per-token entropies (the GPU forward has none): an objective with an " +
                                            "entropy term (reverse-KL PPO's exact entropy) runs on the CPU GptPolicy");
        var b = Pack(sequences);
        if (tokenLogProbs.Length != tokenPosition.Length)
            throw new ArgumentException($"the batch has {tokenPosition.Length} response tokens; tokenLogProbs has {tokenLogProbs.Length}");
        if (positionLogProbs.Length != b.TokenCount)
        {
            positionLogProbs = new float[b.TokenCount];
            dPosition = new float[b.TokenCount];
        }
        Device.Forward(b, positionLogProbs);
        for (int i = 0; i < tokenPosition.Length; i++) tokenLogProbs[i] = positionLogProbs[tokenPosition[i]];
    }

    /// <summary>Scatters ∂L/∂ln π to the packed positions and runs <see cref="GpuGpt.Backward"/> (accumulates into the device gradients).</summary>
    public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default)
    {
        if (batch is null) throw new InvalidOperationException("Backward needs a Score first");
        if (!dTokenEntropies.IsEmpty) throw new NotSupportedException("GpuGptPolicy has no entropy gradient (its forward computes no entropies)");
        if (dTokenLogProbs.Length != tokenPosition.Length) throw new ArgumentException($"dTokenLogProbs must have {tokenPosition.Length} entries");
        Array.Clear(dPosition);
        for (int i = 0; i < tokenPosition.Length; i++) dPosition[tokenPosition[i]] = dTokenLogProbs[i];
        Device.Backward(batch, dPosition);
    }

    /// <summary>Samples on the host mirror (refreshed first when the device weights changed): GpuGpt has no KV-cache decoder.</summary>
    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed)
    {
        CopyWeightsToHost();
        return Sampler.Generate(Model, prompts, options, seed);
    }

    public void ZeroGradients() => Device.ZeroGradients();

    /// <summary>The global gradient norm, and clipping to <paramref name="maxNorm"/> when &gt; 0, on the device (<see cref="GpuGpt.ClipGradients"/>).</summary>
    public double ClipGradients(float maxNorm) => Device.ClipGradients(maxNorm).Norm;

    /// <summary>One AdamW step on the device with the CPU policy's settings (weight decay on the matrices only).</summary>
    public void OptimizerStep(int step, float learningRate)
    {
        Device.AdamWStep(step, learningRate, optimizer.Beta1, optimizer.Beta2, optimizer.Epsilon, optimizer.WeightDecay);
        deviceVersion++;
    }

    /// <summary>Downloads the gradients and names the first NaN/±Inf element (<see cref="NonFiniteElement.FindFirst"/>).</summary>
    public NonFiniteElement? FirstNonFiniteGradient()
    {
        Device.Synchronize();
        Device.Gradients.CopyToCPU(Model.Gradients);
        return NonFiniteElement.FindFirst(Model.Layout, Model.Gradients);
    }

    /// <summary>A new policy on the same accelerator, GEMM and attention kernels with a copy of the weights (zero gradients and moments).</summary>
    public IPolicy Snapshot()
    {
        CopyWeightsToHost();
        var copy = new Gpt(Model.Config);
        try
        {
            Model.Parameters.CopyTo(copy.Parameters);
            return new GpuGptPolicy(copy, accelerator, gemm, optimizer, flashAttention, ownsModel: true);
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }

    /// <summary>Copies the weights (not gradients or moments) from a <see cref="GpuGptPolicy"/> of the same config on the same accelerator, device to device.</summary>
    public void CopyWeightsFrom(IPolicy other)
    {
        if (other is not GpuGptPolicy g || g.Model.Config != Model.Config || !ReferenceEquals(g.accelerator, accelerator))
            throw new ArgumentException($"can only copy from a GPU GPT policy of the same config ({Model.Config}) on the same accelerator");
        if (ReferenceEquals(g, this)) return;
        g.Device.Parameters.CopyTo(Device.Parameters);
        Device.Synchronize();
        deviceVersion++;
    }

    /// <summary>Downloads weights, gradients and AdamW moments into <see cref="Model"/> when the device weights changed since the last download.</summary>
    public void CopyToHost()
    {
        if (hostStateVersion == deviceVersion) return;
        Device.Download(Model);
        hostStateVersion = hostWeightsVersion = deviceVersion;
    }

    // The weights alone (what sampling and snapshots read): a quarter of CopyToHost's traffic.
    private void CopyWeightsToHost()
    {
        if (hostWeightsVersion == deviceVersion) return;
        Device.Synchronize();
        Device.Parameters.CopyToCPU(Model.Parameters);
        hostWeightsVersion = deviceVersion;
    }

    /// <summary>Uploads <see cref="Model"/>'s weights and AdamW moments (after a checkpoint restore); zeroes the device gradients.</summary>
    public void CopyFromHost()
    {
        Device.Upload(Model);
        deviceVersion++;
        hostStateVersion = hostWeightsVersion = deviceVersion;
    }

    public void Dispose()
    {
        Device.Dispose();
        if (ownsModel) Model.Dispose();
    }
}
