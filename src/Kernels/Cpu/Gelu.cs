using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// GELU, tanh approximation (GPT-2's):
///   gelu(x) = 0.5·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³).
/// Because 0.5·(1 + tanh(u)) = σ(2u), this is computed as gelu(x) = x·σ(2u), which stays finite for any
/// finite x (σ saturates to 0 or 1, no inf/inf).
/// Backward: gelu'(x) = σ(2u) + x·σ(2u)·(1 − σ(2u))·2u'(x),  2u'(x) = 2√(2/π)·(1 + 3·0.044715·x²);
/// dinp += dout·gelu'(x) (accumulates).
/// One fused Vector512 pass each way (a TensorPrimitives chain needs ~6 passes over a chunk and runs
/// ~2× slower here); range tails go through the same vector code (see ForwardRange), so results are
/// bit-identical for any thread count.
/// </summary>
public static class Gelu
{
    private const float TwoSqrtTwoOverPi = 2f * 0.7978845608028654f;
    private const float Cubic = 0.044715f;
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
            CpuParallel.For(input.Length, MinPerRange, (start, end) => ForwardRange(xi, xo, start, end));
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
            CpuParallel.For(input.Length, MinPerRange, (start, end) => BackwardRange(xd, xi, xg, start, end));
        }
    }

    // Range tails: the last 16 elements of a range are computed as one (overlapping) vector BEFORE the
    // main loop, from the original inputs, and stored after it: elements in the overlap get the same bits
    // twice, and in-place use (output = input, or dx +=) stays correct. Ranges shorter than 16 take a
    // padded-vector path. Either way every element goes through the vector code.

    private static unsafe void ForwardRange(float* x, float* o, int start, int end)
    {
        if (end - start < 16)
        {
            ShortForward(x + start, o + start, end - start);
            return;
        }
        var last = Value(Vector512.Load(x + end - 16));
        for (int i = start; i <= end - 16; i += 16) Value(Vector512.Load(x + i)).Store(o + i);
        last.Store(o + end - 16);
    }

    private static unsafe void BackwardRange(float* d, float* x, float* g, int start, int end)
    {
        if (end - start < 16)
        {
            ShortBackward(d + start, x + start, g + start, end - start);
            return;
        }
        var last = Vector512.FusedMultiplyAdd(Vector512.Load(d + end - 16), Derivative(Vector512.Load(x + end - 16)), Vector512.Load(g + end - 16));
        for (int i = start; i <= end - 16; i += 16)
            Vector512.FusedMultiplyAdd(Vector512.Load(d + i), Derivative(Vector512.Load(x + i)), Vector512.Load(g + i)).Store(g + i);
        last.Store(g + end - 16);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe void ShortForward(float* x, float* o, int count) =>
        VectorTail.Store(Value(VectorTail.Load(x, count, 0f)), o, count);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe void ShortBackward(float* d, float* x, float* g, int count) =>
        VectorTail.Store(Vector512.FusedMultiplyAdd(VectorTail.Load(d, count, 0f), Derivative(VectorTail.Load(x, count, 0f)), VectorTail.Load(g, count, 0f)), g, count);

    /// <summary>x·σ(2u), 2u = x·(2√(2/π) + 2√(2/π)·0.044715·x²).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Value(Vector512<float> x)
    {
        var twoU = x * Vector512.FusedMultiplyAdd(x * x, Vector512.Create(TwoSqrtTwoOverPi * Cubic), Vector512.Create(TwoSqrtTwoOverPi));
        return x / (Vector512<float>.One + VectorExp.Exp(-twoU));   // x·σ(2u); exp → ∞ gives x/∞ = 0
    }

    /// <summary>gelu'(x) = σ + x·σ(1 − σ)·2u', with x clamped to ±20 first so x² stays finite (exact in fp32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Derivative(Vector512<float> x)
    {
        x = Vector512.Min(Vector512.Max(x, Vector512.Create(-Saturation)), Vector512.Create(Saturation));
        var square = x * x;
        var twoU = x * Vector512.FusedMultiplyAdd(square, Vector512.Create(TwoSqrtTwoOverPi * Cubic), Vector512.Create(TwoSqrtTwoOverPi));
        var twoUPrime = Vector512.FusedMultiplyAdd(square, Vector512.Create(3f * TwoSqrtTwoOverPi * Cubic), Vector512.Create(TwoSqrtTwoOverPi));
        var sigma = Vector512<float>.One / (Vector512<float>.One + VectorExp.Exp(-twoU));
        return Vector512.FusedMultiplyAdd(x * sigma * (Vector512<float>.One - sigma), twoUPrime, sigma);
    }
}
