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
/// the weights alone for <see cref="Snapshot"/>, weights, gradients and AdamW moments for
/// <see cref="CopyToHost"/> (checkpoints); <see cref="FirstNonFiniteGradient"/> downloads the gradients.</item>
/// <item><b>Sampling</b> decodes on the device (<see cref="GpuGptDecoder"/>: KV caches and logits on the GPU, one logits copy per
/// step); the draws are made on the host from the same Philox streams as a CPU policy's, so the samples are the CPU policy's
/// wherever the two logits do not straddle a draw's boundary (they differ by fp32 rounding).</item>
/// <item><b>Entropies</b> H(π(· | prefix)) per response token, when a caller asks for them (reverse-KL PPO's exact entropy
/// bonus, the known-target evaluation), come from the fused LM head's entropy kernel on the device, and their gradient
/// −p·(ln p + H) per logit from its gradient kernel, as <see cref="GptPolicy"/>'s on the CPU.</item>
/// <item><b>Value head</b> (PPO, built with <c>withValueHead</c>): a <see cref="ScalarHead"/> on the host, as
/// <see cref="GptPolicy"/>'s. <see cref="ScoreWithValues"/> gathers the final features h = ln_f(x) at the scored positions on
/// the device and copies those rows back (<see cref="GpuGpt.CopyFeaturesToHost(ReadOnlySpan{int}, Span{float})"/>);
/// <see cref="BackwardWithValues"/> uploads the head's ∂L/∂h at those rows only, scattered on the device into the LM head's
/// ∂L/∂h before one transformer backward; the clip's global norm covers the device gradients and the head's, and AdamW steps both.</item>
/// <item><b>AdamW</b> is <see cref="GpuGpt.AdamWStep"/> with the <see cref="AdamWSettings"/> the CPU policy uses
/// (β1, β2, ε, decoupled weight decay on the matrices only, as <see cref="AdamWOptimizer.Step"/>).</item>
/// </list>
/// The accelerator, the GEMM and the flash-attention kernels are borrowed (not disposed here); a <see cref="Snapshot"/>
/// borrows the same ones.
/// </remarks>
public sealed class GpuGptPolicy : IGptValueModel
{
    private readonly Accelerator accelerator;
    private readonly IGemm gemm;
    private readonly NvrtcFlashAttention? flashAttention;
    private readonly AdamWSettings optimizer;
    private readonly bool ownsModel;
    private GptBatch? batch;
    private int[] tokenPosition = [];   // flat response token → position in the packed batch
    private float[] positionLogProbs = [], positionEntropies = [], dPosition = [], dPositionEntropy = [];
    // The device weights change at every optimizer step and weight copy; the mirror's weights (and its whole state:
    // weights, gradients, moments) are current when their version agrees with the device's.
    private long deviceVersion, hostWeightsVersion, hostStateVersion;
    // value head: h at each response token's position [tokens, C]; ∂L/∂h at those positions [tokens, C]
    private float[] valueFeatures = [], dValueRows = [];

    /// <summary>The host mirror (current after <see cref="CopyToHost"/>); checkpoints save it.</summary>
    public Gpt Model { get; }

    /// <summary>The device model that is trained.</summary>
    public GpuGpt Device { get; }

    /// <summary>The accelerator the policy trains on.</summary>
    public Accelerator Accelerator => accelerator;

    /// <summary>The value head (on the host), or null when built without one.</summary>
    public ScalarHead? ValueHead { get; }

    /// <summary>Uploads <paramref name="model"/>'s weights and AdamW moments to a new <see cref="GpuGpt"/> on <paramref name="accelerator"/>.</summary>
    /// <param name="model">the host model: initial weights, and from then on the mirror</param>
    /// <param name="gemm">the matrix products, for the same accelerator (<see cref="GpuContext.CreateGemm"/>)</param>
    /// <param name="optimizer">AdamW's hyper-parameters (as for <see cref="GptPolicy"/>)</param>
    /// <param name="flashAttention">when given (CUDA, head size 64), attention runs as its tiled bf16 kernels</param>
    /// <param name="ownsModel">dispose <paramref name="model"/> with the policy</param>
    /// <param name="withValueHead">add a PPO value head (zero-initialised, on the host) as <see cref="GptPolicy"/>'s</param>
    public GpuGptPolicy(Gpt model, Accelerator accelerator, IGemm gemm, AdamWSettings optimizer, NvrtcFlashAttention? flashAttention = null,
                        bool ownsModel = false, bool withValueHead = false)
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
        if (withValueHead) ValueHead = new ScalarHead(model.Config.Channels);
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

    /// <summary>
    /// ln π per response token and, when <paramref name="tokenEntropies"/> is non-empty, the entropy of π(· | prefix) there,
    /// from one <see cref="GpuGpt.Forward"/> over the packed batch.
    /// </summary>
    public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> tokenLogProbs, Span<float> tokenEntropies = default)
    {
        var b = Pack(sequences);
        if (tokenLogProbs.Length != tokenPosition.Length)
            throw new ArgumentException($"the batch has {tokenPosition.Length} response tokens; tokenLogProbs has {tokenLogProbs.Length}");
        if (!tokenEntropies.IsEmpty && tokenEntropies.Length != tokenPosition.Length)
            throw new ArgumentException($"the batch has {tokenPosition.Length} response tokens; tokenEntropies has {tokenEntropies.Length}");
        if (positionLogProbs.Length != b.TokenCount)
        {
            positionLogProbs = new float[b.TokenCount];
            positionEntropies = new float[b.TokenCount];
            dPosition = new float[b.TokenCount];
            dPositionEntropy = new float[b.TokenCount];
        }
        bool withEntropies = !tokenEntropies.IsEmpty;
        Device.Forward(b, positionLogProbs, withEntropies ? positionEntropies : default);
        for (int i = 0; i < tokenPosition.Length; i++)
        {
            tokenLogProbs[i] = positionLogProbs[tokenPosition[i]];
            if (withEntropies) tokenEntropies[i] = positionEntropies[tokenPosition[i]];
        }
    }

    /// <summary>
    /// Scatters ∂L/∂ln π (and ∂L/∂H, when given: the last <see cref="Score"/> must have computed entropies) to the packed
    /// positions and runs <see cref="GpuGpt.Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float})"/>
    /// (accumulates into the device gradients).
    /// </summary>
    public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default)
    {
        if (batch is null) throw new InvalidOperationException("Backward needs a Score first");
        ScatterToPositions(dTokenLogProbs, dTokenEntropies);
        Device.Backward(batch, dPosition, dTokenEntropies.IsEmpty ? default : dPositionEntropy);
    }

    // dPosition (and dPositionEntropy when dTokenEntropies is given) ← the per-token gradients at their packed positions, 0 elsewhere.
    private void ScatterToPositions(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies)
    {
        if (dTokenLogProbs.Length != tokenPosition.Length) throw new ArgumentException($"dTokenLogProbs must have {tokenPosition.Length} entries");
        if (!dTokenEntropies.IsEmpty && dTokenEntropies.Length != tokenPosition.Length)
            throw new ArgumentException($"dTokenEntropies must be empty or have {tokenPosition.Length} entries");
        Array.Clear(dPosition);
        for (int i = 0; i < tokenPosition.Length; i++) dPosition[tokenPosition[i]] = dTokenLogProbs[i];
        if (dTokenEntropies.IsEmpty) return;
        Array.Clear(dPositionEntropy);
        for (int i = 0; i < tokenPosition.Length; i++) dPositionEntropy[tokenPosition[i]] = dTokenEntropies[i];
    }

    /// <summary>
    /// As <see cref="Score"/>, also V(s_t) = w·h_t + b per response token: h_t, the final features at the position that predicts
    /// token t, are gathered on the device and copied to the host, where the head runs (as <see cref="GptPolicy.ScoreWithValues"/>).
    /// </summary>
    public void ScoreWithValues(IReadOnlyList<PromptResponse> sequences, Span<float> tokenLogProbs, Span<float> tokenValues, Span<float> tokenEntropies = default)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this GPU GPT policy was built without a value head");
        Score(sequences, tokenLogProbs, tokenEntropies);
        ReadValues(head, tokenValues);
    }

    /// <summary>
    /// As <see cref="Backward"/>, with the value head's gradient: ∂L/∂w, ∂L/∂b on the host and ∂L/∂h_t = ∂L/∂V_t·w at each
    /// scored position, uploaded as [tokens, C] rows and scattered on the device into the LM head's ∂L/∂h before one transformer
    /// backward (<see cref="GpuGpt.Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{int}, ReadOnlySpan{float})"/>).
    /// </summary>
    public void BackwardWithValues(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenValues, ReadOnlySpan<float> dTokenEntropies = default)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this GPU GPT policy was built without a value head");
        if (batch is null) throw new InvalidOperationException("Backward needs a Score first");
        var rows = ValueFeatureGradient(head, dTokenValues);   // [tokens, C]
        ScatterToPositions(dTokenLogProbs, dTokenEntropies);
        Device.Backward(batch, dPosition, dTokenEntropies.IsEmpty ? default : dPositionEntropy, tokenPosition, rows);
    }

    /// <summary>V(s_t) per response token from the backbone and the head alone (<see cref="GpuGpt.ForwardFeatures"/>, no LM head): a separate value model.</summary>
    public void ScoreValuesOnly(IReadOnlyList<PromptResponse> sequences, Span<float> tokenValues)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this GPU GPT policy was built without a value head");
        var b = Pack(sequences);
        Device.ForwardFeatures(b);
        ReadValues(head, tokenValues);
    }

    /// <summary>Accumulates the gradient given ∂L/∂V per response token of the last <see cref="ScoreValuesOnly"/>: the head on the host, the
    /// backbone through <see cref="GpuGpt.BackwardFeatureRows"/> (only the scored rows of ∂L/∂h are uploaded).</summary>
    public void BackwardValuesOnly(ReadOnlySpan<float> dTokenValues)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this GPU GPT policy was built without a value head");
        if (batch is null) throw new InvalidOperationException("BackwardValuesOnly needs a ScoreValuesOnly first");
        Device.BackwardFeatureRows(batch, tokenPosition, ValueFeatureGradient(head, dTokenValues));
    }

    // valueFeatures [tokens, C] = h at each response token's position (one gathered transfer); tokenValues[t] = w·h_t + b.
    private void ReadValues(ScalarHead head, Span<float> tokenValues)
    {
        int c = Model.Config.Channels, tokens = tokenPosition.Length;
        if (tokenValues.Length != tokens) throw new ArgumentException($"the batch has {tokens} response tokens; tokenValues has {tokenValues.Length}");
        if (valueFeatures.Length != tokens * c) valueFeatures = new float[tokens * c];
        Device.CopyFeaturesToHost(tokenPosition, valueFeatures);
        for (int i = 0; i < tokens; i++) tokenValues[i] = head.Forward(valueFeatures.AsSpan(i * c, c));
    }

    // backward of V_t = w·h_t + b: ∂w += Σ_t ∂V_t·h_t, ∂b += Σ_t ∂V_t (on the head); returns ∂L/∂h_t = ∂V_t·w per scored token [tokens, C].
    private float[] ValueFeatureGradient(ScalarHead head, ReadOnlySpan<float> dTokenValues)
    {
        int c = Model.Config.Channels, tokens = tokenPosition.Length;
        if (dTokenValues.Length != tokens) throw new ArgumentException($"dTokenValues must have {tokens} entries");
        if (valueFeatures.Length != tokens * c) throw new InvalidOperationException("a value backward needs a value forward on the batch first");
        if (dValueRows.Length != tokens * c) dValueRows = new float[tokens * c];
        else Array.Clear(dValueRows);
        for (int i = 0; i < tokens; i++) head.Backward(valueFeatures.AsSpan(i * c, c), dTokenValues[i], dValueRows.AsSpan(i * c, c));
        return dValueRows;
    }

    /// <summary>
    /// Samples on the device: KV-cache decoding on <see cref="GpuGptDecoder"/> over the device weights (fp32 GEMMs), the draws on
    /// the host from the same Philox streams as <see cref="Sampler.Generate"/>. No weights are downloaded.
    /// </summary>
    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) =>
        GpuGptDecoder.Generate(Device, prompts, options, seed);

    public void ZeroGradients()
    {
        Device.ZeroGradients();
        ValueHead?.ZeroGradients();
    }

    /// <summary>
    /// The global gradient norm, and clipping to <paramref name="maxNorm"/> when &gt; 0, on the device (<see cref="GpuGpt.ClipGradients"/>).
    /// With a value head, the norm covers the device gradients and the head's (<see cref="ScalarHead.ClipWith(double, float, out float)"/>:
    /// the device's Σ g² is read back, the one factor scales both), as <see cref="GptPolicy.ClipGradients"/>.
    /// </summary>
    public double ClipGradients(float maxNorm)
    {
        if (ValueHead is null) return Device.ClipGradients(maxNorm).Norm;
        double norm = ValueHead.ClipWith(Device.GradientSumOfSquares(), maxNorm, out float scale);
        if (scale != 1f) Device.ScaleGradients(scale);
        return norm;
    }

    /// <summary>One AdamW step on the device with the CPU policy's settings (weight decay on the matrices only), and of the value head on the host.</summary>
    public void OptimizerStep(int step, float learningRate)
    {
        Device.AdamWStep(step, learningRate, optimizer.Beta1, optimizer.Beta2, optimizer.Epsilon, optimizer.WeightDecay);
        ValueHead?.OptimizerStep(step, learningRate, optimizer);
        deviceVersion++;
    }

    /// <summary>Downloads the gradients and names the first NaN/±Inf element (<see cref="NonFiniteElement.FindFirst"/>), then the value head's.</summary>
    public NonFiniteElement? FirstNonFiniteGradient()
    {
        Device.Synchronize();
        Device.Gradients.CopyToCPU(Model.Gradients);
        return NonFiniteElement.FindFirst(Model.Layout, Model.Gradients) ?? ValueHead?.FirstNonFiniteGradient("value_head.weight", "value_head.bias");
    }

    /// <summary>
    /// A new policy on the same accelerator, GEMM and attention kernels with a copy of the weights and of the value head when there is
    /// one (zero gradients and moments).
    /// </summary>
    public IPolicy Snapshot()
    {
        CopyWeightsToHost();
        var copy = new Gpt(Model.Config);
        try
        {
            Model.Parameters.CopyTo(copy.Parameters);
            var policy = new GpuGptPolicy(copy, accelerator, gemm, optimizer, flashAttention, ownsModel: true, withValueHead: ValueHead is not null);
            ValueHead?.Parameters.CopyTo(policy.ValueHead!.Parameters, 0);
            return policy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Copies the weights (not gradients or moments) from a <see cref="GpuGptPolicy"/> of the same config on the same accelerator,
    /// device to device, and the value head's when both have one.
    /// </summary>
    public void CopyWeightsFrom(IPolicy other)
    {
        if (other is not GpuGptPolicy g || g.Model.Config != Model.Config || !ReferenceEquals(g.accelerator, accelerator))
            throw new ArgumentException($"can only copy from a GPU GPT policy of the same config ({Model.Config}) on the same accelerator");
        if (ReferenceEquals(g, this)) return;
        g.Device.Parameters.CopyTo(Device.Parameters);
        Device.Synchronize();
        if (ValueHead is not null && g.ValueHead is not null) g.ValueHead.Parameters.CopyTo(ValueHead.Parameters, 0);
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
