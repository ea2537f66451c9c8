using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;
using ILGPU.Runtime;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// Where GPT policies and backbones are built: the CPU engine (<see cref="Cpu"/>: <see cref="GptPolicy"/>, no device model) or one
/// ILGPU accelerator (<see cref="GpuGptPolicy"/> and <see cref="GpuGpt"/>, cuBLAS GEMMs on CUDA), whose GEMM and flash-attention
/// kernels every model built here borrows. Lets one piece of code (an experiment, a command) train on either without branching.
/// Owns nothing: whoever opened the accelerator disposes it after every model built here.
/// </summary>
public sealed class GptDevice
{
    private readonly IGemm? gemm;
    private readonly NvrtcFlashAttention? flashAttention;

    /// <summary>The CPU engine.</summary>
    public static GptDevice Cpu { get; } = new();

    private GptDevice() => Description = "the CPU";

    /// <param name="accelerator">the accelerator models train on</param>
    /// <param name="gemm">its matrix products (<see cref="GpuContext.CreateGemm"/>)</param>
    /// <param name="flashAttention">when given, attention runs as its tiled kernels in every model whose head size it supports</param>
    /// <param name="description">the device and its settings in words ("NVIDIA H200 (BFloat16 cuBLAS GEMMs, …)")</param>
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

    /// <summary>A policy on this device: <see cref="GptPolicy"/> on the CPU, else <see cref="GpuGptPolicy"/> (weights uploaded now, <paramref name="model"/> its host mirror).</summary>
    public IGptValueModel Policy(Gpt model, AdamWSettings optimizer, bool ownsModel = false, bool withValueHead = false) =>
        Accelerator is null
            ? new GptPolicy(model, optimizer, ownsModel, withValueHead)
            : new GpuGptPolicy(model, Accelerator, gemm!, optimizer, FlashFor(model.Config), ownsModel, withValueHead);

    /// <summary>A device model of <paramref name="config"/> (a reward model's or a pretraining run's backbone), or null on the CPU. The caller owns it.</summary>
    public GpuGpt? Backbone(GptConfig config) =>
        Accelerator is null ? null : new GpuGpt(Accelerator, config, gemm!, FlashFor(config));

    private NvrtcFlashAttention? FlashFor(GptConfig config) =>
        flashAttention is not null && NvrtcFlashAttention.Supports(config.Channels, config.Heads) ? flashAttention : null;

    public override string ToString() => Description;
}
