using System.Runtime.CompilerServices;

namespace DistAlign.Engine.SafeTensors;

/// <summary>Conversions between float and the 16-bit storage formats bfloat16 and IEEE binary16, as bit patterns.</summary>
public static class HalfPrecision
{
    /// <summary>
    /// Rounds a float to bfloat16 (round to nearest, ties to even). NaN stays a quiet NaN with its sign; values
    /// beyond the bfloat16 range become ±infinity; subnormals round like any other value.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToBFloat16Bits(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFF) > 0x7F80_0000)
            return (ushort)((bits >> 16) | 0x0040); // keep sign and top payload, force quiet bit
        uint roundingBias = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + roundingBias) >> 16);
    }

    /// <summary>Widens bfloat16 bits to a float (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromBFloat16Bits(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Rounds a float to IEEE binary16 (round to nearest, ties to even; overflow to ±infinity).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToFloat16Bits(float value) => BitConverter.HalfToUInt16Bits((Half)value);

    /// <summary>Widens IEEE binary16 bits to a float (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromFloat16Bits(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    /// <summary>Converts <paramref name="source"/> to bfloat16 bits element-wise.</summary>
    public static void ToBFloat16Bits(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        CheckLengths(source.Length, destination.Length);
        for (int i = 0; i < source.Length; i++) destination[i] = ToBFloat16Bits(source[i]);
    }

    /// <summary>Converts bfloat16 bits to floats element-wise.</summary>
    public static void FromBFloat16Bits(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        CheckLengths(source.Length, destination.Length);
        for (int i = 0; i < source.Length; i++) destination[i] = FromBFloat16Bits(source[i]);
    }

    /// <summary>Converts <paramref name="source"/> to IEEE binary16 bits element-wise.</summary>
    public static void ToFloat16Bits(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        CheckLengths(source.Length, destination.Length);
        for (int i = 0; i < source.Length; i++) destination[i] = ToFloat16Bits(source[i]);
    }

    /// <summary>Converts IEEE binary16 bits to floats element-wise.</summary>
    public static void FromFloat16Bits(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        CheckLengths(source.Length, destination.Length);
        for (int i = 0; i < source.Length; i++) destination[i] = FromFloat16Bits(source[i]);
    }

    private static void CheckLengths(int source, int destination)
    {
        if (source != destination)
            throw new ArgumentException($"Source has {source} elements but destination has {destination}; they must match.");
    }
}
