using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// LayerNorm over the last axis, the GPU form of <see cref="Cpu.LayerNorm"/> (same ε, same saved mean/rstd,
/// same accumulate semantics for dx, dw, db).
/// Forward and dx: one group per row; Σx, then Σ(x − μ)² (two-pass variance), and for dx Σĝ and Σĝx̂,
/// each a shared-memory tree reduction of per-thread strided partial sums.
/// dw/db: one thread per channel walking the rows in order (no atomics, no partial-sum buffers).
/// </summary>
public sealed class GpuLayerNorm
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>, ArrayView<float>, ArrayView<float>> _forward;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>> _backwardInput;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>> _backwardParameters;
    private readonly Accelerator _accelerator;
    private readonly int _groupSize;

    public GpuLayerNorm(Accelerator accelerator)
    {
        _accelerator = accelerator;
        _groupSize = GpuLaunch.ReductionGroupSize(accelerator);
        _forward = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        _backwardInput = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>>(BackwardInputKernel);
        _backwardParameters = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>>(BackwardParametersKernel);
    }

    /// <summary>output = (x − μ)·r·w + b per row of input [N, C]; writes mean [N] and rstd [N]. C = weight.Length.</summary>
    public void Forward(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias,
                        ArrayView<float> output, ArrayView<float> mean, ArrayView<float> rstd)
    {
        int c = (int)weight.Length;
        int n = Rows(input.Length, c);
        GpuLaunch.CheckLength(bias.Length, c, nameof(bias), "[C]");
        GpuLaunch.CheckLength(output.Length, input.Length, nameof(output), "[N, C]");
        GpuLaunch.CheckLength(mean.Length, n, nameof(mean), "[N]");
        GpuLaunch.CheckLength(rstd.Length, n, nameof(rstd), "[N]");
        if (n > 0) _forward(_accelerator.DefaultStream, GpuLaunch.Rows(n, _groupSize), input, weight, bias, c, output, mean, rstd);
    }

    /// <summary>Accumulates dInput [N, C], dWeight [C], dBias [C] from dOutput, using the forward's input, mean and rstd.</summary>
    public void Backward(ArrayView<float> dOutput, ArrayView<float> input, ArrayView<float> weight,
                         ArrayView<float> mean, ArrayView<float> rstd,
                         ArrayView<float> dInput, ArrayView<float> dWeight, ArrayView<float> dBias)
    {
        int c = (int)weight.Length;
        int n = Rows(input.Length, c);
        GpuLaunch.CheckLength(dOutput.Length, input.Length, nameof(dOutput), "[N, C]");
        GpuLaunch.CheckLength(dInput.Length, input.Length, nameof(dInput), "[N, C]");
        GpuLaunch.CheckLength(dWeight.Length, c, nameof(dWeight), "[C]");
        GpuLaunch.CheckLength(dBias.Length, c, nameof(dBias), "[C]");
        GpuLaunch.CheckLength(mean.Length, n, nameof(mean), "[N]");
        GpuLaunch.CheckLength(rstd.Length, n, nameof(rstd), "[N]");
        if (n == 0) return;
        _backwardInput(_accelerator.DefaultStream, GpuLaunch.Rows(n, _groupSize), dOutput, input, weight, mean, rstd, c, dInput);
        _backwardParameters(_accelerator.DefaultStream, c, dOutput, input, mean, rstd, n, c, dWeight, dBias);
    }

    [GpuKernel(true)]
    internal static void ForwardKernel(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias, int c,
                                       ArrayView<float> output, ArrayView<float> mean, ArrayView<float> rstd)
    {
        var scratch = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        int row = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        long offset = (long)row * c;
        float sum = 0f;
        for (int j = tid; j < c; j += step) sum += input[offset + j];
        float mu = GpuLaunch.GroupSum(scratch, sum) / c;
        float squares = 0f;
        for (int j = tid; j < c; j += step)
        {
            float d = input[offset + j] - mu;
            squares += d * d;
        }
        float r = 1f / XMath.Sqrt(GpuLaunch.GroupSum(scratch, squares) / c + Cpu.LayerNorm.Epsilon);
        for (int j = tid; j < c; j += step)
            output[offset + j] = (input[offset + j] - mu) * r * weight[j] + bias[j];
        if (tid == 0)
        {
            mean[row] = mu;
            rstd[row] = r;
        }
    }

    [GpuKernel(true)]
    internal static void BackwardInputKernel(ArrayView<float> dOutput, ArrayView<float> input, ArrayView<float> weight,
                                             ArrayView<float> mean, ArrayView<float> rstd, int c, ArrayView<float> dInput)
    {
        var scratch = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        int row = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        long offset = (long)row * c;
        float mu = mean[row], r = rstd[row];
        float sumG = 0f, sumGX = 0f;
        for (int j = tid; j < c; j += step)
        {
            float g = dOutput[offset + j] * weight[j];
            sumG += g;
            sumGX += g * ((input[offset + j] - mu) * r);
        }
        float meanG = GpuLaunch.GroupSum(scratch, sumG) / c;
        float meanGX = GpuLaunch.GroupSum(scratch, sumGX) / c;
        for (int j = tid; j < c; j += step)
        {
            float xHat = (input[offset + j] - mu) * r;
            float g = dOutput[offset + j] * weight[j];
            dInput[offset + j] += r * (g - meanG - xHat * meanGX);
        }
    }

    [GpuKernel(false)]
    internal static void BackwardParametersKernel(Index1D j, ArrayView<float> dOutput, ArrayView<float> input,
                                                  ArrayView<float> mean, ArrayView<float> rstd, int n, int c,
                                                  ArrayView<float> dWeight, ArrayView<float> dBias)
    {
        float dw = dWeight[j], db = dBias[j];
        for (int i = 0; i < n; i++)
        {
            long at = (long)i * c + j;
            float d = dOutput[at];
            dw += d * ((input[at] - mean[i]) * rstd[i]);
            db += d;
        }
        dWeight[j] = dw;
        dBias[j] = db;
    }

    private static int Rows(long length, int channels)
    {
        GpuLaunch.CheckPositive(channels, "weight.Length");
        if (length % channels != 0)
            throw new ArgumentException($"input has {length} elements, not a multiple of C = {channels} (weight.Length).", "input");
        if (length > int.MaxValue) throw new ArgumentException("input is too large for 32-bit GPU indexing.", "input");
        return (int)(length / channels);
    }
}
