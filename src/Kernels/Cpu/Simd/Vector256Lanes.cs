using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>8 fp32 lanes in one AVX register (ymm); chosen where AVX2 is the widest accelerated width.</summary>
internal readonly struct Vector256Lanes : IFloatVector<Vector256Lanes>
{
    private readonly Vector256<float> value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector256Lanes(Vector256<float> value) => this.value = value;

    /// <summary>The lanes as a Vector256.</summary>
    public Vector256<float> Value
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => value;
    }

    public static bool MultiplyAddIsFused => System.Runtime.Intrinsics.X86.Fma.IsSupported;
    public static int Count => 8;
    public static bool IsHardwareAccelerated => Vector256.IsHardwareAccelerated;
    public static Vector256Lanes Zero
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => new(Vector256<float>.Zero);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes Create(float value) => new(Vector256.Create(value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector256Lanes Load(float* source) => new(Vector256.Load(source));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public unsafe void Store(float* destination) => value.Store(destination);

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes operator +(Vector256Lanes left, Vector256Lanes right) => new(left.value + right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes operator -(Vector256Lanes left, Vector256Lanes right) => new(left.value - right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes operator *(Vector256Lanes left, Vector256Lanes right) => new(left.value * right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes operator /(Vector256Lanes left, Vector256Lanes right) => new(left.value / right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes operator -(Vector256Lanes value) => new(-value.value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256Lanes MultiplyAdd(Vector256Lanes a, Vector256Lanes b, Vector256Lanes c) => new(Vector256.MultiplyAddEstimate(a.value, b.value, c.value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes MaxNative(Vector256Lanes left, Vector256Lanes right) => new(Vector256.MaxNative(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes MinNative(Vector256Lanes left, Vector256Lanes right) => new(Vector256.MinNative(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes Sqrt(Vector256Lanes value) => new(Vector256.Sqrt(value.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes Round(Vector256Lanes value) => new(Vector256.Round(value.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector256Lanes value) => Vector256.Sum(value.value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumAsDouble(Vector256Lanes value) => Vector256.Sum(Vector256.WidenLower(value.value) + Vector256.WidenUpper(value.value));

    public static float MaxAcross(Vector256Lanes value)
    {
        float max = value.value[0];
        for (int i = 1; i < 8; i++) max = MathF.Max(max, value.value[i]);
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes LessThan(Vector256Lanes left, Vector256Lanes right) => new(Vector256.LessThan(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes GreaterThan(Vector256Lanes left, Vector256Lanes right) => new(Vector256.GreaterThan(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes EqualTo(Vector256Lanes left, Vector256Lanes right) => new(Vector256.Equals(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes Select(Vector256Lanes mask, Vector256Lanes ifTrue, Vector256Lanes ifFalse) => new(Vector256.ConditionalSelect(mask.value, ifTrue.value, ifFalse.value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256Lanes LastLanes(int count) => new(Vector256.GreaterThanOrEqual(Vector256<int>.Indices, Vector256.Create(8 - count)).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256Lanes ShiftBitsLeft(Vector256Lanes value, [ConstantExpected(Min = 1, Max = 31)] int count) => new((value.value.AsInt32() << count).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256Lanes ScaleByPowerOfTwo(Vector256Lanes p, Vector256Lanes n)
    {
        var exponent = Vector256.ConvertToInt32Native(n.value);
        var half = exponent >> 1;                       // ⌊n/2⌋
        var bias = Vector256.Create(127);
        var first = ((half + bias) << 23).AsSingle();    // 2^⌊n/2⌋, a normal float
        var second = ((exponent - half + bias) << 23).AsSingle();
        return new(p.value * first * second);           // exact, then one rounding
    }
}
