using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>16 fp32 lanes in one AVX-512 register (zmm).</summary>
internal readonly struct Vector512Lanes : IFloatVector<Vector512Lanes>
{
    private readonly Vector512<float> value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector512Lanes(Vector512<float> value) => this.value = value;

    /// <summary>The lanes as a Vector512.</summary>
    public Vector512<float> Value
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => value;
    }

    public static bool MultiplyAddIsFused => true;
    public static int Count => 16;
    public static bool IsHardwareAccelerated => Vector512.IsHardwareAccelerated;
    public static Vector512Lanes Zero
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => new(Vector512<float>.Zero);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes Create(float value) => new(Vector512.Create(value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector512Lanes Load(float* source) => new(Vector512.Load(source));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public unsafe void Store(float* destination) => value.Store(destination);

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes operator +(Vector512Lanes left, Vector512Lanes right) => new(left.value + right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes operator -(Vector512Lanes left, Vector512Lanes right) => new(left.value - right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes operator *(Vector512Lanes left, Vector512Lanes right) => new(left.value * right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes operator /(Vector512Lanes left, Vector512Lanes right) => new(left.value / right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes operator -(Vector512Lanes value) => new(-value.value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512Lanes MultiplyAdd(Vector512Lanes a, Vector512Lanes b, Vector512Lanes c) => new(Vector512.FusedMultiplyAdd(a.value, b.value, c.value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes MaxNative(Vector512Lanes left, Vector512Lanes right) => new(Vector512.MaxNative(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes MinNative(Vector512Lanes left, Vector512Lanes right) => new(Vector512.MinNative(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes Sqrt(Vector512Lanes value) => new(Vector512.Sqrt(value.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes Round(Vector512Lanes value) => new(Vector512.Round(value.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector512Lanes value) => Vector512.Sum(value.value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumAsDouble(Vector512Lanes value) => Vector512.Sum(Vector512.WidenLower(value.value) + Vector512.WidenUpper(value.value));

    public static float MaxAcross(Vector512Lanes value)
    {
        float max = value.value[0];
        for (int i = 1; i < 16; i++) max = MathF.Max(max, value.value[i]);
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes LessThan(Vector512Lanes left, Vector512Lanes right) => new(Vector512.LessThan(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes GreaterThan(Vector512Lanes left, Vector512Lanes right) => new(Vector512.GreaterThan(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes EqualTo(Vector512Lanes left, Vector512Lanes right) => new(Vector512.Equals(left.value, right.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes Select(Vector512Lanes mask, Vector512Lanes ifTrue, Vector512Lanes ifFalse) => new(Vector512.ConditionalSelect(mask.value, ifTrue.value, ifFalse.value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512Lanes LastLanes(int count) => new(Vector512.GreaterThanOrEqual(Vector512<int>.Indices, Vector512.Create(16 - count)).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512Lanes ShiftBitsLeft(Vector512Lanes value, [ConstantExpected(Min = 1, Max = 31)] int count) => new((value.value.AsInt32() << count).AsSingle());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512Lanes ScaleByPowerOfTwo(Vector512Lanes p, Vector512Lanes n)
    {
        if (Avx512F.IsSupported) return new(Avx512F.Scale(p.value, n.value));   // vscalefps: one rounding
        var exponent = Vector512.ConvertToInt32Native(n.value);
        var half = exponent >> 1;                       // ⌊n/2⌋
        var bias = Vector512.Create(127);
        var first = ((half + bias) << 23).AsSingle();    // 2^⌊n/2⌋, a normal float
        var second = ((exponent - half + bias) << 23).AsSingle();
        return new(p.value * first * second);           // exact, then one rounding
    }
}
