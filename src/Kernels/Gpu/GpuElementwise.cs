using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// GELU (tanh approximation), the GPU form of <see cref="Cpu.Gelu"/>: gelu(x) = x·σ(2u),
/// u = √(2/π)·(x + 0.044715·x³); backward dinp += dout·gelu'(x) with x clamped to ±20 (as the CPU op).
/// One thread per element.
/// </summary>
public sealed class GpuGelu
{
    private const float TwoSqrtTwoOverPi = 2f * 0.7978845608028654f;
    private const float Cubic = 0.044715f;
    private const float Saturation = 20f;

    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>> _forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> _backward;
    private readonly Accelerator _accelerator;

    public GpuGelu(Accelerator accelerator)
    {
        _accelerator = accelerator;
        _forward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        _backward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernel);
    }

    /// <summary>output[i] = gelu(input[i]); output may be input.</summary>
    public void Forward(ArrayView<float> input, ArrayView<float> output)
    {
        GpuLaunch.CheckLength(output.Length, input.Length, nameof(output), "same length as input");
        if (input.Length > 0) _forward(_accelerator.DefaultStream, (int)input.Length, input, output);
    }

    /// <summary>dInput[i] += dOutput[i]·gelu'(input[i]). Accumulates.</summary>
    public void Backward(ArrayView<float> dOutput, ArrayView<float> input, ArrayView<float> dInput)
    {
        GpuLaunch.CheckLength(dOutput.Length, input.Length, nameof(dOutput), "same length as input");
        GpuLaunch.CheckLength(dInput.Length, input.Length, nameof(dInput), "same length as input");
        if (input.Length > 0) _backward(_accelerator.DefaultStream, (int)input.Length, dOutput, input, dInput);
    }

    [GpuKernel(false)]
    internal static void ForwardKernel(Index1D i, ArrayView<float> input, ArrayView<float> output)
    {
        float x = input[i];
        float twoU = x * (TwoSqrtTwoOverPi + TwoSqrtTwoOverPi * Cubic * (x * x));
        output[i] = x / (1f + XMath.Exp(-twoU));
    }

    [GpuKernel(false)]
    internal static void BackwardKernel(Index1D i, ArrayView<float> dOutput, ArrayView<float> input, ArrayView<float> dInput)
    {
        float x = IntrinsicMath.Clamp(input[i], -Saturation, Saturation);
        float square = x * x;
        float twoU = x * (TwoSqrtTwoOverPi + TwoSqrtTwoOverPi * Cubic * square);
        float twoUPrime = TwoSqrtTwoOverPi + 3f * TwoSqrtTwoOverPi * Cubic * square;
        float sigma = 1f / (1f + XMath.Exp(-twoU));
        float derivative = sigma + x * sigma * (1f - sigma) * twoUPrime;
        dInput[i] += dOutput[i] * derivative;
    }
}

/// <summary>Residual connection, the GPU form of <see cref="Cpu.Residual"/>: out = a + b; da += dout, db += dout.</summary>
public sealed class GpuResidual
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> _forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> _backward;
    private readonly Accelerator _accelerator;

    public GpuResidual(Accelerator accelerator)
    {
        _accelerator = accelerator;
        _forward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        _backward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernel);
    }

    /// <summary>output[i] = a[i] + b[i]; output may be a or b.</summary>
    public void Forward(ArrayView<float> a, ArrayView<float> b, ArrayView<float> output)
    {
        GpuLaunch.CheckLength(b.Length, a.Length, nameof(b), "same length as a");
        GpuLaunch.CheckLength(output.Length, a.Length, nameof(output), "same length as a");
        if (a.Length > 0) _forward(_accelerator.DefaultStream, (int)a.Length, a, b, output);
    }

    /// <summary>dA[i] += dOutput[i]; dB[i] += dOutput[i]. Accumulates into both.</summary>
    public void Backward(ArrayView<float> dOutput, ArrayView<float> dA, ArrayView<float> dB)
    {
        GpuLaunch.CheckLength(dA.Length, dOutput.Length, nameof(dA), "same length as dOutput");
        GpuLaunch.CheckLength(dB.Length, dOutput.Length, nameof(dB), "same length as dOutput");
        if (dOutput.Length > 0) _backward(_accelerator.DefaultStream, (int)dOutput.Length, dOutput, dA, dB);
    }

    [GpuKernel(false)]
    internal static void ForwardKernel(Index1D i, ArrayView<float> a, ArrayView<float> b, ArrayView<float> output) =>
        output[i] = a[i] + b[i];

    [GpuKernel(false)]
    internal static void BackwardKernel(Index1D i, ArrayView<float> dOutput, ArrayView<float> dA, ArrayView<float> dB)
    {
        float d = dOutput[i];
        dA[i] += d;
        dB[i] += d;
    }
}

/// <summary>
/// Token + position embedding, the GPU form of <see cref="Cpu.Embedding"/>:
/// out[n, :] = wte[token[n], :] + wpe[position[n], :]; backward dwte[token[n]] += dout[n], dwpe[position[n]] += dout[n].
/// Token and position ids are NOT range-checked on the device (that would need a host read-back); the data
/// pipeline validates them (the CPU op does, and so do the tests).
/// The backward is deterministic without atomics: one thread per channel walks all N rows in order, so each
/// gradient element receives its contributions in row order from one thread (parallelism C; this op is a
/// negligible share of a step).
/// </summary>
public sealed class GpuEmbedding
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>> _forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>> _backward;
    private readonly Accelerator _accelerator;

    public GpuEmbedding(Accelerator accelerator)
    {
        _accelerator = accelerator;
        _forward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>>(ForwardKernel);
        _backward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>>(BackwardKernel);
    }

    /// <summary>output [N, C] = wte[tokens] + wpe[positions]; tokens, positions [N]; wte [V, C]; wpe [maxT, C].</summary>
    public void Forward(ArrayView<int> tokens, ArrayView<int> positions, ArrayView<float> wte, ArrayView<float> wpe,
                        int channels, ArrayView<float> output)
    {
        Validate(tokens.Length, positions.Length, wte.Length, wpe.Length, channels, output.Length, nameof(output));
        long total = tokens.Length * channels;
        if (total > 0) _forward(_accelerator.DefaultStream, (int)total, tokens, positions, wte, wpe, channels, output);
    }

    /// <summary>dWte[tokens[n]] += dOutput[n]; dWpe[positions[n]] += dOutput[n]. Accumulates.</summary>
    public void Backward(ArrayView<float> dOutput, ArrayView<int> tokens, ArrayView<int> positions, int channels,
                         ArrayView<float> dWte, ArrayView<float> dWpe)
    {
        Validate(tokens.Length, positions.Length, dWte.Length, dWpe.Length, channels, dOutput.Length, nameof(dOutput));
        if (tokens.Length > 0)
            _backward(_accelerator.DefaultStream, channels, dOutput, tokens, positions, (int)tokens.Length, channels, dWte, dWpe);
    }

    [GpuKernel(false)]
    internal static void ForwardKernel(Index1D i, ArrayView<int> tokens, ArrayView<int> positions, ArrayView<float> wte,
                                       ArrayView<float> wpe, int channels, ArrayView<float> output)
    {
        int n = i / channels, c = i - n * channels;
        output[i] = wte[(long)tokens[n] * channels + c] + wpe[(long)positions[n] * channels + c];
    }

    [GpuKernel(false)]
    internal static void BackwardKernel(Index1D c, ArrayView<float> dOutput, ArrayView<int> tokens, ArrayView<int> positions,
                                        int rows, int channels, ArrayView<float> dWte, ArrayView<float> dWpe)
    {
        for (int n = 0; n < rows; n++)
        {
            float d = dOutput[(long)n * channels + c];
            dWte[(long)tokens[n] * channels + c] += d;
            dWpe[(long)positions[n] * channels + c] += d;
        }
    }

    private static void Validate(long tokens, long positions, long wte, long wpe,
                                 int channels, long activationLength, string activationName)
    {
        GpuLaunch.CheckPositive(channels, nameof(channels));
        GpuLaunch.CheckLength(positions, tokens, nameof(positions), "[N], one position per token");
        GpuLaunch.CheckLength(activationLength, tokens * channels, activationName, "[N, C]");
        if (wte % channels != 0)
            throw new ArgumentException($"The token table has {wte} elements, not a multiple of C = {channels}.", nameof(wte));
        if (wpe % channels != 0)
            throw new ArgumentException($"The position table has {wpe} elements, not a multiple of C = {channels}.", nameof(wpe));
        if (activationLength > int.MaxValue)
            throw new ArgumentException($"{activationName} has {activationLength} elements; the GPU kernels index with 32-bit ints.", activationName);
    }
}
