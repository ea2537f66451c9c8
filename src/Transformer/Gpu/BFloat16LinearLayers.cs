using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// Linear layers on bf16 operands (mixed precision, <c>--gpu-precision bf16</c>): a cuBLAS GEMM at
/// <see cref="GemmPrecision.BFloat16"/> multiplies bf16 copies of weights and activations with fp32 accumulation and fp32
/// outputs; the master weights, their gradients and every non-GEMM op stay fp32. The math of <see cref="ILinearLayers"/>, with
/// <code>
///   forward:  W₁₆ = bf16(W) once per forward (a mirror of all parameters);  y = x₁₆·W₁₆ + b
///   backward: dy₁₆ = bf16(dy) once per layer;  dx = dy₁₆·W₁₆ᵀ;  dW += x₁₆ᵀ·dy₁₆;  db += Σ_rows dy (fp32)
/// </code>
/// x₁₆ is the bf16 copy of the GEMM input kept in the activations for the backward: LayerNorm and GELU write it directly
/// (their fp32 outputs are then never written: nothing reads them), attention's fp32 output is rounded into it. A residual
/// block's projection adds the residual stream as the C operand of the same cuBLASLt call (no residual pass).
/// </summary>
internal sealed class BFloat16LinearLayers : ILinearLayers
{
    private readonly CublasGemm gemm;
    private readonly GpuLayerNorm layerNorm;
    private readonly GpuGelu gelu;
    private readonly GpuColumnSum columnSum;
    private readonly GpuBFloat16 bf16;
    private readonly ArrayView<float> parameters, gradients;
    private readonly MemoryBuffer1D<ushort, Stride1D.Dense> parametersBf16;
    private readonly Action<string> lap;

    /// <param name="gemm">a cuBLAS GEMM at <see cref="GemmPrecision.BFloat16"/></param>
    /// <param name="lap">charges the time since the last lap to a profile op (a no-op without a profile)</param>
    public BFloat16LinearLayers(Accelerator accelerator, CublasGemm gemm, GpuLayerNorm layerNorm, GpuGelu gelu, GpuColumnSum columnSum,
                                ArrayView<float> parameters, ArrayView<float> gradients, Action<string> lap)
    {
        if (gemm.Precision != GemmPrecision.BFloat16)
            throw new ArgumentException($"bf16 linear layers need a GEMM at GemmPrecision.BFloat16, got {gemm.Precision}", nameof(gemm));
        this.gemm = gemm;
        this.layerNorm = layerNorm;
        this.gelu = gelu;
        this.columnSum = columnSum;
        this.parameters = parameters;
        this.gradients = gradients;
        this.lap = lap;
        bf16 = new GpuBFloat16(accelerator);
        parametersBf16 = accelerator.Allocate1D<ushort>(parameters.Length);
    }

    public bool KeepsBFloat16Copies => true;

    // W₁₆ = bf16(W): the weights as the GEMMs will see them
    public void BeginForward() => bf16.ToBFloat16(parameters, parametersBf16.View);

    // LayerNorm and GELU outputs are only GEMM operands: written as bf16 directly (bit-identical to fp32 then rounding)
    public void LayerNormForward(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias, GpuActivations s, string output) =>
        layerNorm.Forward(input, weight, bias, s.BFloat16(output), s[output + "_mean"], s[output + "_rstd"]);

    public void GeluForward(ArrayView<float> input, GpuActivations s, string output) => gelu.Forward(input, s.BFloat16(output));

    // y = x₁₆·W₁₆ + b (one cuBLASLt call with the bias epilogue); x₁₆ written by its producer
    public void Forward(GpuActivations s, string input, long weight, long bias, ArrayView<float> output, int rows, int inDim, int outDim) =>
        gemm.MultiplyBFloat16(false, false, rows, outDim, inDim, 1f, s.BFloat16(input), inDim, PB(weight, (long)inDim * outDim), outDim,
                              0f, output, outDim, P(bias, outDim));

    // output = stream + x₁₆·W₁₆ + b in one cuBLASLt call (the residual as its C operand); x₁₆ rounded first from an fp32 input
    public void ProjectionWithResidual(GpuActivations s, string input, LinearInputSource source, long weight, long bias,
                                       ArrayView<float> stream, ArrayView<float> output, int rows, int inDim, int outDim)
    {
        var inputBf16 = s.BFloat16(input);
        if (source == LinearInputSource.Float32) bf16.ToBFloat16(s[input], inputBf16);
        gemm.MultiplyBFloat16AddResidual(rows, outDim, inDim, inputBf16, inDim, PB(weight, (long)inDim * outDim), outDim, P(bias, outDim),
                                         stream.SubView(0, (long)rows * outDim), output.SubView(0, (long)rows * outDim));
        lap("matmul fwd");
    }

    // dy read once: db's column sums and dy₁₆ (scratch "dy") in one pass; then dx = dy₁₆·W₁₆ᵀ and dW += x₁₆ᵀ·dy₁₆
    public void Backward(GpuActivations s, ArrayView<float> dOutput, string input, long weight, long bias, ArrayView<float> dInput,
                         int rows, int inDim, int outDim)
    {
        long weightLength = (long)inDim * outDim;
        var dOutputBf16 = s.BFloat16("dy").SubView(0, (long)rows * outDim);
        columnSum.SumAndRoundToBFloat16(dOutput.SubView(0, (long)rows * outDim), G(bias, outDim), dOutputBf16);
        gemm.MultiplyBFloat16(false, true, rows, inDim, outDim, 1f, dOutputBf16, outDim, PB(weight, weightLength), outDim, 0f, dInput, inDim);
        gemm.MultiplyBFloat16(true, false, inDim, outDim, rows, 1f, s.BFloat16(input), inDim, dOutputBf16, outDim,
                              1f, G(weight, weightLength), outDim);
    }

    private ArrayView<float> P(long offset, long length) => parameters.SubView(offset, length);
    private ArrayView<float> G(long offset, long length) => gradients.SubView(offset, length);
    private ArrayView<ushort> PB(long offset, long length) => parametersBf16.View.SubView(offset, length);

    public void Dispose() => parametersBf16.Dispose();
}
