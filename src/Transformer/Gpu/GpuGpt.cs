using System.Diagnostics.CodeAnalysis;
using DistAlign.Engine.Distributed;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Model;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// The GPT of <see cref="Gpt"/> on an ILGPU accelerator: the same forward and backward (same parameter
/// layout, same activations, same math), with every op a GPU kernel and every matrix product an
/// <see cref="IGemm"/> call (cuBLAS on CUDA, <see cref="GpuTiledGemm"/> elsewhere). Parameters, gradients,
/// AdamW moments and activations live in device buffers; <see cref="CopyStateFrom"/> and <see cref="CopyStateTo"/>
/// copy the flat buffers from and to a CPU <see cref="Gpt"/>, so checkpoints keep the CPU format. The GPU engine of
/// <see cref="IGptEngine"/>.
/// </summary>
/// <remarks>
/// Two choices are made once, in the constructor, each a strategy: the precision of the linear layers
/// (<see cref="ILinearLayers"/>: fp32 operands through any <see cref="IGemm"/>, or bf16 operands on cuBLAS) and the
/// attention kernels (<see cref="IAttentionPath"/>: GEMMs around a materialised softmax, or flash attention), so the
/// transformer's forward and backward read as <see cref="Gpt"/>'s flat list of ops. The activations of a batch shape are a
/// <see cref="GpuActivations"/>. All work is queued on the accelerator's default stream; only the host copies synchronise.
/// The backbone alone (<see cref="ForwardFeatures"/>, <see cref="CopyFeaturesToHost(ReadOnlySpan{int}, Span{float})"/>,
/// <see cref="BackwardFeatures"/>) serves heads other than the LM head, as <see cref="Gpt.ForwardFeatures"/> does on the CPU.
/// </remarks>
public sealed class GpuGpt : IGptEngine
{
    private readonly Accelerator accelerator;
    private readonly IGemm gemm;
    private readonly GpuLayerNorm layerNorm;
    private readonly IAttentionPath attention;   // materialised scores or flash, chosen once
    private readonly GpuGelu gelu;
    private readonly GpuResidual residual;
    private readonly GpuEmbedding embedding;
    private readonly GpuColumnSum columnSum;
    private readonly GpuSequenceLogProbs lmHead;
    private readonly GpuAdamW adamW;
    private readonly GpuGradientNorm gradientNorm;
    private readonly GpuRowGather rowGather;
    private readonly ILinearLayers linear;        // fp32 or bf16 operands, chosen once
    private readonly MemoryBuffer1D<float, Stride1D.Dense> parameters, gradients, adamM, adamV;
    private readonly MemoryBuffer1D<double, Stride1D.Dense> normPartials, normTotal;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> clipScale;
    private readonly GpuActivationCache activations;
    private GpuActivations? shape;   // the activations of the last batch's shape
    // What the last forward left in `shape`: the backward of each kind needs its own forward (an LM-head backward reads
    // the log-sum-exps that only Forward/ForwardBackward write).
    private LastForward lastForward;
    private bool entropyOfLastForward;   // the last LM-head forward computed entropies (an entropy gradient needs them)
    private enum LastForward { None, Features, LanguageModel }
    // CopyFeaturesToHost's row indices and gathered rows, grown as needed
    private MemoryBuffer1D<int, Stride1D.Dense>? gatherRows;
    private MemoryBuffer1D<float, Stride1D.Dense>? gatheredFeatures;

    public GptConfig Config { get; }
    public ParameterLayout Layout { get; }

    /// <summary>Whether attention runs as <see cref="NvrtcFlashAttention"/> (else the materialised-scores path).</summary>
    public bool UsesFlashAttention => attention is FlashAttentionPath;

    /// <summary>Whether the linear layers multiply bf16 copies of weights and activations (a cuBLAS GEMM at <see cref="GemmPrecision.BFloat16"/>).</summary>
    public bool UsesBFloat16Operands => linear is BFloat16LinearLayers;

    /// <summary>
    /// When set, the wall time of each kind of op (the names of <see cref="Gpt.Profile"/>) is charged to it.
    /// Each lap synchronises the device first, so an attached profile serialises host and device and
    /// slows the step: profile a separate step from the timed ones.
    /// </summary>
    public OpProfile? Profile { get; set; }

    private void Lap(string op)
    {
        if (Profile is null) return;
        accelerator.Synchronize();
        Profile.Lap(op);
    }

    /// <summary>The GEMMs and kernels run on <paramref name="accelerator"/>; <paramref name="gemm"/> must be for the same accelerator.</summary>
    /// <param name="flashAttention">when given and the head size is 64 (<see cref="NvrtcFlashAttention.Supports"/>), attention
    /// runs as its tiled bf16 tensor-core kernels (no T×T scores); otherwise as GEMMs around the materialised softmax.</param>
    [RequiresDynamicCode(GpuContext.DynamicCodeReason)]
    public GpuGpt(Accelerator accelerator, GptConfig config, IGemm gemm, NvrtcFlashAttention? flashAttention = null)
    {
        this.accelerator = accelerator;
        this.gemm = gemm;
        Config = config.Validate();
        Layout = ParameterLayout.For(config);
        layerNorm = new GpuLayerNorm(accelerator);
        attention = flashAttention is not null && NvrtcFlashAttention.Supports(Config.Channels, Config.Heads)
            ? new FlashAttentionPath(flashAttention, Config.Heads)
            : new MaterialisedAttentionPath(gemm, new GpuAttention(accelerator), Config.Channels, Config.Heads);
        gelu = new GpuGelu(accelerator);
        residual = new GpuResidual(accelerator);
        embedding = new GpuEmbedding(accelerator);
        columnSum = new GpuColumnSum(accelerator);
        lmHead = new GpuSequenceLogProbs(accelerator, gemm, new GpuTargetLogProbs(accelerator), NvrtcTargetLogProbs.TryCreate(accelerator)) { Profiler = Lap };   // sub-op laps: no-ops without a Profile
        adamW = new GpuAdamW(accelerator);
        gradientNorm = new GpuGradientNorm(accelerator);
        rowGather = new GpuRowGather(accelerator);
        long total = Layout.TotalElements;
        parameters = accelerator.Allocate1D<float>(total);
        gradients = accelerator.Allocate1D<float>(total);
        adamM = accelerator.Allocate1D<float>(total);
        adamV = accelerator.Allocate1D<float>(total);
        foreach (var b in new[] { parameters, gradients, adamM, adamV }) b.MemSetToZero();
        normPartials = accelerator.Allocate1D<double>((long)Layout.Tensors.Count * gradientNorm.PartialsPerTensor);
        normTotal = accelerator.Allocate1D<double>(1);
        clipScale = accelerator.Allocate1D<float>(1);
        // Mixed precision when the GEMM is cuBLAS at bf16: bf16 operands (a parameter mirror, copies of the GEMM inputs) with
        // fp32 accumulation, outputs and master weights; otherwise fp32 operands through any IGemm.
        linear = gemm is CublasGemm { Precision: GemmPrecision.BFloat16 } cublas
            ? new BFloat16LinearLayers(accelerator, cublas, layerNorm, gelu, columnSum, parameters.View, gradients.View, Lap)
            : new Float32LinearLayers(gemm, layerNorm, gelu, residual, columnSum, parameters.View, gradients.View, Lap);
        activations = new GpuActivationCache(accelerator, Config, ActivationShapesKept, attentionScores: attention.MaterialisesScores,
                                             bf16Copies: linear.KeepsBFloat16Copies);
    }

    // For GpuGptDecoder, which runs the forward one cached position at a time on these weights and kernels.
    internal Accelerator Accelerator => accelerator;
    internal IGemm Gemm => gemm;
    internal GpuLayerNorm LayerNormKernels => layerNorm;
    internal GpuGelu GeluKernels => gelu;
    internal GpuResidual ResidualKernels => residual;
    internal GpuEmbedding EmbeddingKernels => embedding;
    private GpuCachedAttention? cachedAttention;
    /// <summary>The KV-cache attention kernels, loaded at the first decoder and kept for the next ones.</summary>
    internal GpuCachedAttention CachedAttentionKernels => cachedAttention ??= new GpuCachedAttention(accelerator);

    /// <summary>All parameters on the device, flat, in <see cref="Layout"/> order.</summary>
    public ArrayView<float> Parameters => parameters.View;
    /// <summary>Gradients on the device, same layout; backward passes accumulate into them.</summary>
    public ArrayView<float> Gradients => gradients.View;

    /// <summary>Copies parameters and AdamW moments of <paramref name="model"/> (same config) to the device; gradients are zeroed.</summary>
    public void CopyStateFrom(Gpt model)
    {
        CheckSameLayout(model);
        All(parameters).CopyFromCPU(model.Parameters);
        All(adamM).CopyFromCPU(model.AdamM);
        All(adamV).CopyFromCPU(model.AdamV);
        gradients.MemSetToZero();
        accelerator.Synchronize();
    }

    /// <summary>Copies parameters, gradients and AdamW moments back into <paramref name="model"/> (for checkpoints and checks).</summary>
    public void CopyStateTo(Gpt model)
    {
        CheckSameLayout(model);
        accelerator.Synchronize();
        All(parameters).CopyToCPU(model.Parameters);
        All(gradients).CopyToCPU(model.Gradients);
        All(adamM).CopyToCPU(model.AdamM);
        All(adamV).CopyToCPU(model.AdamV);
    }

    private void CheckSameLayout(Gpt model)
    {
        if (model.Config != Config)
            throw new ArgumentException($"the CPU model's config {model.Config} differs from the GPU model's {Config}", nameof(model));
    }

    /// <summary>Zeroes the gradients (the backward accumulates into them).</summary>
    public void ZeroGradients() => gradients.View.MemSetToZero();

    /// <summary>
    /// Forward pass: logProbs[i] = ln π(target_i | its segment's prefix), 0 where the target is −1, and, when
    /// <paramref name="entropy"/> is non-empty, H(π(· | prefix)) at those positions (as <see cref="Gpt.Forward"/>).
    /// Keeps the activations <see cref="Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float})"/> needs.
    /// </summary>
    public void Forward(GptBatch batch, Span<float> logProbs, Span<float> entropy = default)
    {
        var s = Prepare(batch, logProbs.Length);
        if (!entropy.IsEmpty && entropy.Length != batch.TokenCount)
            throw new ArgumentException($"entropy must be empty or have one entry per position ({batch.TokenCount}), got {entropy.Length}");
        TransformerForward(batch, s);
        lastForward = LastForward.LanguageModel;
        entropyOfLastForward = !entropy.IsEmpty;
        lmHead.Forward(s["lnf"], Wte(parameters), s.Targets, Config.Channels, Config.VocabSize, s.LogitsScratch,
                       s["logprobs"], s["logsumexp"], entropyOfLastForward ? s["entropy"] : default);
        s["logprobs"].CopyToCPU(logProbs);
        if (entropyOfLastForward) s["entropy"].CopyToCPU(entropy);
    }

    /// <summary>
    /// Backward after <see cref="Forward"/> on the same batch for ∂L/∂logprob and, when <paramref name="dEntropy"/> is
    /// non-empty, ∂L/∂entropy (the forward must have computed entropies). Accumulates into <see cref="Gradients"/>.
    /// </summary>
    public void Backward(GptBatch batch, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy = default)
    {
        var (s, dLnf) = PrepareHeadBackward(batch, dLogProbs, dEntropy);
        dLnf.MemSetToZero();   // the LM head's backward accumulates onto ∂L/∂h
        HeadAndTransformerBackward(batch, s, dLnf, !dEntropy.IsEmpty);
    }

    /// <summary>
    /// <see cref="Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float})"/> with a second head's ∂L/∂h that is zero
    /// outside S rows (a value head at the scored positions): ∂L/∂h[positions[s], :] = dFeatureRows[s, :], added to the LM
    /// head's before one transformer backward. Uploads S·C floats and S positions (distinct, inside B·T) instead of N·C.
    /// </summary>
    public void Backward(GptBatch batch, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy,
                         ReadOnlySpan<int> featurePositions, ReadOnlySpan<float> dFeatureRows)
    {
        int c = Config.Channels;
        if (dFeatureRows.Length != featurePositions.Length * c)
            throw new ArgumentException($"dFeatureRows must be [S, C] = [{featurePositions.Length}, {c}], got {dFeatureRows.Length}");
        var (s, dLnf) = PrepareHeadBackward(batch, dLogProbs, dEntropy);
        SetFeatureRows(dLnf, batch.TokenCount, featurePositions, dFeatureRows);
        HeadAndTransformerBackward(batch, s, dLnf, !dEntropy.IsEmpty);
    }

    // Checks and uploads the LM head's output gradients; returns the activations and ∂L/∂h (to be initialised by the caller).
    private (GpuActivations S, ArrayView<float> DLnf) PrepareHeadBackward(GptBatch batch, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy)
    {
        RequireForward(batch, LastForward.LanguageModel, "Backward");
        var s = Prepare(batch, dLogProbs.Length);
        if (!dEntropy.IsEmpty)
        {
            if (!entropyOfLastForward)
                throw new InvalidOperationException("an entropy gradient needs a Forward that computed entropies on this batch");
            if (dEntropy.Length != batch.TokenCount)
                throw new ArgumentException($"dEntropy must be empty or have one entry per position ({batch.TokenCount}), got {dEntropy.Length}");
            s["d_entropy"].CopyFromCPU(dEntropy);
        }
        s["d_logprobs"].CopyFromCPU(dLogProbs);
        return (s, s["d_ln"]);
    }

    private void HeadAndTransformerBackward(GptBatch batch, GpuActivations s, ArrayView<float> dLnf, bool withEntropy)
    {
        lmHead.Backward(s["lnf"], Wte(parameters), s.Targets, Config.Channels, Config.VocabSize, s["logsumexp"],
                        withEntropy ? s["entropy"] : default, s["d_logprobs"], withEntropy ? s["d_entropy"] : default,
                        s.LogitsScratch, dLnf, Wte(gradients));
        TransformerBackward(batch, s);
    }

    /// <summary>Forward and backward with one logits GEMM per chunk (as <see cref="Gpt.ForwardBackward"/>); accumulates into <see cref="Gradients"/>.</summary>
    public void ForwardBackward(GptBatch batch, ReadOnlySpan<float> dLogProbs, Span<float> logProbs)
    {
        Profile?.Restart();
        var s = Prepare(batch, logProbs.Length);
        if (dLogProbs.Length != logProbs.Length)
            throw new ArgumentException($"dLogProbs must have one entry per position ({batch.TokenCount}), got {dLogProbs.Length}");
        s["d_logprobs"].CopyFromCPU(dLogProbs);
        Lap("batch upload");
        TransformerForward(batch, s);
        lastForward = LastForward.LanguageModel;
        entropyOfLastForward = false;
        var dLnf = s["d_ln"];
        dLnf.MemSetToZero();
        lmHead.ForwardBackward(s["lnf"], Wte(parameters), s.Targets, Config.Channels, Config.VocabSize, s["d_logprobs"], default,
                               s.LogitsScratch, s["logprobs"], s["logsumexp"], default, dLnf, Wte(gradients));
        Lap("lm head fwd+bwd");
        TransformerBackward(batch, s);
        s["logprobs"].CopyToCPU(logProbs);
        Lap("logprobs download");
    }

    /// <summary>
    /// The backbone alone, for heads other than the tied LM head (a reward model's scalar head), as
    /// <see cref="Gpt.ForwardFeatures"/>: runs the transformer forward and leaves h = ln_f(x) [N, C] on the device
    /// (read it with <see cref="CopyFeaturesToHost(ReadOnlySpan{int}, Span{float})"/>); no logits are computed.
    /// Targets are uploaded but not used. Keeps what <see cref="BackwardFeatures"/> needs; an LM-head
    /// <see cref="Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float})"/> needs a <see cref="Forward"/> instead.
    /// </summary>
    public void ForwardFeatures(GptBatch batch)
    {
        var s = Prepare(batch, batch.TokenCount);
        TransformerForward(batch, s);
        lastForward = LastForward.Features;
    }

    /// <summary>
    /// destination [S, C] = h[positions[s], :], the final hidden states of the last forward (<see cref="ForwardFeatures"/>
    /// or <see cref="Forward"/>) at S flat positions (b·T + t): gathered on the device and copied back in one transfer
    /// (S·C floats rather than N·C: a reward model reads one row per sequence). Synchronises.
    /// </summary>
    public void CopyFeaturesToHost(ReadOnlySpan<int> positions, Span<float> destination)
    {
        var s = shape;
        if (s is null || lastForward == LastForward.None) throw new InvalidOperationException("CopyFeaturesToHost needs a forward first");
        int c = Config.Channels;
        if (destination.Length != positions.Length * c)
            throw new ArgumentException($"destination must be [S, C] = [{positions.Length}, {c}], got {destination.Length}");
        if (positions.IsEmpty) return;
        var (rows, gathered) = UploadRows(positions, s.Rows * s.Length, distinct: false);
        rowGather.Gather(s["lnf"], rows, c, gathered);
        gathered.CopyToCPU(destination);
    }

    // The S positions on the device (checked: inside [0, N), and distinct when they are scatter targets) and an [S, C] scratch.
    private (ArrayView<int> Rows, ArrayView<float> Values) UploadRows(ReadOnlySpan<int> positions, int n, bool distinct)
    {
        for (int i = 0; i < positions.Length; i++)
            if ((uint)positions[i] >= (uint)n)
                throw new ArgumentOutOfRangeException(nameof(positions), $"position {i} is {positions[i]}, outside the forward's {n} positions (B·T)");
        if (distinct && new HashSet<int>(positions.ToArray()).Count != positions.Length)
            throw new ArgumentException("positions must be distinct (each row of ∂L/∂h is written once)", nameof(positions));
        int c = Config.Channels;
        if (gatherRows is null || gatherRows.Length < positions.Length)
        {
            gatherRows?.Dispose();
            gatheredFeatures?.Dispose();
            gatherRows = accelerator.Allocate1D<int>(positions.Length);
            gatheredFeatures = accelerator.Allocate1D<float>((long)positions.Length * c);
        }
        ArrayView<int> rows = gatherRows.View.SubView(0, positions.Length);
        ArrayView<float> values = gatheredFeatures!.View.SubView(0, (long)positions.Length * c);
        rows.CopyFromCPU(positions);
        return (rows, values);
    }

    /// <summary>destination [N, C] = h = ln_f(x) of the last forward, all of it (one transfer; synchronises).</summary>
    public void CopyFeaturesToHost(Span<float> destination)
    {
        var s = shape;
        if (s is null || lastForward == LastForward.None) throw new InvalidOperationException("CopyFeaturesToHost needs a forward first");
        var lnf = s["lnf"];
        if (destination.Length != lnf.Length)
            throw new ArgumentException($"destination must be [N, C] = [{s.Rows * s.Length}, {Config.Channels}], got {destination.Length}");
        lnf.CopyToCPU(destination);
    }

    /// <summary>
    /// Backward of <see cref="ForwardFeatures"/> (or of <see cref="Forward"/>, the LM head left out): given ∂L/∂h [N, C]
    /// for the batch of the last forward, uploads it as the ln_f output's gradient and ACCUMULATES (+=) ∂L/∂θ into
    /// <see cref="Gradients"/> through the transformer backward, as <see cref="Gpt.BackwardFeatures"/>. wte gets
    /// gradient only through the embedding lookup.
    /// </summary>
    public void BackwardFeatures(GptBatch batch, ReadOnlySpan<float> dFeatures)
    {
        if (dFeatures.Length != batch.TokenCount * Config.Channels)
            throw new ArgumentException($"dFeatures must be [N, C] = [{batch.TokenCount}, {Config.Channels}] ({batch.TokenCount * Config.Channels} floats), got {dFeatures.Length}");
        RequireForward(batch, LastForward.Features, "BackwardFeatures");
        Profile?.Restart();
        var s = Prepare(batch, batch.TokenCount);
        s["d_ln"].CopyFromCPU(dFeatures);
        TransformerBackward(batch, s);
    }

    /// <summary>
    /// <see cref="BackwardFeatures"/> for a ∂L/∂h that is zero outside S rows (a head on chosen positions: a reward model's
    /// last tokens): ∂L/∂h[positions[s], :] = dRows[s, :], every other row 0. Uploads the S·C floats and the S positions
    /// (distinct, inside the forward's B·T) instead of N·C; the result is the same as the dense call's.
    /// </summary>
    public void BackwardFeatureRows(GptBatch batch, ReadOnlySpan<int> positions, ReadOnlySpan<float> dRows)
    {
        int c = Config.Channels;
        if (dRows.Length != positions.Length * c)
            throw new ArgumentException($"dRows must be [S, C] = [{positions.Length}, {c}], got {dRows.Length}");
        RequireForward(batch, LastForward.Features, "BackwardFeatureRows");
        Profile?.Restart();
        var s = Prepare(batch, batch.TokenCount);
        SetFeatureRows(s["d_ln"], batch.TokenCount, positions, dRows);
        TransformerBackward(batch, s);
    }

    // dLnf [N, C] ← 0, then row positions[s] ← dRows[s, :] (uploaded S·C floats, scattered on the device).
    private void SetFeatureRows(ArrayView<float> dLnf, int n, ReadOnlySpan<int> positions, ReadOnlySpan<float> dRows)
    {
        dLnf.MemSetToZero();
        if (positions.IsEmpty) return;
        var (rows, values) = UploadRows(positions, n, distinct: true);
        values.CopyFromCPU(dRows);
        rowGather.Scatter(values, rows, Config.Channels, dLnf);
    }

    // A backward reads the activations of the last forward: same shape (else Prepare would reallocate them), and an
    // LM-head backward needs the log-sum-exps only an LM-head forward writes.
    private void RequireForward(GptBatch batch, LastForward needed, string what)
    {
        bool sameShape = shape is not null && shape.Rows == batch.Rows && shape.Length == batch.Length;
        bool ok = sameShape && (needed == LastForward.Features ? lastForward != LastForward.None : lastForward == LastForward.LanguageModel);
        if (!ok)
            throw new InvalidOperationException(needed == LastForward.Features
                ? $"{what} needs a ForwardFeatures (or Forward) on a batch of this shape ({batch.Rows}×{batch.Length}) first"
                : $"{what} needs a Forward on a batch of this shape ({batch.Rows}×{batch.Length}) first (after ForwardFeatures there are no LM-head activations)");
    }

    /// <summary>
    /// Σ g² over all gradients (the fp64 fixed-tree reduction of <see cref="ClipGradients"/>), read back to the host
    /// (one synchronisation): for a global norm that also covers parameters kept elsewhere (a reward model's host head).
    /// </summary>
    public double GradientSumOfSquares()
    {
        QueueGradientSumOfSquares();
        return normTotal.GetAsArray1D()[0];
    }

    /// <summary>g ← factor·g for every gradient (a clip factor computed on the host).</summary>
    private float[]? hostGradients;   // staging for an all-reduce through host memory (accelerators other than CUDA)

    /// <summary>
    /// Sums the gradients over the ranks. On a CUDA device through NCCL, in place in device memory, enqueued on this
    /// engine's stream (so the clip and AdamW kernels after it see the sum; <see cref="DeviceCollectives"/> joins the
    /// ranks once per accelerator). On another accelerator (ILGPU's CPU simulator) through host memory: download, the
    /// group's all-reduce (MPI), upload.
    /// </summary>
    /// <exception cref="Engine.Cuda.CudaUnavailableException">A multi-rank run on CUDA without NCCL installed.</exception>
    public void AllReduceGradients(IProcessGroup group, string purpose)
    {
        if (group.Size == 1) return;
        Profile?.Restart();
        if (accelerator is CudaAccelerator cuda)
        {
            var nccl = DeviceCollectives.For(cuda, group);
            nccl.AllReduceSum((ulong)gradients.NativePtr, gradients.Length, ((CudaStream)accelerator.DefaultStream).StreamPtr, purpose);
            nccl.ThrowIfFailed(purpose);
        }
        else
        {
            hostGradients ??= new float[gradients.Length];
            accelerator.Synchronize();
            All(gradients).CopyToCPU(hostGradients);
            group.AllReduceSum(hostGradients, purpose);
            All(gradients).CopyFromCPU(hostGradients);
        }
        Lap("all-reduce");
    }

    public void ScaleGradients(float factor)
    {
        clipScale.View.CopyFromCPU(new[] { factor });
        gradientNorm.Scale(gradients.View, clipScale.View);
    }

    private void QueueGradientSumOfSquares()
    {
        normPartials.MemSetToZero();
        var p = normPartials.View.SubView(0, gradientNorm.PartialsPerTensor);
        gradientNorm.PartialSumsOfSquares(gradients.View, p);
        gradientNorm.SumPartials(p, normTotal.View);
    }

    /// <summary>
    /// The global gradient norm and, when <paramref name="maxNorm"/> &gt; 0, clipping to it (as
    /// <see cref="GradientNorm.ClipByGlobalNorm(Span{float}, float)"/>: one factor for all gradients, none when the norm is not finite).
    /// Reads the norm back to the host (one synchronisation).
    /// </summary>
    public GradientClip ClipGradients(float maxNorm)
    {
        Profile?.Restart();
        QueueGradientSumOfSquares();
        float scale = 1f;
        if (maxNorm > 0)
        {
            gradientNorm.ClipScale(normTotal.View, maxNorm, clipScale.View);
            gradientNorm.Scale(gradients.View, clipScale.View);
            scale = clipScale.GetAsArray1D()[0];
        }
        Lap("gradient clip");
        return new GradientClip(Math.Sqrt(normTotal.GetAsArray1D()[0]), scale);
    }

    /// <summary>
    /// One AdamW step over every tensor, weight decay on the matrices only (linear weights and embeddings),
    /// as <c>AdamWOptimizer.Step</c> on the CPU.
    /// </summary>
    /// <param name="step">1-based optimizer step (for bias correction)</param>
    public void AdamWStep(int step, float learningRate, AdamWSettings settings)
    {
        Profile?.Restart();
        foreach (var t in Layout.Tensors)
        {
            float decay = t.Shape.Length >= 2 ? settings.WeightDecay : 0f;
            adamW.Step(Slice(parameters, t.Offset, t.Length), Slice(gradients, t.Offset, t.Length),
                       Slice(adamM, t.Offset, t.Length), Slice(adamV, t.Offset, t.Length),
                       step, learningRate, settings.Beta1, settings.Beta2, settings.Epsilon, decay);
        }
        Lap("adamw");
    }

    /// <summary>Downloads the gradients and names the first NaN/±Inf element.</summary>
    public NonFiniteElement? FirstNonFiniteGradient() => NonFiniteElement.FindFirst(Layout, Download(gradients));

    /// <summary>Downloads the parameters and names the first NaN/±Inf element.</summary>
    public NonFiniteElement? FirstNonFiniteParameter() => NonFiniteElement.FindFirst(Layout, Download(parameters));

    private float[] Download(MemoryBuffer1D<float, Stride1D.Dense> buffer)
    {
        accelerator.Synchronize();
        return buffer.GetAsArray1D();
    }

    /// <summary>destination = the device parameters (synchronises).</summary>
    public void CopyParametersToHost(Span<float> destination)
    {
        accelerator.Synchronize();
        All(parameters).CopyToCPU(destination);
    }

    /// <summary>The parameters ← <paramref name="source"/>'s: device to device from a GPU engine on this accelerator, else through the host.</summary>
    public void CopyParametersFrom(IGptEngine source)
    {
        if (source.Config != Config)
            throw new ArgumentException($"the source's config {source.Config} differs from this one's {Config}", nameof(source));
        if (ReferenceEquals(source, this)) return;
        if (source is GpuGpt g && ReferenceEquals(g.accelerator, accelerator)) g.parameters.View.CopyTo(parameters.View);
        else
        {
            var host = new float[Layout.TotalElements];
            source.CopyParametersToHost(host);
            parameters.View.CopyFromCPU(host);
        }
        accelerator.Synchronize();
    }

    /// <summary>A <see cref="GpuGptDecoder"/> over the device weights.</summary>
    [UnconditionalSuppressMessage("AOT", "IL3050", Justification = "a GpuGpt exists only through its RequiresDynamicCode constructor")]
    public IIncrementalDecoder CreateDecoder(int rows, int maxLength) => new GpuGptDecoder(this, rows, maxLength);

    /// <summary>Waits for all queued device work.</summary>
    public void Synchronize() => accelerator.Synchronize();


    // ---------------------------------------------------------------------------------------------
    // forward: as Gpt's, one kernel (or strategy call) per op. Per block, with x the residual stream:
    //   ln1 = LN(x); qkv = ln1·W_attn + b; atty = softmax(q·kᵀ/√hs, causal ∧ same segment)·v per head
    //   x2 = x + atty·W_proj + b; ln2 = LN(x2); fch = ln2·W_fc + b; x3 = x2 + gelu(fch)·W_fcproj + b
    // The precision of the linear layers (and where LN and GELU write their GEMM inputs) is `linear`'s; the attention
    // kernels are `attention`'s; both chosen in the constructor.
    // ---------------------------------------------------------------------------------------------
    private void TransformerForward(GptBatch batch, GpuActivations s)
    {
        int n = batch.TokenCount, c = Config.Channels;
        var encoded = s["encoded"];
        Profile?.Restart();
        linear.BeginForward();
        embedding.Forward(s.Tokens, s.Positions, Wte(parameters), Slice(parameters, Layout.Wpe, (long)Config.MaxSequenceLength * c), c, encoded);
        Lap("embedding fwd");
        var x = encoded;
        for (int l = 0; l < Config.Layers; l++)
        {
            var o = Layout.Blocks[l];
            string a = $"h.{l}.";
            var qkv = s[a + "qkv"];
            var atty = s[a + "atty"];
            var residual2 = s[a + "residual2"];
            var fch = s[a + "fch"];
            var residual3 = s[a + "residual3"];

            linear.LayerNormForward(x, P(o.Ln1Weight, c), P(o.Ln1Bias, c), s, a + "ln1");
            Lap("layernorm fwd");
            linear.Forward(s, a + "ln1", o.AttnWeight, o.AttnBias, qkv, n, c, 3 * c);
            Lap("matmul fwd");
            attention.Forward(s, l, qkv, atty);
            Lap("attention fwd");
            linear.ProjectionWithResidual(s, a + "atty", LinearInputSource.Float32, o.AttnProjWeight, o.AttnProjBias, x, residual2, n, c, c);
            Lap("residual fwd");   // the projection's GEMM was charged to "matmul fwd"
            linear.LayerNormForward(residual2, P(o.Ln2Weight, c), P(o.Ln2Bias, c), s, a + "ln2");
            Lap("layernorm fwd");
            linear.Forward(s, a + "ln2", o.FcWeight, o.FcBias, fch, n, c, 4 * c);
            Lap("matmul fwd");
            linear.GeluForward(fch, s, a + "fch_gelu");
            Lap("gelu fwd");
            linear.ProjectionWithResidual(s, a + "fch_gelu", LinearInputSource.Producer, o.FcProjWeight, o.FcProjBias, residual2, residual3, n, 4 * c, c);
            Lap("residual fwd");
            x = residual3;
        }
        layerNorm.Forward(x, P(Layout.LnFWeight, c), P(Layout.LnFBias, c), s["lnf"], s["lnf_mean"], s["lnf_rstd"]);   // fp32: the heads read h
        Lap("layernorm fwd");
    }

    // ---------------------------------------------------------------------------------------------
    // backward: the forward's calls in reverse; d_residual carries ∂L/∂(residual stream) and each LayerNorm
    // backward adds into it (the residual connection's backward), exactly as Gpt.TransformerBackward. Each linear
    // backward overwrites its dx (every dx here has that one producer) and accumulates into dW and db.
    // ---------------------------------------------------------------------------------------------
    private void TransformerBackward(GptBatch batch, GpuActivations s)
    {
        int n = batch.TokenCount, c = Config.Channels;
        var dResidual = s["d_residual"];
        var dLn = s["d_ln"];
        var dAtty = s["d_atty"];
        var dQkv = s["d_qkv"];
        var dFch = s["d_fch"];
        var dFchGelu = s["d_fch_gelu"];

        var lastResidual = Config.Layers > 0 ? s[$"h.{Config.Layers - 1}.residual3"] : s["encoded"];
        dResidual.MemSetToZero();
        layerNorm.Backward(dLn, lastResidual, P(Layout.LnFWeight, c), s["lnf_mean"], s["lnf_rstd"],
                           dResidual, G(Layout.LnFWeight, c), G(Layout.LnFBias, c));
        Lap("layernorm bwd");

        for (int l = Config.Layers - 1; l >= 0; l--)
        {
            var o = Layout.Blocks[l];
            string a = $"h.{l}.";
            var x = l == 0 ? s["encoded"] : s[$"h.{l - 1}.residual3"];

            // MLP: residual3 = residual2 + fc_proj(gelu(fc(ln_2(residual2))))
            linear.Backward(s, dResidual, a + "fch_gelu", o.FcProjWeight, o.FcProjBias, dFchGelu, n, 4 * c, c);
            Lap("matmul bwd");
            gelu.Backward(dFchGelu, s[a + "fch"], dFch, accumulate: false);
            Lap("gelu bwd");
            linear.Backward(s, dFch, a + "ln2", o.FcWeight, o.FcBias, dLn, n, c, 4 * c);
            Lap("matmul bwd");
            layerNorm.Backward(dLn, s[a + "residual2"], P(o.Ln2Weight, c), s[a + "ln2_mean"], s[a + "ln2_rstd"],
                               dResidual, G(o.Ln2Weight, c), G(o.Ln2Bias, c));
            Lap("layernorm bwd");

            // attention: residual2 = residual + attn_proj(attention(qkv(ln_1(residual))))
            linear.Backward(s, dResidual, a + "atty", o.AttnProjWeight, o.AttnProjBias, dAtty, n, c, c);
            Lap("matmul bwd");
            dQkv.MemSetToZero();
            attention.Backward(s, l, s[a + "qkv"], s[a + "atty"], dAtty, dQkv);
            Lap("attention bwd");
            linear.Backward(s, dQkv, a + "ln1", o.AttnWeight, o.AttnBias, dLn, n, c, 3 * c);
            Lap("matmul bwd");
            layerNorm.Backward(dLn, x, P(o.Ln1Weight, c), s[a + "ln1_mean"], s[a + "ln1_rstd"],
                               dResidual, G(o.Ln1Weight, c), G(o.Ln1Bias, c));
            Lap("layernorm bwd");
        }

        embedding.Backward(dResidual, c, Wte(gradients), Slice(gradients, Layout.Wpe, (long)Config.MaxSequenceLength * c));
        Lap("embedding bwd");
    }

    private ArrayView<float> P(long offset, long length) => Slice(parameters, offset, length);
    private ArrayView<float> G(long offset, long length) => Slice(gradients, offset, length);
    private ArrayView<float> Wte(MemoryBuffer1D<float, Stride1D.Dense> buffer) => Slice(buffer, Layout.Wte, (long)Config.VocabSize * Config.Channels);
    private static ArrayView<float> All(MemoryBuffer1D<float, Stride1D.Dense> buffer) => buffer.View;
    private static ArrayView<float> Slice(MemoryBuffer1D<float, Stride1D.Dense> buffer, long offset, long length) => buffer.View.SubView(offset, length);

    private GpuActivations Prepare(GptBatch batch, int vectorLength)
    {
        batch.Validate(Config);
        if (vectorLength != batch.TokenCount)
            throw new ArgumentException($"log-prob vectors must have one entry per position ({batch.TokenCount}), got {vectorLength}");
        if (shape is null || shape.Rows != batch.Rows || shape.Length != batch.Length)
        {
            lastForward = LastForward.None;   // the activations in the buffers of another shape are not the last forward's
            shape = activations.For(batch.Rows, batch.Length);
        }
        shape.Tokens.CopyFromCPU(batch.Tokens);
        shape.Positions.CopyFromCPU(batch.Positions);
        embedding.SetBatch(batch.Tokens, batch.Positions);
        shape.Segments.CopyFromCPU(batch.Segments);
        shape.Targets.CopyFromCPU(batch.Targets);
        return shape;
    }

    /// <summary>
    /// Batch shapes whose device activations are kept (as <see cref="Gpt.ActivationShapesKept"/> on the CPU): alternating
    /// shapes — training and evaluation batches, an aligner's packed rows rounded to powers of two — reuse their buffers
    /// instead of freeing and allocating them at every switch; the least recently used beyond this is freed.
    /// </summary>
    public const int ActivationShapesKept = 4;

    public void Dispose()
    {
        activations.Dispose();
        gatherRows?.Dispose();
        gatheredFeatures?.Dispose();
        linear.Dispose();
        lmHead.Dispose();
        layerNorm.Dispose();
        embedding.Dispose();
        columnSum.Dispose();
        foreach (var b in new[] { parameters, gradients, adamM, adamV, clipScale }) b.Dispose();
        normPartials.Dispose();
        normTotal.Dispose();
    }
}
