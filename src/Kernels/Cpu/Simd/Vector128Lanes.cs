using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>4 fp32 lanes in one SSE or NEON register: what ARM64 and x86 CPUs without AVX2 run.</summary>
internal readonly struct Vector128Lanes : IFloatVector<Vector128Lanes>
{
    private readonly Vector128<float> value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector128Lanes(Vector128<float> value) => this.value = value;

    /// <summary>The lanes as a Vector128.</summary>
    public Vector128<float> Value
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => value;
    }

    public static bool MultiplyAddIsFused => System.Runtime.Intrinsics.X86.Fma.IsSupported || System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported;
    public static int Count => 4;
    public static bool IsHardwareAccelerated => Vector128.IsHardwareAccelerated;
    public static Vector128Lanes Zero
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => new(Vector128<float>.Zero);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes Create(float value) => new(Vector128.Create(value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector128Lanes Load(float* source) => new(Vector128.Load(source));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public unsafe void Store(float* destination) => value.Store(destination);

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes operator +(Vector128Lanes left, Vector128Lanes right) => new(left.value + right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes operator -(Vector128Lanes left, Vector128Lanes right) => new(left.value - right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes operator *(Vector128Lanes left, Vector128Lanes right) => new(left.value * right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes operator /(Vector128Lanes left, Vector128Lanes right) => new(left.value / right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes operator -(Vector128Lanes value) => new(-value.value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128Lanes MultiplyAdd(Vector128Lanes a, Vector128Lanes b, Vector128Lanes c) => new(Vector128.MultiplyAddEstimate(a.value, b.value, c.value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes MaxNative(Vector128Lanes left, Vector128Lanes right) => new(Vector128.MaxNative(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes MinNative(Vector128Lanes left, Vector128Lanes right) => new(Vector128.MinNative(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes Sqrt(Vector128Lanes value) => new(Vector128.Sqrt(value.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes Round(Vector128Lanes value) => new(Vector128.Round(value.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector128Lanes value) => Vector128.Sum(value.value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumAsDouble(Vector128Lanes value) => Vector128.Sum(Vector128.WidenLower(value.value) + Vector128.WidenUpper(value.value));

    public static float MaxAcross(Vector128Lanes value)
    {
        float max = value.value[0];
        for (int i = 1; i < 4; i++) max = MathF.Max(max, value.value[i]);
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes LessThan(Vector128Lanes left, Vector128Lanes right) => new(Vector128.LessThan(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes GreaterThan(Vector128Lanes left, Vector128Lanes right) => new(Vector128.GreaterThan(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes EqualTo(Vector128Lanes left, Vector128Lanes right) => new(Vector128.Equals(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes Select(Vector128Lanes mask, Vector128Lanes ifTrue, Vector128Lanes ifFalse) => new(Vector128.ConditionalSelect(mask.value, ifTrue.value, ifFalse.value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128Lanes LastLanes(int count) => new(Vector128.GreaterThanOrEqual(Vector128<int>.Indices, Vector128.Create(4 - count)).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128Lanes ShiftBitsLeft(Vector128Lanes value, [ConstantExpected(Min = 1, Max = 31)] int count) => new((value.value.AsInt32() << count).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128Lanes ScaleByPowerOfTwo(Vector128Lanes p, Vector128Lanes n)
    {
        var exponent = Vector128.ConvertToInt32Native(n.value);
        var half = exponent >> 1;                       // ⌊n/2⌋
        var bias = Vector128.Create(127);
        var first = ((half + bias) << 23).AsSingle();    // 2^⌊n/2⌋, a normal float
        var second = ((exponent - half + bias) << 23).AsSingle();
        return new(p.value * first * second);           // exact, then one rounding
    }
}
