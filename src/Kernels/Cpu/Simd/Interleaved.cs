using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>
/// Two independent vectors of <typeparamref name="TVector"/> treated as one of twice the width, every operation applied to
/// both halves in turn. Written once over <see cref="IFloatVector{TSelf}"/>, an exp-bound kernel (GELU, the exp of
/// log-softmax statistics) runs one dependency chain of ~35 operations per vector; the JIT emits each chain in order, and
/// the out-of-order core only overlaps as many chains as its floating-point scheduler holds (measured on a Zen 4: a GELU
/// forward took ~23 cycles per 8 lanes, twice its instruction count). Run over this type, the kernel's source stays the
/// same and its generated code alternates the two chains instruction by instruction, so each latency is hidden by the
/// other chain's work. Lane i of the pair is lane i of <c>Low</c> for i &lt; TVector.Count, else lane i − TVector.Count of
/// <c>High</c>; results are bit-identical to running the halves one after the other.
/// </summary>
internal readonly struct Interleaved<TVector> : IFloatVector<Interleaved<TVector>> where TVector : unmanaged, IFloatVector<TVector>
{
    private readonly TVector low, high;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Interleaved(TVector low, TVector high)
    {
        this.low = low;
        this.high = high;
    }

    /// <summary>Lanes 0 … TVector.Count − 1.</summary>
    public TVector Low => low;

    /// <summary>Lanes TVector.Count … Count − 1.</summary>
    public TVector High => high;

    public static bool MultiplyAddIsFused => TVector.MultiplyAddIsFused;
    public static int Count => 2 * TVector.Count;
    public static bool IsHardwareAccelerated => TVector.IsHardwareAccelerated;
    public static Interleaved<TVector> Zero
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => new(TVector.Zero, TVector.Zero);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> Create(float value) => new(TVector.Create(value), TVector.Create(value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Interleaved<TVector> Load(float* source) => new(TVector.Load(source), TVector.Load(source + TVector.Count));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public unsafe void Store(float* destination)
    {
        low.Store(destination);
        high.Store(destination + TVector.Count);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> operator +(Interleaved<TVector> left, Interleaved<TVector> right) => new(left.low + right.low, left.high + right.high);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> operator -(Interleaved<TVector> left, Interleaved<TVector> right) => new(left.low - right.low, left.high - right.high);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> operator *(Interleaved<TVector> left, Interleaved<TVector> right) => new(left.low * right.low, left.high * right.high);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> operator /(Interleaved<TVector> left, Interleaved<TVector> right) => new(left.low / right.low, left.high / right.high);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> operator -(Interleaved<TVector> value) => new(-value.low, -value.high);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Interleaved<TVector> MultiplyAdd(Interleaved<TVector> a, Interleaved<TVector> b, Interleaved<TVector> c) =>
        new(TVector.MultiplyAdd(a.low, b.low, c.low), TVector.MultiplyAdd(a.high, b.high, c.high));

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> MaxNative(Interleaved<TVector> left, Interleaved<TVector> right) => new(TVector.MaxNative(left.low, right.low), TVector.MaxNative(left.high, right.high));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> MinNative(Interleaved<TVector> left, Interleaved<TVector> right) => new(TVector.MinNative(left.low, right.low), TVector.MinNative(left.high, right.high));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> Sqrt(Interleaved<TVector> value) => new(TVector.Sqrt(value.low), TVector.Sqrt(value.high));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> Round(Interleaved<TVector> value) => new(TVector.Round(value.low), TVector.Round(value.high));

    /// <summary>The low half's sum plus the high half's (not the order of one vector of twice the width).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Interleaved<TVector> value) => TVector.Sum(value.low) + TVector.Sum(value.high);

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static double SumAsDouble(Interleaved<TVector> value) => TVector.SumAsDouble(value.low) + TVector.SumAsDouble(value.high);
    public static float MaxAcross(Interleaved<TVector> value) => MathF.Max(TVector.MaxAcross(value.low), TVector.MaxAcross(value.high));

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> LessThan(Interleaved<TVector> left, Interleaved<TVector> right) => new(TVector.LessThan(left.low, right.low), TVector.LessThan(left.high, right.high));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> GreaterThan(Interleaved<TVector> left, Interleaved<TVector> right) => new(TVector.GreaterThan(left.low, right.low), TVector.GreaterThan(left.high, right.high));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Interleaved<TVector> EqualTo(Interleaved<TVector> left, Interleaved<TVector> right) => new(TVector.EqualTo(left.low, right.low), TVector.EqualTo(left.high, right.high));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Interleaved<TVector> Select(Interleaved<TVector> mask, Interleaved<TVector> ifTrue, Interleaved<TVector> ifFalse) =>
        new(TVector.Select(mask.low, ifTrue.low, ifFalse.low), TVector.Select(mask.high, ifTrue.high, ifFalse.high));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Interleaved<TVector> LastLanes(int count) =>
        new(TVector.LastLanes(Math.Max(0, count - TVector.Count)), TVector.LastLanes(Math.Min(count, TVector.Count)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Interleaved<TVector> ShiftBitsLeft(Interleaved<TVector> value, [ConstantExpected(Min = 1, Max = 31)] int count) =>
        new(TVector.ShiftBitsLeft(value.low, count), TVector.ShiftBitsLeft(value.high, count));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Interleaved<TVector> ScaleByPowerOfTwo(Interleaved<TVector> p, Interleaved<TVector> n) =>
        new(TVector.ScaleByPowerOfTwo(p.low, n.low), TVector.ScaleByPowerOfTwo(p.high, n.high));
}
