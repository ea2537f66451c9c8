using System.Diagnostics.CodeAnalysis;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// Owns an ILGPU <see cref="Context"/> and one accelerator. Tests use ILGPU's CPU accelerator (which
/// simulates GPU threads, one OS thread each: correct but slow, small shapes only); the CUDA backend uses a
/// CUDA accelerator. The CPU accelerator is never the CPU fast path (that is <c>Kernels.Cpu</c>).
/// </summary>
public sealed class GpuContext : IDisposable
{
    /// <summary>
    /// Why the GPU path needs dynamic code: ILGPU compiles kernels from .NET IL at run time (and generates IL to launch
    /// them), which a NativeAOT host cannot do. Everything that opens an accelerator or builds a GPU model says so with
    /// <see cref="RequiresDynamicCodeAttribute"/>; the CPU engine needs none of it.
    /// </summary>
    public const string DynamicCodeReason =
        "ILGPU compiles GPU kernels from IL at run time; use the CPU engine (GptDevice.Cpu) in a NativeAOT or trimmed host.";

    public Context Context { get; }
    public Accelerator Accelerator { get; }

    private GpuContext(Context context, Accelerator accelerator)
    {
        Context = context;
        Accelerator = accelerator;
    }

    /// <summary>ILGPU's CPU accelerator (GPU semantics simulated on CPU threads), for tests.</summary>
    [RequiresDynamicCode(DynamicCodeReason)]
    public static GpuContext CreateCpuSimulator()
    {
        var context = Context.Create(builder => builder.CPU().EnableAlgorithms().Math(MathMode.Default));
        return new GpuContext(context, context.CreateCPUAccelerator(0));
    }

    /// <summary>
    /// CUDA device <paramref name="deviceIndex"/> modulo the device count (a data-parallel rank passes its local rank, so
    /// the ranks on one machine spread over its GPUs) as an ILGPU CUDA accelerator, or null when there is none (no driver,
    /// no device). Never throws for a missing CUDA installation.
    /// </summary>
    [RequiresDynamicCode(DynamicCodeReason)]
    public static GpuContext? TryCreateCuda(int deviceIndex = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(deviceIndex);
        Context? context = null;
        try
        {
            context = Context.Create(builder => builder.Cuda().EnableAlgorithms().Math(MathMode.Default));
            if (context.GetCudaDevices().Count == 0)
            {
                context.Dispose();
                return null;
            }
            return new GpuContext(context, context.CreateCudaAccelerator(deviceIndex % context.GetCudaDevices().Count));
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or EntryPointNotFoundException
                                      or NotSupportedException or InvalidOperationException or CudaException)
        {
            context?.Dispose();
            return null;
        }
    }

    /// <summary>
    /// The GEMM for <paramref name="accelerator"/>: cuBLAS (<see cref="CublasGemm"/>, on ILGPU's stream) on a CUDA
    /// accelerator, the portable <see cref="GpuTiledGemm"/> elsewhere. Throws <c>CudaUnavailableException</c>
    /// when a CUDA accelerator exists but cuBLAS cannot be loaded (rather than silently running the slow GEMM).
    /// </summary>
    public static IGemm CreateGemm(Accelerator accelerator, GemmPrecision precision = GemmPrecision.Float32) =>
        accelerator is CudaAccelerator cuda ? new CublasGemm(cuda, precision) : new GpuTiledGemm(accelerator);

    public void Dispose()
    {
        Accelerator.Dispose();
        Context.Dispose();
    }
}
