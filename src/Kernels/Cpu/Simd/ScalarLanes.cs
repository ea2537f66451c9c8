using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>
/// One fp32 "lane" in plain scalar code: what the kernels run where no vector width is accelerated (.NET started with
/// <c>DOTNET_EnableHWIntrinsic=0</c>, or a platform without SIMD support), instead of a software-emulated Vector128. Every
/// generic kernel runs unchanged with Count = 1; multiply-add is a multiply and an add (a software FMA would be emulated), so
/// the kernels take their unfused forms. Masks are floats whose bits are all ones (true) or zero (false), as a vector's lanes.
/// </summary>
internal readonly struct ScalarLanes : IFloatVector<ScalarLanes>
{
    private readonly float value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ScalarLanes(float value) => this.value = value;

    /// <summary>The lane as a float.</summary>
    public float Value
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => value;
    }

    private static readonly float AllOnes = BitConverter.Int32BitsToSingle(-1);

    public static bool MultiplyAddIsFused => false;
    public static int Count => 1;
    public static bool IsHardwareAccelerated => true;   // plain scalar instructions: nothing to emulate
    public static ScalarLanes Zero => new(0f);

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes Create(float value) => new(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe ScalarLanes Load(float* source) => new(*source);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public unsafe void Store(float* destination) => *destination = value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes operator +(ScalarLanes left, ScalarLanes right) => new(left.value + right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes operator -(ScalarLanes left, ScalarLanes right) => new(left.value - right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes operator *(ScalarLanes left, ScalarLanes right) => new(left.value * right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes operator /(ScalarLanes left, ScalarLanes right) => new(left.value / right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes operator -(ScalarLanes value) => new(-value.value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ScalarLanes MultiplyAdd(ScalarLanes a, ScalarLanes b, ScalarLanes c) => new(a.value * b.value + c.value);

    // As maxss/minss: the second operand when either is NaN (a comparison with NaN is false).
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes MaxNative(ScalarLanes left, ScalarLanes right) => left.value > right.value ? left : right;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes MinNative(ScalarLanes left, ScalarLanes right) => left.value < right.value ? left : right;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes Sqrt(ScalarLanes value) => new(MathF.Sqrt(value.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes Round(ScalarLanes value) => new(MathF.Round(value.value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(ScalarLanes value) => value.value;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static double SumAsDouble(ScalarLanes value) => value.value;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float MaxAcross(ScalarLanes value) => value.value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes LessThan(ScalarLanes left, ScalarLanes right) => Mask(left.value < right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes GreaterThan(ScalarLanes left, ScalarLanes right) => Mask(left.value > right.value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes EqualTo(ScalarLanes left, ScalarLanes right) => Mask(left.value == right.value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ScalarLanes Select(ScalarLanes mask, ScalarLanes ifTrue, ScalarLanes ifFalse)
    {
        int m = BitConverter.SingleToInt32Bits(mask.value);
        return new(BitConverter.Int32BitsToSingle((BitConverter.SingleToInt32Bits(ifTrue.value) & m) | (BitConverter.SingleToInt32Bits(ifFalse.value) & ~m)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes LastLanes(int count) => Mask(count >= 1);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ScalarLanes ShiftBitsLeft(ScalarLanes value, [ConstantExpected(Min = 1, Max = 31)] int count) =>
        new(BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(value.value) << count));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ScalarLanes ScaleByPowerOfTwo(ScalarLanes p, ScalarLanes n)
    {
        if (float.IsNaN(n.value)) return new(float.NaN);
        int exponent = (int)n.value;
        int half = exponent >> 1;                                                 // ⌊n/2⌋
        float first = BitConverter.Int32BitsToSingle((half + 127) << 23);        // 2^⌊n/2⌋, a normal float
        float second = BitConverter.Int32BitsToSingle((exponent - half + 127) << 23);
        return new(p.value * first * second);                                     // exact, then one rounding
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ScalarLanes Mask(bool condition) => new(condition ? AllOnes : 0f);
}

/// <summary><see cref="IRegisterTile{TVector}"/> on single floats: the register tiles of <see cref="ScalarLanes"/>.</summary>
internal readonly struct RegisterTileScalar : IRegisterTile<float, ScalarLanes>
{
    public static int Count => 1;
    public static float Zero => 0f;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe float Load(float* source) => *source;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Broadcast(float value) => value;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float MultiplyAdd(float a, float b, float c) => a * b + c;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static ScalarLanes Lanes(float value) => new(value);
}
