using System.Runtime.CompilerServices;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// GELU, tanh approximation (GPT-2's):
///   gelu(x) = 0.5·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³).
/// Because 0.5·(1 + tanh(u)) = σ(2u), this is computed as gelu(x) = x·σ(2u), which stays finite for any
/// finite x (σ saturates to 0 or 1, no inf/inf).
/// Backward: gelu'(x) = σ(2u) + x·σ(2u)·(1 − σ(2u))·2u'(x),  2u'(x) = 2√(2/π)·(1 + 3·0.044715·x²);
/// dinp += dout·gelu'(x) (accumulates).
/// One fused vector pass each way (at the widest accelerated width, <see cref="CpuVectors"/>) (a TensorPrimitives chain needs ~6 passes over a chunk and runs
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

    // Range tails: the last Count elements of a range are computed as one (overlapping) vector BEFORE the
    // main loop, from the original inputs, and stored after it: elements in the overlap get the same bits
    // twice, and in-place use (output = input, or dx +=) stays correct. Ranges shorter than a vector take a
    // padded-vector path. Either way every element goes through the vector code.

    private static unsafe void ForwardRange(float* x, float* o, int start, int end)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: ForwardRange<Vector512Lanes>(x, o, start, end); break;
            case VectorWidth.Vector256: ForwardRange<Vector256Lanes>(x, o, start, end); break;
            case VectorWidth.Vector128: ForwardRange<Vector128Lanes>(x, o, start, end); break;
            default: ForwardRange<ScalarLanes>(x, o, start, end); break;
        }
    }

    private static unsafe void BackwardRange(float* d, float* x, float* g, int start, int end)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: BackwardRange<Vector512Lanes>(d, x, g, start, end); break;
            case VectorWidth.Vector256: BackwardRange<Vector256Lanes>(d, x, g, start, end); break;
            case VectorWidth.Vector128: BackwardRange<Vector128Lanes>(d, x, g, start, end); break;
            default: BackwardRange<ScalarLanes>(d, x, g, start, end); break;
        }
    }

    private static unsafe void ForwardRange<TVector>(float* x, float* o, int start, int end) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        if (end - start < width)
        {
            VectorTail.Store(Value(VectorTail.Load<TVector>(x + start, end - start, 0f)), o + start, end - start);
            return;
        }
        var last = Value(TVector.Load(x + end - width));
        int i = ForwardPairs<TVector>(x, o, start, end);
        if (i <= end - width) Value(TVector.Load(x + i)).Store(o + i);
        last.Store(o + end - width);
    }

    /// <summary>
    /// The bulk of a range, two vectors at a time with their exp chains interleaved (<see cref="Interleaved{TVector}"/>);
    /// returns where it stopped. A method of its own so the JIT's inlining budget covers the doubled chain (inlined
    /// into the range method, the operators of the pair were left as calls).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe int ForwardPairs<TVector>(float* x, float* o, int start, int end) where TVector : unmanaged, IFloatVector<TVector>
    {
        int step = 2 * TVector.Count, i = start;
        for (; i <= end - step; i += step) Value(Interleaved<TVector>.Load(x + i)).Store(o + i);
        return i;
    }

    private static unsafe void BackwardRange<TVector>(float* d, float* x, float* g, int start, int end) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        if (end - start < width)
        {
            int count = end - start;
            var dx = TVector.MultiplyAdd(VectorTail.Load<TVector>(d + start, count, 0f), Derivative(VectorTail.Load<TVector>(x + start, count, 0f)),
                VectorTail.Load<TVector>(g + start, count, 0f));
            VectorTail.Store(dx, g + start, count);
            return;
        }
        var last = TVector.MultiplyAdd(TVector.Load(d + end - width), Derivative(TVector.Load(x + end - width)), TVector.Load(g + end - width));
        int i = BackwardPairs<TVector>(d, x, g, start, end);
        if (i <= end - width) TVector.MultiplyAdd(TVector.Load(d + i), Derivative(TVector.Load(x + i)), TVector.Load(g + i)).Store(g + i);
        last.Store(g + end - width);
    }

    /// <summary>The bulk of a range as in <see cref="ForwardPairs{TVector}"/>.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe int BackwardPairs<TVector>(float* d, float* x, float* g, int start, int end) where TVector : unmanaged, IFloatVector<TVector>
    {
        int step = 2 * TVector.Count, i = start;
        for (; i <= end - step; i += step)
        {
            Interleaved<TVector>.MultiplyAdd(Interleaved<TVector>.Load(d + i), Derivative(Interleaved<TVector>.Load(x + i)),
                Interleaved<TVector>.Load(g + i)).Store(g + i);
        }
        return i;
    }

    /// <summary>x·σ(2u), 2u = x·(2√(2/π) + 2√(2/π)·0.044715·x²).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector Value<TVector>(TVector x) where TVector : unmanaged, IFloatVector<TVector>
    {
        // −2u directly (negated constants), so no negation waits in the chain.
        var minusTwoU = x * TVector.MultiplyAdd(x * x, TVector.Create(-TwoSqrtTwoOverPi * Cubic), TVector.Create(-TwoSqrtTwoOverPi));
        return VectorExp.DivideByOnePlusExp(x, minusTwoU);   // x·σ(2u); for 2u ≤ −88.72, x/∞ = ±0
    }

    /// <summary>gelu'(x) = σ + x·σ(1 − σ)·2u', with x clamped to ±20 first so x² stays finite (exact in fp32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector Derivative<TVector>(TVector x) where TVector : unmanaged, IFloatVector<TVector>
    {
        // NaN stays NaN: maxps/minps return their second operand, x, when it is NaN.
        x = TVector.MinNative(TVector.Create(Saturation), TVector.MaxNative(TVector.Create(-Saturation), x));
        var square = x * x;
        var minusTwoU = x * TVector.MultiplyAdd(square, TVector.Create(-TwoSqrtTwoOverPi * Cubic), TVector.Create(-TwoSqrtTwoOverPi));
        var twoUPrime = TVector.MultiplyAdd(square, TVector.Create(3f * TwoSqrtTwoOverPi * Cubic), TVector.Create(TwoSqrtTwoOverPi));
        var one = TVector.Create(1f);
        var sigma = VectorExp.DivideByOnePlusExp(one, minusTwoU);
        return TVector.MultiplyAdd(x * sigma * (one - sigma), twoUPrime, sigma);
    }
}
