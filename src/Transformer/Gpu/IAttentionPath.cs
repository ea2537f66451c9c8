using ILGPU;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// How <see cref="GpuGpt"/> runs causal self-attention, chosen once in its constructor: <see cref="MaterialisedAttentionPath"/>
/// (strided-batched GEMMs around a softmax over the stored [B, NH, T, T] probabilities) or <see cref="FlashAttentionPath"/>
/// (tiled bf16 tensor-core kernels that keep only a log-sum-exp per row). Both compute, per batch row and head h,
/// with q, k, v the hs-wide column blocks of qkv [T, 3C] at offsets h·hs, C + h·hs and 2C + h·hs:
/// <code>
///   atty[:, h] = softmax(q·kᵀ/√hs, masked to causal ∧ same segment)·v
/// </code>
/// </summary>
internal interface IAttentionPath
{
    /// <summary>Whether the activations must hold each layer's probabilities "att" [B, NH, T, T] and the scratch "d_att".</summary>
    bool MaterialisesScores { get; }

    /// <summary>atty [B, T, C] from layer <paramref name="layer"/>'s qkv [B, T, 3C]; keeps in <paramref name="s"/> what <see cref="Backward"/> needs.</summary>
    void Forward(GpuActivations s, int layer, ArrayView<float> qkv, ArrayView<float> atty);

    /// <summary>
    /// dQkv [B, T, 3C] += ∂L/∂qkv given dAtty = ∂L/∂atty, after <see cref="Forward"/> of the same layer wrote
    /// <paramref name="qkv"/> and <paramref name="atty"/> (the caller zeroes dQkv first).
    /// </summary>
    void Backward(GpuActivations s, int layer, ArrayView<float> qkv, ArrayView<float> atty, ArrayView<float> dAtty, ArrayView<float> dQkv);
}
