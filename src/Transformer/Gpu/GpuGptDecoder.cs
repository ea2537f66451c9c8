using System.Diagnostics.CodeAnalysis;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Model;
using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// KV-cache decoding on the accelerator of a <see cref="GpuGpt"/>, reading its device weights (no second copy): the math of
/// <see cref="GptDecoder.Step"/> with GpuGpt's kernels (embedding, LayerNorm, GELU, residual), its <see cref="IGemm"/>
/// (cuBLAS on CUDA) and <see cref="GpuCachedAttention"/>. Per step, for the R new tokens at position t:
/// <code>
///   x = wte[token] + wpe[t]
///   per layer: ln1 = LN(x); qkv = ln1·W_attn + b; K[t], V[t] ← k, v; atty = softmax(q·K[0..t]ᵀ/√hs)·V[0..t]
///              x2 = x + atty·W_proj + b; ln2 = LN(x2); x = x2 + gelu(ln2·W_fc + b)·W_fcproj + b
///   logits [R, V] = LN_f(x)·wteᵀ   (tied LM head)
/// </code>
/// then one copy of the logits to a pinned host array (<see cref="Logits"/>; it synchronises). Buffers — the per-layer caches
/// [R, maxT, C], the activations of one position, the scores [R, NH, maxT], the logits, the token and position ids — are
/// allocated once (one float and one int device buffer, two host arrays) for (rows, maxLength); a step allocates no buffer.
/// </summary>
/// <remarks>
/// Precision: the GEMMs are the model's <see cref="IGemm"/> called with its fp32 weights. The mixed-precision path of
/// <see cref="GpuGpt"/> (bf16 weight mirror and activation copies, <c>--gpu-precision bf16</c>) is not used here: with an
/// fp32 or tf32 cuBLAS GEMM the decoder's products are those of that GEMM, and with a <see cref="GemmPrecision.BFloat16"/>
/// GEMM cuBLAS rounds the fp32 operands to bf16 itself (CUBLAS_COMPUTE_32F_FAST_16BF); attention and every reduction
/// stay fp32. The weights must not change while a decode is in progress (the caches hold keys and values of the old ones).
/// </remarks>
public sealed class GpuGptDecoder : IIncrementalDecoder, IDisposable
{
    private readonly GpuGpt model;
    private readonly GpuCachedAttention attention;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> floats;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> ids;
    private readonly ArrayView<float>[] keyCache, valueCache;   // per layer: [R, maxT, C]
    private readonly ArrayView<float> x, residual, ln, mean, rstd, qkv, atty, projection, fch, fchGelu, scores, logits;
    private readonly ArrayView<int> tokenIds, positionIds;
    // pinned (page-locked) host arrays, so the per-step copies are DMA transfers without a staging copy:
    // the ids [tokens R | positions R] going up, the logits [R, V] coming back
    private readonly int[] hostIds;
    private readonly float[] hostLogits;
    private readonly PageLockScope<int> hostIdsLock;
    private readonly PageLockScope<float> hostLogitsLock;
    private bool disposed;

    public int Rows { get; }
    public int MaxLength { get; }
    public int Position { get; private set; }

    /// <summary>Logits [R, V] of the last step, on the host.</summary>
    public ReadOnlySpan<float> Logits => hostLogits;

    /// <summary>A decoder for <paramref name="rows"/> sequences of up to <paramref name="maxLength"/> positions (≤ the model's context).</summary>
    [RequiresDynamicCode(GpuContext.DynamicCodeReason)]
    public GpuGptDecoder(GpuGpt model, int rows, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(model);
        var cfg = model.Config;
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 1);
        if (maxLength > cfg.MaxSequenceLength)
            throw new ArgumentException($"decoding length {maxLength} exceeds the model's context of {cfg.MaxSequenceLength}");
        this.model = model;
        Rows = rows;
        MaxLength = maxLength;
        var accelerator = model.Accelerator;
        attention = model.CachedAttentionKernels;

        long c = cfg.Channels, r = rows, cache = r * maxLength * c;
        var sizes = new List<long>();
        for (int l = 0; l < cfg.Layers; l++) sizes.AddRange([cache, cache]);
        // x, residual, ln, mean, rstd, qkv, atty, projection, fch, fch_gelu, scores, logits
        long[] activations = [r * c, r * c, r * c, r, r, r * 3 * c, r * c, r * c, r * 4 * c, r * 4 * c,
                              GpuCachedAttention.ScratchLength(rows, cfg.Heads, maxLength), r * cfg.VocabSize];
        sizes.AddRange(activations);
        floats = accelerator.Allocate1D<float>(sizes.Sum());
        floats.MemSetToZero();
        long at = 0;
        var views = new List<ArrayView<float>>();
        foreach (long size in sizes)
        {
            views.Add(floats.View.SubView(at, size));
            at += size;
        }
        keyCache = new ArrayView<float>[cfg.Layers];
        valueCache = new ArrayView<float>[cfg.Layers];
        for (int l = 0; l < cfg.Layers; l++) (keyCache[l], valueCache[l]) = (views[2 * l], views[2 * l + 1]);
        int a = 2 * cfg.Layers;
        (x, residual, ln, mean, rstd, qkv) = (views[a], views[a + 1], views[a + 2], views[a + 3], views[a + 4], views[a + 5]);
        (atty, projection, fch, fchGelu, scores, logits) = (views[a + 6], views[a + 7], views[a + 8], views[a + 9], views[a + 10], views[a + 11]);
        ids = accelerator.Allocate1D<int>(2L * rows);
        tokenIds = ids.View.SubView(0, rows);
        positionIds = ids.View.SubView(rows, rows);
        hostIds = GC.AllocateArray<int>(2 * rows, pinned: true);
        hostLogits = GC.AllocateArray<float>(rows * cfg.VocabSize, pinned: true);
        hostIdsLock = accelerator.CreatePageLockFromPinned(hostIds);
        hostLogitsLock = accelerator.CreatePageLockFromPinned(hostLogits);
    }

    /// <summary>Forgets the cache: the next step is position 0.</summary>
    public void Reset() => Position = 0;

    /// <summary>
    /// Feeds tokens[r] at the current position of every row and leaves the next-token logits in <see cref="Logits"/>
    /// (queued on the accelerator's stream; the copy of the logits waits for it).
    /// </summary>
    public void Step(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        var cfg = model.Config;
        int r = Rows, c = cfg.Channels, t = Position;
        if (tokens.Length != r) throw new ArgumentException($"one token per row ({r}) expected, got {tokens.Length}", nameof(tokens));
        if (t >= MaxLength) throw new InvalidOperationException($"the decoder is full: {MaxLength} positions already processed");
        foreach (int id in tokens)
            if ((uint)id >= (uint)cfg.VocabSize) throw new ArgumentException($"token id {id} is outside the vocabulary [0, {cfg.VocabSize})", nameof(tokens));
        var layout = model.Layout;
        var gemm = model.Gemm;
        var layerNorm = model.LayerNormKernels;
        var stream = model.Accelerator.DefaultStream;
        tokens.CopyTo(hostIds);
        hostIds.AsSpan(r).Fill(t);
        ids.View.CopyFromPageLockedAsync(stream, hostIdsLock);   // the last step's synchronisation: the array is free to reuse
        model.EmbeddingKernels.Forward(tokenIds, positionIds, P(layout.Wte, (long)cfg.VocabSize * c), P(layout.Wpe, (long)cfg.MaxSequenceLength * c), c, x);

        for (int l = 0; l < cfg.Layers; l++)
        {
            var o = layout.Blocks[l];
            layerNorm.Forward(x, P(o.Ln1Weight, c), P(o.Ln1Bias, c), ln, mean, rstd);
            gemm.Multiply(false, false, r, 3 * c, c, 1f, ln, c, P(o.AttnWeight, (long)c * 3 * c), 3 * c, 0f, qkv, 3 * c, P(o.AttnBias, 3 * c));
            attention.Append(qkv, r, MaxLength, t, cfg.Heads, keyCache[l], valueCache[l]);
            attention.Forward(qkv, keyCache[l], valueCache[l], r, MaxLength, t, cfg.Heads, atty, scores);
            gemm.Multiply(false, false, r, c, c, 1f, atty, c, P(o.AttnProjWeight, (long)c * c), c, 0f, projection, c, P(o.AttnProjBias, c));
            model.ResidualKernels.Forward(x, projection, residual);
            layerNorm.Forward(residual, P(o.Ln2Weight, c), P(o.Ln2Bias, c), ln, mean, rstd);
            gemm.Multiply(false, false, r, 4 * c, c, 1f, ln, c, P(o.FcWeight, (long)c * 4 * c), 4 * c, 0f, fch, 4 * c, P(o.FcBias, 4 * c));
            model.GeluKernels.Forward(fch, fchGelu);
            gemm.Multiply(false, false, r, c, 4 * c, 1f, fchGelu, 4 * c, P(o.FcProjWeight, 4L * c * c), c, 0f, projection, c, P(o.FcProjBias, c));
            model.ResidualKernels.Forward(residual, projection, x);
        }
        layerNorm.Forward(x, P(layout.LnFWeight, c), P(layout.LnFBias, c), ln, mean, rstd);
        gemm.Multiply(false, true, r, cfg.VocabSize, c, 1f, ln, c, P(layout.Wte, (long)cfg.VocabSize * c), c, 0f, logits, cfg.VocabSize);
        logits.CopyToPageLockedAsync(stream, hostLogitsLock);
        stream.Synchronize();   // the logits are on the host once the step's work and the copy are done
        Position++;
    }

    private ArrayView<float> P(long offset, long length) => model.Parameters.SubView(offset, length);

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        floats.Dispose();
        ids.Dispose();
        hostIdsLock.Dispose();
        hostLogitsLock.Dispose();
    }
}
