using DistAlign.Engine.SafeTensors;

namespace DistAlign.Tests.Engine;

public class HalfPrecisionTests
{
    [TestCase(1.0f, (ushort)0x3F80)]
    [TestCase(-2.5f, (ushort)0xC020)]
    [TestCase(0.0f, (ushort)0x0000)]
    [TestCase(-0.0f, (ushort)0x8000)]
    [TestCase(float.PositiveInfinity, (ushort)0x7F80)]
    [TestCase(float.NegativeInfinity, (ushort)0xFF80)]
    [TestCase(float.MaxValue, (ushort)0x7F80)] // rounds up past the largest bf16: infinity
    public void FloatToBFloat16KnownValues(float value, ushort expected) =>
        Assert.That(HalfPrecision.ToBFloat16Bits(value), Is.EqualTo(expected));

    [TestCase(0x3F808000u, (ushort)0x3F80)] // exactly halfway, even below: stays
    [TestCase(0x3F818000u, (ushort)0x3F82)] // exactly halfway, odd below: rounds up to even
    [TestCase(0x3F808001u, (ushort)0x3F81)] // just above halfway: up
    [TestCase(0x3F807FFFu, (ushort)0x3F80)] // just below halfway: down
    [TestCase(0x000116C2u, (ushort)0x0001)] // float subnormal rounds to the nearest bf16 subnormal
    [TestCase(0x00008000u, (ushort)0x0000)] // halfway to the smallest subnormal: ties to even (zero)
    [TestCase(0x80018000u, (ushort)0x8002)] // negative subnormal, tie to even
    public void FloatToBFloat16RoundsToNearestEven(uint floatBits, ushort expected) =>
        Assert.That(HalfPrecision.ToBFloat16Bits(BitConverter.UInt32BitsToSingle(floatBits)), Is.EqualTo(expected));

    [Test]
    public void BFloat16NaNStaysNaN()
    {
        Assert.That(HalfPrecision.ToBFloat16Bits(float.NaN) & 0x7FFF, Is.GreaterThan(0x7F80));
        // A NaN whose payload lives only in the low 16 bits must not turn into infinity.
        ushort bits = HalfPrecision.ToBFloat16Bits(BitConverter.UInt32BitsToSingle(0x7F800001));
        Assert.That(float.IsNaN(HalfPrecision.FromBFloat16Bits(bits)), Is.True);
        Assert.That(bits & 0x8000, Is.EqualTo(0));
        ushort negative = HalfPrecision.ToBFloat16Bits(BitConverter.UInt32BitsToSingle(0xFFC00000));
        Assert.That(negative, Is.EqualTo((ushort)0xFFC0));
    }

    [TestCase((ushort)0x3F80, 1.0f)]
    [TestCase((ushort)0xC020, -2.5f)]
    [TestCase((ushort)0x7F80, float.PositiveInfinity)]
    [TestCase((ushort)0x0001, 9.18354962e-41f)] // smallest bf16 subnormal, 2^-133
    public void BFloat16ToFloatIsExact(ushort bits, float expected) =>
        Assert.That(HalfPrecision.FromBFloat16Bits(bits), Is.EqualTo(expected));

    [TestCase(1.0f, (ushort)0x3C00)]
    [TestCase(-2.5f, (ushort)0xC100)]
    [TestCase(65504f, (ushort)0x7BFF)]           // largest finite half
    [TestCase(65520f, (ushort)0x7C00)]           // halfway to 65536: ties to even, which is infinity
    [TestCase(float.PositiveInfinity, (ushort)0x7C00)]
    [TestCase(float.NegativeInfinity, (ushort)0xFC00)]
    [TestCase(5.9604645e-8f, (ushort)0x0001)]    // 2^-24, smallest half subnormal
    [TestCase(2.9802322e-8f, (ushort)0x0000)]    // 2^-25, halfway: ties to even (zero)
    [TestCase(4.4703484e-8f, (ushort)0x0001)]    // 0.75 * 2^-24: nearest is the smallest subnormal
    [TestCase(1.00048828125f, (ushort)0x3C00)]   // 1 + 2^-11, halfway: ties to even
    [TestCase(1.00146484375f, (ushort)0x3C02)]   // 1 + 3*2^-11, halfway: ties to even (up)
    public void FloatToFloat16KnownValues(float value, ushort expected) =>
        Assert.That(HalfPrecision.ToFloat16Bits(value), Is.EqualTo(expected));

    [Test]
    public void Float16NaNAndRoundTrip()
    {
        Assert.That(float.IsNaN(HalfPrecision.FromFloat16Bits(HalfPrecision.ToFloat16Bits(float.NaN))), Is.True);
        for (int bits = 0; bits <= 0xFFFF; bits++)
        {
            float f = HalfPrecision.FromFloat16Bits((ushort)bits);
            if (float.IsNaN(f)) continue;
            Assert.That(HalfPrecision.ToFloat16Bits(f), Is.EqualTo((ushort)bits), $"0x{bits:X4}");
        }
    }

    [Test]
    public void BFloat16RoundTripsEveryNonNaNPattern()
    {
        for (int bits = 0; bits <= 0xFFFF; bits++)
        {
            float f = HalfPrecision.FromBFloat16Bits((ushort)bits);
            if (float.IsNaN(f)) continue;
            if (HalfPrecision.ToBFloat16Bits(f) != (ushort)bits) Assert.Fail($"0x{bits:X4} did not round-trip");
        }
    }
}
