using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// fp32 ↔ bf16 conversion on the device, for mixed precision: fp32 master weights and activations are rounded
/// to bf16 copies that the GEMMs read (cuBLAS with CUDA_R_16BF inputs and fp32 accumulation). Rounding is to
/// nearest, ties to even, NaN kept quiet with its sign: bit for bit <c>HalfPrecision.ToBFloat16Bits</c>.
/// One thread per element.
/// </summary>
public sealed class GpuBFloat16
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<ushort>> toBFloat16;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<float>> toFloat;
    private readonly Accelerator accelerator;

    public GpuBFloat16(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        toBFloat16 = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<ushort>>(ToBFloat16Kernel);
        toFloat = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<ushort>, ArrayView<float>>(ToFloatKernel);
    }

    /// <summary>destination[i] = bf16(source[i]) (bits).</summary>
    public void ToBFloat16(ArrayView<float> source, ArrayView<ushort> destination)
    {
        GpuLaunch.CheckLength(destination.Length, source.Length, nameof(destination), "same length as source");
        if (source.Length > 0) toBFloat16(accelerator.DefaultStream, (int)source.Length, source, destination);
    }

    /// <summary>destination[i] = float(source[i]) (exact).</summary>
    public void ToFloat(ArrayView<ushort> source, ArrayView<float> destination)
    {
        GpuLaunch.CheckLength(destination.Length, source.Length, nameof(destination), "same length as source");
        if (source.Length > 0) toFloat(accelerator.DefaultStream, (int)source.Length, source, destination);
    }

    /// <summary>
    /// The bf16 bits of <paramref name="value"/>: round to nearest, ties to even; NaN stays a quiet NaN with its sign.
    /// Callable from kernels (other kernels round their fp32 results with it, e.g. the LM head's bf16 d(logits)).
    /// </summary>
    public static ushort Round(float value)
    {
        uint bits = Interop.FloatAsInt(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u) return (ushort)((bits >> 16) | 0x0040u);
        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }

    [GpuKernel(false)]
    internal static void ToBFloat16Kernel(Index1D i, ArrayView<float> source, ArrayView<ushort> destination) =>
        destination[i] = Round(source[i]);

    [GpuKernel(false)]
    internal static void ToFloatKernel(Index1D i, ArrayView<ushort> source, ArrayView<float> destination) =>
        destination[i] = Interop.IntAsFloat((uint)source[i] << 16);
}
