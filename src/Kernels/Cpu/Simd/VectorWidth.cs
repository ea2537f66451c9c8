using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>A width of hardware vector the CPU kernels run at.</summary>
public enum VectorWidth
{
    /// <summary>1 fp32 lane in plain scalar code: where no vector width is accelerated (never an emulated vector).</summary>
    Scalar = 32,
    /// <summary>4 fp32 lanes: SSE on x86 without AVX2, NEON on ARM64.</summary>
    Vector128 = 128,
    /// <summary>8 fp32 lanes: AVX2 (+ FMA).</summary>
    Vector256 = 256,
    /// <summary>16 fp32 lanes: AVX-512.</summary>
    Vector512 = 512,
}

/// <summary>
/// Which <see cref="VectorWidth"/> the CPU kernels run at: the widest one this process accelerates (never an emulated one;
/// plain scalar code where none is),
/// unless tests or benchmarks pick a narrower accelerated one with <see cref="Use"/>. .NET decides what is accelerated at
/// start-up: <c>DOTNET_EnableAVX512=0</c> shows an AVX-512 CPU's AVX2 path, <c>DOTNET_EnableAVX2=0</c> its Vector128 path.
/// </summary>
public static class CpuVectors
{
    private static VectorWidth? chosen;

    /// <summary>The widest width whose vectors run in hardware here.</summary>
    public static VectorWidth Widest =>
        Vector512.IsHardwareAccelerated ? VectorWidth.Vector512
        : Vector256.IsHardwareAccelerated ? VectorWidth.Vector256
        : Vector128.IsHardwareAccelerated ? VectorWidth.Vector128
        : VectorWidth.Scalar;

    /// <summary>The width the kernels use now.</summary>
    public static VectorWidth Width => chosen ?? Widest;

    /// <summary>Every width this machine accelerates, widest first (what the tests run each kernel at).</summary>
    public static IReadOnlyList<VectorWidth> Accelerated { get; } =
        [.. new[] { VectorWidth.Vector512, VectorWidth.Vector256, VectorWidth.Vector128, VectorWidth.Scalar }.Where(IsAccelerated)];

    /// <summary>Whether vectors of <paramref name="width"/> run in hardware here.</summary>
    public static bool IsAccelerated(VectorWidth width) => width switch
    {
        VectorWidth.Vector512 => Vector512.IsHardwareAccelerated,
        VectorWidth.Vector256 => Vector256.IsHardwareAccelerated,
        VectorWidth.Vector128 => Vector128.IsHardwareAccelerated,
        _ => true,   // scalar instructions
    };

    /// <summary>
    /// Makes the kernels run at <paramref name="width"/> until the returned scope is disposed (process-wide: for tests and
    /// benchmarks that compare the paths one after another, never concurrently with other kernel calls).
    /// </summary>
    /// <exception cref="NotSupportedException">The width is not accelerated here (it would be emulated).</exception>
    public static IDisposable Use(VectorWidth width)
    {
        if (!IsAccelerated(width))
            throw new NotSupportedException($"{width} is not accelerated on this CPU (widest: {Widest}); the kernels never run an emulated width.");
        var previous = chosen;
        chosen = width;
        return new Restore(previous);
    }

    /// <summary>A one-line description, e.g. "Vector256 (AVX2 + FMA; widest accelerated: Vector512)".</summary>
    public static string Describe()
    {
        string isa = Width switch
        {
            VectorWidth.Vector512 => "AVX-512",
            VectorWidth.Vector256 => System.Runtime.Intrinsics.X86.Fma.IsSupported ? "AVX2 + FMA" : "AVX2",
            VectorWidth.Vector128 => System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported ? "NEON" : System.Runtime.Intrinsics.X86.Fma.IsSupported ? "SSE + FMA" : "SSE",
            _ => "no vector instructions",
        };
        return Width == Widest ? $"{Width} ({isa})" : $"{Width} ({isa}; widest accelerated: {Widest})";
    }

    private sealed class Restore(VectorWidth? previous) : IDisposable
    {
        public void Dispose() => chosen = previous;
    }
}
