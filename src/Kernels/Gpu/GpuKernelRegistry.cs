using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>One GPU kernel entry point and how it is launched.</summary>
/// <param name="Method">The static kernel method.</param>
/// <param name="ExplicitlyGrouped">True for KernelConfig launches (Group/Grid indices, shared memory).</param>
internal sealed record GpuKernelInfo(MethodInfo Method, bool ExplicitlyGrouped)
{
    public string Name => $"{Method.DeclaringType!.Name}.{Method.Name}";
}

/// <summary>
/// Every GPU kernel in this namespace, in one list: the PTX compile test walks it, and a reflection test
/// checks that no kernel method is missing from it.
/// </summary>
internal static class GpuKernelRegistry
{
    public static IReadOnlyList<GpuKernelInfo> All { get; } =
    [
        Implicit(typeof(GpuEmbedding), nameof(GpuEmbedding.ForwardKernel)),
        Implicit(typeof(GpuEmbedding), nameof(GpuEmbedding.BackwardGroupKernel)),
        Implicit(typeof(GpuColumnSum), nameof(GpuColumnSum.PartialsKernel)),
        Implicit(typeof(GpuColumnSum), nameof(GpuColumnSum.SumPartialsKernel)),
        Explicit(typeof(GpuLayerNorm), nameof(GpuLayerNorm.ForwardKernel)),
        Explicit(typeof(GpuLayerNorm), nameof(GpuLayerNorm.ForwardToBFloat16Kernel)),
        Explicit(typeof(GpuLayerNorm), nameof(GpuLayerNorm.BackwardInputKernel)),
        Implicit(typeof(GpuLayerNorm), nameof(GpuLayerNorm.BackwardParameterPartialsKernel)),
        Implicit(typeof(GpuGelu), nameof(GpuGelu.ForwardKernel)),
        Implicit(typeof(GpuGelu), nameof(GpuGelu.ForwardToBFloat16Kernel)),
        Implicit(typeof(GpuGelu), nameof(GpuGelu.BackwardKernel)),
        Implicit(typeof(GpuGelu), nameof(GpuGelu.BackwardOverwriteKernel)),
        Implicit(typeof(GpuResidual), nameof(GpuResidual.ForwardKernel)),
        Implicit(typeof(GpuResidual), nameof(GpuResidual.BackwardKernel)),
        Implicit(typeof(GpuRowGather), nameof(GpuRowGather.GatherKernel)),
        Implicit(typeof(GpuRowGather), nameof(GpuRowGather.ScatterKernel)),
        Explicit(typeof(GpuAttention), nameof(GpuAttention.SoftmaxForwardKernel)),
        Explicit(typeof(GpuAttention), nameof(GpuAttention.SoftmaxBackwardKernel)),
        Implicit(typeof(GpuAttention), nameof(GpuAttention.ForwardKernel)),
        Implicit(typeof(GpuAttention), nameof(GpuAttention.BackwardQueryKernel)),
        Implicit(typeof(GpuAttention), nameof(GpuAttention.BackwardKeyValueKernel)),
        Implicit(typeof(GpuCachedAttention), nameof(GpuCachedAttention.AppendKernel)),
        Explicit(typeof(GpuCachedAttention), nameof(GpuCachedAttention.ForwardKernel)),
        Implicit(typeof(GpuAdamW), nameof(GpuAdamW.StepKernel)),
        Explicit(typeof(GpuGradientNorm), nameof(GpuGradientNorm.PartialsKernel)),
        Explicit(typeof(GpuGradientNorm), nameof(GpuGradientNorm.SumKernel)),
        Implicit(typeof(GpuGradientNorm), nameof(GpuGradientNorm.ClipScaleKernel)),
        Implicit(typeof(GpuGradientNorm), nameof(GpuGradientNorm.ScaleKernel)),
        Explicit(typeof(GpuTargetLogProbs), nameof(GpuTargetLogProbs.ForwardKernel)),
        Implicit(typeof(GpuTargetLogProbs), nameof(GpuTargetLogProbs.BackwardKernel)),
        Implicit(typeof(GpuTargetLogProbs), nameof(GpuTargetLogProbs.BackwardToBFloat16Kernel)),
        Explicit(typeof(GpuTiledGemm), nameof(GpuTiledGemm.Kernel)),
        Explicit(typeof(GpuSequenceLogProbs), nameof(GpuSequenceLogProbs.EntropyKernel)),
        Implicit(typeof(GpuSequenceLogProbs), nameof(GpuSequenceLogProbs.GradientKernel)),
        Implicit(typeof(GpuSequenceLogProbs), nameof(GpuSequenceLogProbs.GradientToBFloat16Kernel)),
        Implicit(typeof(GpuSequenceLogProbs), nameof(GpuSequenceLogProbs.SumBySequenceKernel)),
        Implicit(typeof(GpuSequenceLogProbs), nameof(GpuSequenceLogProbs.ScatterBySequenceKernel)),
        Implicit(typeof(GpuPairwiseBradleyTerryLoss), nameof(GpuPairwiseBradleyTerryLoss.PairKernel)),
        Implicit(typeof(GpuPairwiseBradleyTerryLoss), nameof(GpuPairwiseBradleyTerryLoss.ReduceKernel)),
        Implicit(typeof(GpuPairwiseBradleyTerryLoss), nameof(GpuPairwiseBradleyTerryLoss.ScatterKernel)),
        Implicit(typeof(GpuBFloat16), nameof(GpuBFloat16.ToBFloat16Kernel)),
        Implicit(typeof(GpuBFloat16), nameof(GpuBFloat16.ToFloatKernel)),
    ];

    private const DynamicallyAccessedMemberTypes KernelMethods = DynamicallyAccessedMemberTypes.PublicMethods | DynamicallyAccessedMemberTypes.NonPublicMethods;

    private static GpuKernelInfo Implicit([DynamicallyAccessedMembers(KernelMethods)] Type type, string name) => new(Find(type, name), false);
    private static GpuKernelInfo Explicit([DynamicallyAccessedMembers(KernelMethods)] Type type, string name) => new(Find(type, name), true);

    private static MethodInfo Find([DynamicallyAccessedMembers(KernelMethods)] Type type, string name) =>
        type.GetMethod(name, BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic)
        ?? throw new InvalidOperationException($"Kernel {type.Name}.{name} not found.");
}

/// <summary>
/// All GPU ops for one accelerator, each with its kernels loaded (compiled) once at construction.
/// Create one per accelerator and keep it; the ops launch on the accelerator's default stream. The scratch
/// buffers some ops own are freed with the accelerator.
/// </summary>
public sealed class GpuKernels
{
    public GpuKernels(Accelerator accelerator)
    {
        Accelerator = accelerator;
        Embedding = new GpuEmbedding(accelerator);
        LayerNorm = new GpuLayerNorm(accelerator);
        ColumnSum = new GpuColumnSum(accelerator);
        Gelu = new GpuGelu(accelerator);
        Residual = new GpuResidual(accelerator);
        Attention = new GpuAttention(accelerator);
        CachedAttention = new GpuCachedAttention(accelerator);
        AdamW = new GpuAdamW(accelerator);
        GradientNorm = new GpuGradientNorm(accelerator);
        TargetLogProbs = new GpuTargetLogProbs(accelerator);
        Gemm = GpuContext.CreateGemm(accelerator);
        SequenceLogProbs = new GpuSequenceLogProbs(accelerator, Gemm, TargetLogProbs);
    }

    public Accelerator Accelerator { get; }
    public GpuEmbedding Embedding { get; }
    public GpuLayerNorm LayerNorm { get; }
    /// <summary>Deterministic column sums (bias gradients).</summary>
    public GpuColumnSum ColumnSum { get; }
    public GpuGelu Gelu { get; }
    public GpuResidual Residual { get; }
    public GpuAttention Attention { get; }
    /// <summary>KV-cache attention of one new position per row (decoding).</summary>
    public GpuCachedAttention CachedAttention { get; }
    public GpuAdamW AdamW { get; }
    public GpuGradientNorm GradientNorm { get; }
    public GpuTargetLogProbs TargetLogProbs { get; }
    public IGemm Gemm { get; }
    /// <summary>The fused LM head (logits by <see cref="Gemm"/>, log-probs by <see cref="TargetLogProbs"/>).</summary>
    public GpuSequenceLogProbs SequenceLogProbs { get; }
}
