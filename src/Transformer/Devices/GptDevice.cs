using System.Diagnostics.CodeAnalysis;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using ILGPU.Runtime;

namespace DistAlign.Transformer.Devices;

/// <summary>
/// Where GPT engines are built: the CPU (<see cref="Cpu"/>: the engine is the host <see cref="Gpt"/> itself) or one ILGPU
/// accelerator (a <see cref="GpuGpt"/>, cuBLAS GEMMs on CUDA), whose GEMM and flash-attention kernels every engine built
/// here borrows. The one factory of <see cref="IGptEngine"/>s: policies, reward models, trainers and benchmarks take a
/// device and never see which engine they got. Owns nothing: whoever opened the accelerator disposes it after every
/// engine built here.
/// </summary>
public sealed class GptDevice
{
    private readonly IGemm? gemm;
    private readonly NvrtcFlashAttention? flashAttention;

    /// <summary>The CPU engine.</summary>
    public static GptDevice Cpu { get; } = new();

    private GptDevice() => Description = "the CPU";

    /// <param name="accelerator">the accelerator engines train on</param>
    /// <param name="gemm">its matrix products (<see cref="GpuContext.CreateGemm"/>)</param>
    /// <param name="flashAttention">when given, attention runs as its tiled kernels in every engine whose head size it supports</param>
    /// <param name="description">the device and its settings in words ("NVIDIA H200 (BFloat16 cuBLAS GEMMs, …)")</param>
    [RequiresDynamicCode(GpuContext.DynamicCodeReason)]
    public GptDevice(Accelerator accelerator, IGemm gemm, NvrtcFlashAttention? flashAttention, string description)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(gemm);
        ArgumentException.ThrowIfNullOrEmpty(description);
        Accelerator = accelerator;
        this.gemm = gemm;
        this.flashAttention = flashAttention;
        Description = description;
    }

    /// <summary>The accelerator, or null for the CPU engine.</summary>
    public Accelerator? Accelerator { get; }

    /// <summary>True for the CPU engine.</summary>
    public bool IsCpu => Accelerator is null;

    /// <summary>"the CPU", or the device and its GEMM and attention settings.</summary>
    public string Description { get; }

    /// <summary>
    /// The engine that trains <paramref name="host"/>: on the CPU the host model itself (trained in place); on an
    /// accelerator a new <see cref="GpuGpt"/> holding a copy of its parameters and AdamW moments, for which
    /// <paramref name="host"/> is the mirror that checkpoints read (<see cref="IGptEngine.CopyStateTo"/>). Dispose the
    /// engine when it is not <paramref name="host"/> (<see cref="Release"/> does exactly that).
    /// </summary>
    [UnconditionalSuppressMessage("AOT", "IL3050", Justification = "an accelerator is only set by the RequiresDynamicCode constructor; GptDevice.Cpu builds no GPU engine")]
    public IGptEngine EngineFor(Gpt host)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (Accelerator is null) return host;
        var engine = new GpuGpt(Accelerator, host.Config, gemm!, FlashFor(host.Config));
        try
        {
            engine.CopyStateFrom(host);
            return engine;
        }
        catch
        {
            engine.Dispose();
            throw;
        }
    }

    /// <summary>Disposes an engine from <see cref="EngineFor"/> unless it is the host model itself (the CPU).</summary>
    public static void Release(IGptEngine engine, Gpt host)
    {
        if (!ReferenceEquals(engine, host)) engine.Dispose();
    }

    /// <summary>Device memory in use (the whole CUDA context, as cuMemGetInfo reports it), or null on the CPU and ILGPU's simulators.</summary>
    public long? MemoryInUseBytes()
    {
        if (Accelerator is not ILGPU.Runtime.Cuda.CudaAccelerator) return null;
        var (free, total) = Engine.Cuda.CudaDriver.MemoryInfo();
        return total - free;
    }

    private NvrtcFlashAttention? FlashFor(GptConfig config) =>
        flashAttention is not null && NvrtcFlashAttention.Supports(config.Channels, config.Heads) ? flashAttention : null;

    public override string ToString() => Description;
}
