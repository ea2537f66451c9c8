using DistAlign.Kernels.Gpu;
using ILGPU;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// Linear layers on fp32 operands: each product one <see cref="IGemm"/> call (cuBLAS on CUDA, at its fp32 or TF32
/// precision; <see cref="GpuTiledGemm"/> elsewhere), the bias gradient a deterministic column sum (<see cref="GpuColumnSum"/>),
/// the residual add of a projection its own pass (<see cref="GpuResidual"/>). The math of <see cref="ILinearLayers"/>.
/// </summary>
internal sealed class Float32LinearLayers(IGemm gemm, GpuLayerNorm layerNorm, GpuGelu gelu, GpuResidual residual, GpuColumnSum columnSum,
                                          ArrayView<float> parameters, ArrayView<float> gradients, Action<string> lap) : ILinearLayers
{
    public bool KeepsBFloat16Copies => false;

    public void BeginForward() { }

    public void LayerNormForward(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias, GpuActivations s, string output) =>
        layerNorm.Forward(input, weight, bias, s[output], s[output + "_mean"], s[output + "_rstd"]);

    public void GeluForward(ArrayView<float> input, GpuActivations s, string output) => gelu.Forward(input, s[output]);

    // y = x·W + b (the bias added by the GEMM)
    public void Forward(GpuActivations s, string input, long weight, long bias, ArrayView<float> output, int rows, int inDim, int outDim) =>
        gemm.Multiply(false, false, rows, outDim, inDim, 1f, s[input], inDim, P(weight, (long)inDim * outDim), outDim, 0f, output, outDim,
                      P(bias, outDim));

    // projection = x·W + b; output = stream + projection. The fp32 activation is the GEMM input whoever wrote it.
    public void ProjectionWithResidual(GpuActivations s, string input, LinearInputSource source, long weight, long bias,
                                       ArrayView<float> stream, ArrayView<float> output, int rows, int inDim, int outDim)
    {
        var projection = s["projection"];
        Forward(s, input, weight, bias, projection, rows, inDim, outDim);
        lap("matmul fwd");
        residual.Forward(stream, projection, output);
    }

    // dx = dy·Wᵀ;  dW += xᵀ·dy;  db += Σ_rows dy
    public void Backward(GpuActivations s, ArrayView<float> dOutput, string input, long weight, long bias, ArrayView<float> dInput,
                         int rows, int inDim, int outDim)
    {
        long weightLength = (long)inDim * outDim;
        gemm.Multiply(false, true, rows, inDim, outDim, 1f, dOutput, outDim, P(weight, weightLength), outDim, 0f, dInput, inDim);
        gemm.Multiply(true, false, inDim, outDim, rows, 1f, s[input], inDim, dOutput, outDim, 1f, G(weight, weightLength), outDim);
        columnSum.Sum(dOutput.SubView(0, (long)rows * outDim), G(bias, outDim));
    }

    private ArrayView<float> P(long offset, long length) => parameters.SubView(offset, length);
    private ArrayView<float> G(long offset, long length) => gradients.SubView(offset, length);

    public void Dispose() { }
}
