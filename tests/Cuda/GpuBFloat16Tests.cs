using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Gpu;
using static DistAlign.Tests.Kernels.Gpu.GpuTest;

namespace DistAlign.Tests.Cuda;

/// <summary>The device fp32 → bf16 rounding (mixed-precision GEMM inputs) bit for bit against the CPU conversion.</summary>
public class GpuBFloat16Tests
{
    [Test]
    public void RoundingMatchesTheCpuConversionBitForBit()
    {
        var rng = new Random(7);
        var values = new List<float> { 0f, -0f, 1f, -1f, float.Epsilon, -float.Epsilon, float.MaxValue, float.MinValue,
            float.PositiveInfinity, float.NegativeInfinity, float.NaN, BitConverter.UInt32BitsToSingle(0xFFC1_2345),
            BitConverter.UInt32BitsToSingle(0x3F80_8000), BitConverter.UInt32BitsToSingle(0x3F81_8000),   // ties: to even (down, up)
            BitConverter.UInt32BitsToSingle(0x7F7F_FFFF), 1.00390625f, 3.1415927f };
        for (int i = 0; i < 2000; i++) values.Add(BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32)));
        var input = values.ToArray();
        var expected = input.Select(HalfPrecision.ToBFloat16Bits).ToArray();

        var converter = new GpuBFloat16(Accelerator);
        using var source = Up(input);
        using var bf16 = Up(new ushort[input.Length]);
        using var back = Up(new float[input.Length]);
        converter.ToBFloat16(V(source, input), V(bf16, input.Length));
        converter.ToFloat(V(bf16, input.Length), V(back, input.Length));
        var bits = Down(bf16, input.Length);
        var widened = Down(back, input.Length);
        for (int i = 0; i < input.Length; i++)
        {
            Assert.That(bits[i], Is.EqualTo(expected[i]), $"bf16({input[i]:R}) bits 0x{BitConverter.SingleToUInt32Bits(input[i]):X8}");
            Assert.That(BitConverter.SingleToUInt32Bits(widened[i]), Is.EqualTo((uint)expected[i] << 16), "widening is exact");
        }
    }
}
