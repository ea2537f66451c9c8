using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// The device fp32 → bf16 rounding (mixed-precision GEMM inputs) bit for bit against the CPU conversion, per
/// backend (the CUDA case is skipped with the reason on a machine without a GPU).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuBFloat16Tests(string backend)
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

        var accelerator = GpuBackend.Get(backend);
        var converter = new GpuBFloat16(accelerator);
        using var source = accelerator.Allocate1D(input);
        using var bf16 = accelerator.Allocate1D<ushort>(input.Length);
        using var back = accelerator.Allocate1D<float>(input.Length);
        converter.ToBFloat16(source.View, bf16.View);
        converter.ToFloat(bf16.View, back.View);
        accelerator.Synchronize();
        var bits = bf16.GetAsArray1D();
        var widened = back.GetAsArray1D();
        for (int i = 0; i < input.Length; i++)
        {
            Assert.That(bits[i], Is.EqualTo(expected[i]), $"bf16({input[i]:R}) bits 0x{BitConverter.SingleToUInt32Bits(input[i]):X8}");
            Assert.That(BitConverter.SingleToUInt32Bits(widened[i]), Is.EqualTo((uint)expected[i] << 16), "widening is exact");
        }
    }
}
