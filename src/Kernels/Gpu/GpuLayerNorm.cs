using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// LayerNorm over the last axis, the GPU form of <see cref="Cpu.LayerNorm"/> (same ε, same saved mean/rstd,
/// same accumulate semantics for dx, dw, db).
/// Forward and dx: one warp per row (a group holds Group.DimX / WarpSize rows); Σx, then Σ(x − μ)² (two-pass variance),
/// and for dx Σĝ and Σĝx̂, each a butterfly of xor shuffles over the lanes' strided partial sums (every lane gets the
/// total; no shared memory, no group barriers, so rows proceed independently and many are in flight per SM).
/// dw/db: the two-stage column sum of <see cref="GpuColumnSum"/> over dy·x̂ and dy, with x̂ recomputed from the
/// input, mean and rstd in stage 1 (never stored): one thread per (block of <see cref="GpuColumnSum.RowsPerBlock"/>
/// rows, channel) sums its rows in order into partials, then one thread per channel sums the partials in block
/// order. No atomics anywhere, so every result is bit-identical run to run on one device.
/// </summary>
public sealed class GpuLayerNorm : IDisposable
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>, ArrayView<float>> forward;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<ushort>, ArrayView<float>, ArrayView<float>> forwardToBFloat16;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>> backwardInput;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>> backwardParameterPartials;
    private readonly GpuColumnSum columnSum;
    private readonly Accelerator accelerator;
    private readonly int groupSize, rowsPerGroup;

    public GpuLayerNorm(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        groupSize = GpuLaunch.ReductionGroupSize(accelerator);
        if (groupSize % accelerator.WarpSize != 0 || (accelerator.WarpSize & (accelerator.WarpSize - 1)) != 0)
            throw new NotSupportedException($"GpuLayerNorm needs a power-of-two warp size that divides the group size ({accelerator.WarpSize}, {groupSize})");
        rowsPerGroup = groupSize / accelerator.WarpSize;
        forward = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        forwardToBFloat16 = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<ushort>, ArrayView<float>, ArrayView<float>>(ForwardToBFloat16Kernel);
        backwardInput = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>>(BackwardInputKernel);
        backwardParameterPartials = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>>(BackwardParameterPartialsKernel);
        columnSum = new GpuColumnSum(accelerator);
    }

    /// <summary>output = (x − μ)·r·w + b per row of input [N, C]; writes mean [N] and rstd [N]. C = weight.Length.</summary>
    public void Forward(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias,
                        ArrayView<float> output, ArrayView<float> mean, ArrayView<float> rstd)
    {
        var (c, n) = CheckForward(input, weight, bias, output.Length, mean, rstd);
        if (n > 0) forward(accelerator.DefaultStream, WarpRows(n), input, weight, bias, c, n, output, mean, rstd);
    }

    /// <summary>
    /// The forward with bf16 output (round to nearest even, <see cref="GpuBFloat16.Round"/>): for mixed precision, where
    /// the normalised activations are only a GEMM operand; same mean and rstd, output bit-identical to the fp32
    /// forward followed by <see cref="GpuBFloat16.ToBFloat16"/>.
    /// </summary>
    public void Forward(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias,
                        ArrayView<ushort> output, ArrayView<float> mean, ArrayView<float> rstd)
    {
        var (c, n) = CheckForward(input, weight, bias, output.Length, mean, rstd);
        if (n > 0) forwardToBFloat16(accelerator.DefaultStream, WarpRows(n), input, weight, bias, c, n, output, mean, rstd);
    }

    // One warp per row: ⌈N / rows per group⌉ groups of the reduction group size.
    private KernelConfig WarpRows(int n) => new((n + rowsPerGroup - 1) / rowsPerGroup, groupSize);

    /// <summary>The forward's shape checks; returns (C, N).</summary>
    private static (int C, int N) CheckForward(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias, long outputLength,
                                               ArrayView<float> mean, ArrayView<float> rstd)
    {
        int c = (int)weight.Length;
        int n = Rows(input.Length, c);
        GpuLaunch.CheckLength(bias.Length, c, nameof(bias), "[C]");
        GpuLaunch.CheckLength(outputLength, input.Length, "output", "[N, C]");
        GpuLaunch.CheckLength(mean.Length, n, nameof(mean), "[N]");
        GpuLaunch.CheckLength(rstd.Length, n, nameof(rstd), "[N]");
        return (c, n);
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
        backwardInput(accelerator.DefaultStream, WarpRows(n), dOutput, input, weight, mean, rstd, c, n, dInput);
        // partials [2, blocks, C]: dw partials, then db partials; stage 2 adds each into its gradient.
        int blocks = GpuColumnSum.Blocks(n);
        long half = (long)blocks * c;
        var partials = columnSum.Scratch(2 * half);
        backwardParameterPartials(accelerator.DefaultStream, blocks * c, dOutput, input, mean, rstd, n, c, partials);
        columnSum.AddPartials(partials.SubView(0, half), blocks, dWeight);
        columnSum.AddPartials(partials.SubView(half, half), blocks, dBias);
    }

    /// <summary>Frees the partial-sum scratch.</summary>
    public void Dispose() => columnSum.Dispose();

    [GpuKernel(true)]
    internal static void ForwardKernel(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias, int c, int n,
                                       ArrayView<float> output, ArrayView<float> mean, ArrayView<float> rstd)
    {
        int row = WarpRow(n);
        if (row < 0) return;   // the whole warp: no lane of it takes part in a shuffle below
        var moments = RowMoments.Of(input, row, c, mean, rstd);
        long offset = (long)row * c;
        for (int j = Warp.LaneIdx; j < c; j += Warp.WarpSize)
            output[offset + j] = (input[offset + j] - moments.Mean) * moments.Rstd * weight[j] + bias[j];
    }

    /// <summary>The forward writing bf16 output (mixed precision: the LayerNorm output is only a GEMM operand).</summary>
    [GpuKernel(true)]
    internal static void ForwardToBFloat16Kernel(ArrayView<float> input, ArrayView<float> weight, ArrayView<float> bias, int c, int n,
                                                 ArrayView<ushort> output, ArrayView<float> mean, ArrayView<float> rstd)
    {
        int row = WarpRow(n);
        if (row < 0) return;
        var moments = RowMoments.Of(input, row, c, mean, rstd);
        long offset = (long)row * c;
        for (int j = Warp.LaneIdx; j < c; j += Warp.WarpSize)
            output[offset + j] = GpuBFloat16.Round((input[offset + j] - moments.Mean) * moments.Rstd * weight[j] + bias[j]);
    }

    /// <summary>The row of this thread's warp (Group.DimX / WarpSize rows per group), or −1 past the last of the <paramref name="n"/> rows.</summary>
    private static int WarpRow(int n)
    {
        int row = Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;
        return row < n ? row : -1;
    }

    /// <summary>Σ of <paramref name="value"/> over the warp's lanes, in every lane: a butterfly of xor shuffles (fixed pairing).</summary>
    private static float WarpSum(float value)
    {
        for (int mask = Warp.WarpSize / 2; mask > 0; mask >>= 1) value += Warp.ShuffleXor(value, mask);
        return value;
    }

    /// <summary>μ and r = 1/√(σ² + ε) of the warp's row (Σx, then Σ(x − μ)²: two-pass variance), also saved to mean/rstd.</summary>
    internal struct RowMoments
    {
        public float Mean, Rstd;

        public static RowMoments Of(ArrayView<float> input, int row, int c, ArrayView<float> mean, ArrayView<float> rstd)
        {
            int lane = Warp.LaneIdx, step = Warp.WarpSize;
            long offset = (long)row * c;
            float sum = 0f;
            for (int j = lane; j < c; j += step) sum += input[offset + j];
            float mu = WarpSum(sum) / c;
            float squares = 0f;
            for (int j = lane; j < c; j += step)
            {
                float d = input[offset + j] - mu;
                squares += d * d;
            }
            float r = 1f / XMath.Sqrt(WarpSum(squares) / c + Cpu.LayerNorm.Epsilon);
            if (lane == 0)
            {
                mean[row] = mu;
                rstd[row] = r;
            }
            return new RowMoments { Mean = mu, Rstd = r };
        }
    }

    [GpuKernel(true)]
    internal static void BackwardInputKernel(ArrayView<float> dOutput, ArrayView<float> input, ArrayView<float> weight,
                                             ArrayView<float> mean, ArrayView<float> rstd, int c, int n, ArrayView<float> dInput)
    {
        int row = WarpRow(n);
        if (row < 0) return;
        int lane = Warp.LaneIdx, step = Warp.WarpSize;
        long offset = (long)row * c;
        float mu = mean[row], r = rstd[row];
        float sumG = 0f, sumGX = 0f;
        for (int j = lane; j < c; j += step)
        {
            float g = dOutput[offset + j] * weight[j];
            sumG += g;
            sumGX += g * ((input[offset + j] - mu) * r);
        }
        float meanG = WarpSum(sumG) / c;
        float meanGX = WarpSum(sumGX) / c;
        for (int j = lane; j < c; j += step)
        {
            float xHat = (input[offset + j] - mu) * r;
            float g = dOutput[offset + j] * weight[j];
            dInput[offset + j] += r * (g - meanG - xHat * meanGX);
        }
    }

    // Stage 1 of dw = Σ_i dy[i]·x̂[i], db = Σ_i dy[i] (x̂ = (x − μ)·r recomputed): thread (b, j) sums rows
    // b·R … min(N, b·R + R) − 1 of channel j in order into partials[0, b, j] (dw) and partials[1, b, j] (db).
    [GpuKernel(false)]
    internal static void BackwardParameterPartialsKernel(Index1D i, ArrayView<float> dOutput, ArrayView<float> input,
                                                         ArrayView<float> mean, ArrayView<float> rstd, int n, int c,
                                                         ArrayView<float> partials)
    {
        int block = i / c, j = i - block * c;
        int first = block * GpuColumnSum.RowsPerBlock, end = IntrinsicMath.Min(n, first + GpuColumnSum.RowsPerBlock);
        float dw = 0f, db = 0f;
        for (int row = first; row < end; row++)
        {
            long at = (long)row * c + j;
            float d = dOutput[at];
            dw += d * ((input[at] - mean[row]) * rstd[row]);
            db += d;
        }
        int blocks = (n + GpuColumnSum.RowsPerBlock - 1) / GpuColumnSum.RowsPerBlock;
        partials[i] = dw;
        partials[(long)blocks * c + i] = db;
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
