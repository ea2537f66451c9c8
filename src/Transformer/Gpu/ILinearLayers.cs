using DistAlign.Kernels.Gpu;
using ILGPU;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// The precision of <see cref="GpuGpt"/>'s linear layers, chosen once in its constructor: <see cref="Float32LinearLayers"/>
/// (fp32 operands, any <see cref="IGemm"/>) or <see cref="BFloat16LinearLayers"/> (bf16 operands, fp32 accumulation, a
/// <see cref="CublasGemm"/> at <see cref="GemmPrecision.BFloat16"/>). A linear layer with weight W [in, out] and bias b
/// [out] at offsets of the engine's parameters computes, for x [N, in] and dy = ∂L/∂y [N, out]:
/// <code>
///   forward:  y = x·W + b
///   backward: dx = dy·Wᵀ (overwritten);  dW += xᵀ·dy;  db += Σ_rows dy
/// </code>
/// </summary>
/// <remarks>
/// A GEMM input x is passed by its activation name, not as a buffer: the strategy decides which copy the GEMM reads
/// (fp32, or a bf16 copy kept for the backward's dW). For the same reason the producers of GEMM inputs that are read by
/// nothing else — the LayerNorms before the attention and MLP, the GELU — run here, and write where <see cref="Forward"/>
/// will read. fp32 outputs (qkv, fch, the residual stream) are plain buffers.
/// </remarks>
internal interface ILinearLayers : IDisposable
{
    /// <summary>Whether the activations must keep bf16 copies of the GEMM inputs (ln1, atty, ln2, fch_gelu) and a bf16 "dy" scratch.</summary>
    bool KeepsBFloat16Copies { get; }

    /// <summary>At the start of every forward, before its first GEMM: the weights as the GEMMs will read them.</summary>
    void BeginForward();

    /// <summary>
    /// Activation <paramref name="output"/> = (x − μ)·rstd·w + b per row of <paramref name="input"/> [N, C], as a GEMM input;
    /// μ and rstd go to the fp32 activations output + "_mean" and output + "_rstd" (the LayerNorm backward reads them).
    /// </summary>
    void LayerNormForward(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias, GpuActivations s, string output);

    /// <summary>Activation <paramref name="output"/> = gelu(<paramref name="input"/>), as a GEMM input.</summary>
    void GeluForward(ArrayView<float> input, GpuActivations s, string output);

    /// <summary>output [rows, outDim] = x·W + b, x the activation <paramref name="input"/> written by <see cref="LayerNormForward"/> or <see cref="GeluForward"/>.</summary>
    void Forward(GpuActivations s, string input, long weight, long bias, ArrayView<float> output, int rows, int inDim, int outDim);

    /// <summary>
    /// A residual block's output projection: output = stream + x·W + b, x the activation <paramref name="input"/>
    /// (<paramref name="source"/> says who wrote it). Charges the GEMM to the profile's "matmul fwd"; the caller charges
    /// what follows to "residual fwd".
    /// </summary>
    void ProjectionWithResidual(GpuActivations s, string input, LinearInputSource source, long weight, long bias,
                                ArrayView<float> stream, ArrayView<float> output, int rows, int inDim, int outDim);

    /// <summary>
    /// dInput [rows, inDim] = dy·Wᵀ;  dW += xᵀ·dy;  db += Σ_rows dy, with dy = <paramref name="dOutput"/> and x the forward's
    /// activation <paramref name="input"/>; the gradients of W and b are at offsets <paramref name="weight"/> and <paramref name="bias"/>.
    /// </summary>
    void Backward(GpuActivations s, ArrayView<float> dOutput, string input, long weight, long bias, ArrayView<float> dInput,
                  int rows, int inDim, int outDim);
}

/// <summary>Who wrote a linear layer's input, which decides whether a bf16 strategy must round it before its GEMM.</summary>
internal enum LinearInputSource
{
    /// <summary><see cref="ILinearLayers.LayerNormForward"/> or <see cref="ILinearLayers.GeluForward"/>: already where the GEMM reads it.</summary>
    Producer,

    /// <summary>Another op's fp32 activation (attention's output, which its own backward reads in fp32).</summary>
    Float32,
}
