using DistAlign.Kernels.Gpu;
using ILGPU;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// Attention as <see cref="NvrtcFlashAttention"/>'s tiled bf16 tensor-core kernels (CUDA, head size 64): no T×T
/// probabilities are stored; the forward keeps each layer's log-sum-exp "attn_lse" [B, NH, T] and the backward recomputes
/// the probabilities from it, with "attn_delta" [B, NH, T] as scratch (δ = Σ_d dAtty·atty per row and head).
/// </summary>
internal sealed class FlashAttentionPath(NvrtcFlashAttention flash, int heads) : IAttentionPath
{
    public bool MaterialisesScores => false;

    public void Forward(GpuActivations s, int layer, ArrayView<float> qkv, ArrayView<float> atty) =>
        flash.Forward(qkv, s.Segments, s.Rows, s.Length, heads, atty, s.AttentionLogSumExp(layer));

    public void Backward(GpuActivations s, int layer, ArrayView<float> qkv, ArrayView<float> atty, ArrayView<float> dAtty, ArrayView<float> dQkv) =>
        flash.Backward(dAtty, qkv, s.Segments, atty, s.AttentionLogSumExp(layer), s.Rows, s.Length, heads, s["attn_delta"], dQkv);
}
