using DistAlign.Engine.Memory;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Model;
using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// The device activations of one batch shape of <see cref="GpuGpt"/>: <see cref="GptActivations"/>'s plan (same names, same
/// sizes) in one device buffer, plus the attention-gradient scratch d_att [B, NH, T, T] (empty with flash attention, which
/// keeps per-layer log-sum-exps attn_lse [L, B, NH, T] and a delta scratch instead), ∂L/∂logprob and the batch's ids.
/// The LM head's logits go to a buffer of their own, sized by <see cref="GpuSequenceLogProbs.ScratchLength"/>
/// (thousands of padded rows per chunk, not the CPU plan's "logits_chunk", which stays in the plan unused).
/// </summary>
internal sealed class GpuActivations : IDisposable
{
    private readonly MemoryBuffer1D<float, Stride1D.Dense> floats;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> ids;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> logitsScratch;
    private readonly MemoryBuffer1D<ushort, Stride1D.Dense>? halves;
    private readonly Dictionary<string, ArrayView<float>> views = new();
    private readonly Dictionary<string, ArrayView<ushort>> halfViews = new();
    private readonly int heads;

    public int Rows { get; }
    public int Length { get; }
    public ArrayView<int> Tokens { get; }
    public ArrayView<int> Positions { get; }
    public ArrayView<int> Segments { get; }
    public ArrayView<int> Targets { get; }
    public ArrayView<float> LogitsScratch => logitsScratch.View;

    /// <param name="attentionScores">false with flash attention: no [B, NH, T, T] probabilities or their gradient</param>
    /// <param name="bf16Copies">mixed precision: also bf16 copies of each layer's GEMM inputs (ln1, atty, ln2, fch_gelu)
    /// and a bf16 scratch "dy" for the backward's output gradients</param>
    public GpuActivations(Accelerator accelerator, GptConfig config, int rows, int length, bool attentionScores, bool bf16Copies)
    {
        heads = config.Heads;
        Rows = rows;
        Length = length;
        long n = (long)rows * length;
        var builder = new MemoryPlanBuilder();
        var arena = builder.Arena(GptActivations.Arena);
        GptActivations.Plan(arena, config, rows, length, attentionScores);
        arena.Add<float>("d_att", attentionScores ? (long)rows * config.Heads * length * length : 0).Add<float>("d_logprobs", n)
             .Add<float>("d_entropy", n);
        long perLayer = (long)rows * config.Heads * length;   // flash attention's saved log-sum-exp per layer, and its delta scratch
        arena.Add<float>("attn_lse", config.Layers * perLayer).Add<float>("attn_delta", perLayer);
        var plan = builder.Build()[GptActivations.Arena];
        floats = accelerator.Allocate1D<float>(plan.SizeInBytes / sizeof(float));
        foreach (var t in plan.Tensors)
            views[t.Name] = floats.View.SubView(t.ByteOffset / sizeof(float), t.ElementCount);
        floats.MemSetToZero();
        ids = accelerator.Allocate1D<int>(4 * n);
        Tokens = ids.View.SubView(0, n);
        Positions = ids.View.SubView(n, n);
        Segments = ids.View.SubView(2 * n, n);
        Targets = ids.View.SubView(3 * n, n);
        logitsScratch = accelerator.Allocate1D<float>(GpuSequenceLogProbs.ScratchLength((int)n, config.VocabSize));
        if (bf16Copies)
        {
            long c = config.Channels, at = 0;
            var sizes = new List<(string Name, long Length)>();
            for (int l = 0; l < config.Layers; l++)
                sizes.AddRange([($"h.{l}.ln1", n * c), ($"h.{l}.atty", n * c), ($"h.{l}.ln2", n * c), ($"h.{l}.fch_gelu", n * 4 * c)]);
            sizes.Add(("dy", n * 4 * c));
            halves = accelerator.Allocate1D<ushort>(sizes.Sum(x => RoundUp(x.Length)));
            foreach (var (name, count) in sizes)
            {
                halfViews[name] = halves.View.SubView(at, count);
                at += RoundUp(count);   // every copy starts 16-byte aligned, as cuBLAS's fastest kernels want
            }
        }
    }

    private static long RoundUp(long elements) => (elements + 7) / 8 * 8;

    /// <summary>The fp32 activation <paramref name="name"/> of the plan ("h.0.qkv", "d_residual", …).</summary>
    public ArrayView<float> this[string name] => views[name];

    /// <summary>The bf16 copy of activation <paramref name="name"/> (mixed precision), or the "dy" scratch.</summary>
    public ArrayView<ushort> BFloat16(string name) => halfViews[name];

    /// <summary>Layer <paramref name="layer"/>'s attention log-sum-exp [B, NH, T] (flash attention).</summary>
    public ArrayView<float> AttentionLogSumExp(int layer)
    {
        long perLayer = (long)Rows * heads * Length;
        return views["attn_lse"].SubView(layer * perLayer, perLayer);
    }

    public void Dispose()
    {
        floats.Dispose();
        ids.Dispose();
        logitsScratch.Dispose();
        halves?.Dispose();
    }
}

/// <summary>
/// The <see cref="GpuActivations"/> of the batch shapes last used (as <see cref="Gpt.ActivationShapesKept"/> on the CPU):
/// alternating shapes — training and evaluation batches, an aligner's packed rows rounded to powers of two — reuse their
/// buffers instead of freeing and allocating them at every switch; the least recently used beyond the capacity is freed.
/// </summary>
internal sealed class GpuActivationCache(Accelerator accelerator, GptConfig config, int capacity, bool attentionScores, bool bf16Copies)
    : IDisposable
{
    private readonly List<GpuActivations> byRecency = [];

    /// <summary>The buffers of a rows × length batch: a kept one (moved to most recent) or newly allocated.</summary>
    public GpuActivations For(int rows, int length)
    {
        int kept = byRecency.FindIndex(b => b.Rows == rows && b.Length == length);
        GpuActivations buffers;
        if (kept >= 0)
        {
            buffers = byRecency[kept];
            byRecency.RemoveAt(kept);
        }
        else
        {
            if (byRecency.Count == capacity)
            {
                byRecency[0].Dispose();
                byRecency.RemoveAt(0);
            }
            buffers = new GpuActivations(accelerator, config, rows, length, attentionScores, bf16Copies);
        }
        byRecency.Add(buffers);
        return buffers;
    }

    public void Dispose()
    {
        foreach (var buffers in byRecency) buffers.Dispose();
    }
}
