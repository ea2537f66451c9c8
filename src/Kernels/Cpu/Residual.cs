using System.Numerics.Tensors;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Residual connection: out = a + b, element-wise over flat spans of equal length.
/// Backward: da += dout, db += dout (accumulates, so callers can sum gradient contributions).
/// </summary>
public static class Residual
{
    /// <summary>Elements per parallel range: below this, threads cost more than they save.</summary>
    private const int MinPerRange = 1 << 15;

    /// <summary>output[i] = a[i] + b[i]. <paramref name="output"/> may be the same span as a or b.</summary>
    public static unsafe void Forward(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> output)
    {
        ShapeCheck.Length(b.Length, a.Length, nameof(b), "same length as a");
        ShapeCheck.Length(output.Length, a.Length, nameof(output), "same length as a");
        fixed (float* pa = a, pb = b, po = output)
        {
            float* xa = pa, xb = pb, xo = po;
            CpuParallel.For(a.Length, MinPerRange, (start, end) =>
                TensorPrimitives.Add(new ReadOnlySpan<float>(xa + start, end - start),
                                     new ReadOnlySpan<float>(xb + start, end - start),
                                     new Span<float>(xo + start, end - start)));
        }
    }

    /// <summary>dA[i] += dOutput[i]; dB[i] += dOutput[i]. Accumulates into both gradients.</summary>
    public static unsafe void Backward(ReadOnlySpan<float> dOutput, Span<float> dA, Span<float> dB)
    {
        ShapeCheck.Length(dA.Length, dOutput.Length, nameof(dA), "same length as dOutput");
        ShapeCheck.Length(dB.Length, dOutput.Length, nameof(dB), "same length as dOutput");
        fixed (float* pd = dOutput, pa = dA, pb = dB)
        {
            float* xd = pd, xa = pa, xb = pb;
            CpuParallel.For(dOutput.Length, MinPerRange, (start, end) =>
            {
                var d = new ReadOnlySpan<float>(xd + start, end - start);
                var ga = new Span<float>(xa + start, end - start);
                var gb = new Span<float>(xb + start, end - start);
                TensorPrimitives.Add(ga, d, ga);
                TensorPrimitives.Add(gb, d, gb);
            });
        }
    }
}
