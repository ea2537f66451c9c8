using System.Numerics.Tensors;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// GELU, tanh approximation (GPT-2's):
///   gelu(x) = 0.5·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³).
/// Because 0.5·(1 + tanh(u)) = σ(2u), this is computed as gelu(x) = x·σ(2u), which stays finite for any
/// finite x (σ saturates to 0 or 1, no inf/inf).
/// Backward: gelu'(x) = σ(2u) + x·σ(2u)·(1 − σ(2u))·2u'(x),  2u'(x) = 2√(2/π)·(1 + 3·0.044715·x²);
/// dinp += dout·gelu'(x) (accumulates).
/// </summary>
public static class Gelu
{
    private const float TwoSqrtTwoOverPi = 2f * 0.7978845608028654f;
    private const float Cubic = 0.044715f;
    /// <summary>Elements per stack chunk: every pass over a chunk stays in L1.</summary>
    private const int Chunk = 512;
    private const int MinPerRange = 1 << 14;
    /// <summary>|x| beyond which gelu'(x) rounds to exactly 1 or 0 in fp32 (σ(2u(20)) = 1, σ(2u(−20)) ≈ e^−603 = 0).</summary>
    private const float Saturation = 20f;

    /// <summary>output[i] = gelu(input[i]). output may be the same span as input.</summary>
    public static unsafe void Forward(ReadOnlySpan<float> input, Span<float> output)
    {
        ShapeCheck.Length(output.Length, input.Length, nameof(output), "same length as input");
        fixed (float* pi = input, po = output)
        {
            float* xi = pi, xo = po;
            CpuParallel.For(input.Length, MinPerRange, (start, end) =>
            {
                Span<float> s = stackalloc float[Chunk];
                for (int i = start; i < end; i += Chunk)
                {
                    int len = Math.Min(Chunk, end - i);
                    var x = new ReadOnlySpan<float>(xi + i, len);
                    var t = s[..len];
                    TensorPrimitives.Multiply(x, x, t);                                        // x²
                    TensorPrimitives.Multiply(t, TwoSqrtTwoOverPi * Cubic, t);
                    TensorPrimitives.Add(t, TwoSqrtTwoOverPi, t);                              // 2√(2/π)(1 + c x²)
                    TensorPrimitives.Multiply(t, x, t);                                        // 2u
                    TensorPrimitives.Sigmoid(t, t);                                            // σ(2u)
                    TensorPrimitives.Multiply(x, t, new Span<float>(xo + i, len));
                }
            });
        }
    }

    /// <summary>dInput[i] += dOutput[i]·gelu'(input[i]). Accumulates.</summary>
    public static unsafe void Backward(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> input, Span<float> dInput)
    {
        ShapeCheck.Length(dOutput.Length, input.Length, nameof(dOutput), "same length as input");
        ShapeCheck.Length(dInput.Length, input.Length, nameof(dInput), "same length as input");
        fixed (float* pd = dOutput, pi = input, pg = dInput)
        {
            float* xd = pd, xi = pi, xg = pg;
            CpuParallel.For(input.Length, MinPerRange, (start, end) =>
            {
                Span<float> buffers = stackalloc float[4 * Chunk];
                for (int i = start; i < end; i += Chunk)
                {
                    int len = Math.Min(Chunk, end - i);
                    // gelu' is exactly 0 (x < −Saturation) or 1 (x > Saturation) in fp32 beyond ±Saturation;
                    // clamping first keeps x² finite, so 0·∞ cannot make a NaN for huge |x|.
                    var x = buffers.Slice(3 * Chunk, len);
                    TensorPrimitives.Min(new ReadOnlySpan<float>(xi + i, len), Saturation, x);
                    TensorPrimitives.Max(x, -Saturation, x);
                    var square = buffers.Slice(0, len);
                    var sig = buffers.Slice(Chunk, len);
                    var deriv = buffers.Slice(2 * Chunk, len);
                    TensorPrimitives.Multiply(x, x, square);                                           // x²
                    TensorPrimitives.Multiply(square, TwoSqrtTwoOverPi * Cubic, sig);
                    TensorPrimitives.Add(sig, TwoSqrtTwoOverPi, sig);
                    TensorPrimitives.Multiply(sig, x, sig);                                            // 2u
                    TensorPrimitives.Sigmoid(sig, sig);                                                // σ(2u)
                    TensorPrimitives.Multiply(square, 3f * TwoSqrtTwoOverPi * Cubic, square);
                    TensorPrimitives.Add(square, TwoSqrtTwoOverPi, square);                            // 2u'
                    TensorPrimitives.Subtract(1f, sig, deriv);                                         // 1 − σ
                    TensorPrimitives.Multiply(deriv, sig, deriv);                                      // σ(1 − σ)
                    TensorPrimitives.Multiply(deriv, square, deriv);                                   // σ(1 − σ)·2u'
                    TensorPrimitives.FusedMultiplyAdd(deriv, x, sig, deriv);                           // σ + x·σ(1 − σ)·2u'
                    var g = new Span<float>(xg + i, len);
                    TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<float>(xd + i, len), deriv, g, g);
                }
            });
        }
    }
}
