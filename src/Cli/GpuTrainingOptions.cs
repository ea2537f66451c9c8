using System.CommandLine;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Model;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Cli;

/// <summary>
/// The flags of the commands that train on CUDA (pretrain, align): <c>--gpu-precision fp32|tf32|bf16</c> and
/// <c>--gpu-attention materialized|flash</c>, and the device such a command opens when <see cref="DeviceOption"/> chose CUDA.
/// </summary>
internal sealed class GpuTrainingOptions
{
    public readonly Option<string> Precision = new("--gpu-precision")
    {
        Description = "With --device cuda: how cuBLAS multiplies (fp32 = exact fp32 products; tf32; bf16 = bf16 tensor-core products, fp32 accumulation and master weights).",
        DefaultValueFactory = _ => "fp32",
    };

    public readonly Option<string> Attention = new("--gpu-attention")
    {
        Description = "With --device cuda: materialized (T×T scores, fp32) or flash (tiled bf16 tensor-core kernels, head size 64, no T×T memory).",
        DefaultValueFactory = _ => "materialized",
    };

    private GpuTrainingOptions()
    {
        Precision.AcceptOnlyFromAmong("fp32", "tf32", "bf16");
        Attention.AcceptOnlyFromAmong("materialized", "flash");
    }

    public static GpuTrainingOptions Create() => new();

    public void AddTo(Command command)
    {
        command.Options.Add(Precision);
        command.Options.Add(Attention);
    }

    /// <summary>The flags' values.</summary>
    public sealed record Values(GemmPrecision Precision, bool Flash)
    {
        /// <summary>Refuses flash attention for a model whose head size is not <see cref="NvrtcFlashAttention.HeadSize"/>.</summary>
        public void CheckFits(GptConfig config)
        {
            if (Flash && !NvrtcFlashAttention.Supports(config.Channels, config.Heads))
                throw new CliUsageException($"--gpu-attention flash needs head size {NvrtcFlashAttention.HeadSize}; the model has {config.Channels} channels over " +
                                            $"{config.Heads} heads (head size {(config.Heads > 0 ? config.Channels / config.Heads : 0)}); use --gpu-attention materialized");
        }
    }

    public Values Read(ParseResult parse) => new(
        parse.GetValue(Precision) switch { "tf32" => GemmPrecision.Tf32, "bf16" => GemmPrecision.BFloat16, _ => GemmPrecision.Float32 },
        parse.GetValue(Attention) == "flash");

    /// <summary>
    /// Opens the accelerator a CUDA run trains on: the first CUDA device, with the context that owns it (null when ILGPU
    /// cannot open one). A seam for tests, which point it at ILGPU's CPU simulator (a shared one, owner null, so its
    /// compiled kernels are reused) to drive the CUDA code path of a command without a GPU.
    /// </summary>
    internal static Func<(Accelerator Accelerator, IDisposable? Owner)?> OpenAccelerator { get; set; } = OpenCuda;

    /// <summary><see cref="OpenAccelerator"/>, or a usage error saying that ILGPU could not open the CUDA device.</summary>
    public static (Accelerator Accelerator, IDisposable? Owner) OpenAcceleratorOrThrow() =>
        OpenAccelerator() ?? throw new CliUsageException($"{DeviceOption.Name} cuda: ILGPU could not open the CUDA device");

    // Under mpirun each rank on a machine opens the GPU of its local rank (modulo the GPUs there).
    private static (Accelerator, IDisposable?)? OpenCuda() => GpuContext.TryCreateCuda(Ranks.LocalRank) is { } context ? (context.Accelerator, context) : null;

    /// <summary>
    /// <see cref="OpenIfChosen(Values, GptConfig)"/> for <paramref name="model"/>'s config; when opening fails, disposes
    /// <paramref name="model"/> (just loaded by the caller, not yet owned by a policy) before the error propagates.
    /// </summary>
    public static GpuTrainingDevice? OpenIfChosen(Values values, Gpt model)
    {
        try
        {
            return OpenIfChosen(values, model.Config);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// When <see cref="DeviceOption.Chosen"/> is CUDA: the accelerator (<see cref="OpenAccelerator"/>), its GEMM at
    /// <paramref name="values"/>' precision and, with flash attention, its kernels; otherwise null.
    /// </summary>
    public static GpuTrainingDevice? OpenIfChosen(Values values, GptConfig config)
    {
        if (DeviceOption.Chosen != "cuda") return null;
        values.CheckFits(config);
        var (accelerator, owner) = OpenAcceleratorOrThrow();
        IGemm? gemm = null;
        try
        {
            gemm = GpuContext.CreateGemm(accelerator, values.Precision);
            NvrtcFlashAttention? flash = null;
            if (values.Flash)
            {
                if (accelerator is not CudaAccelerator cuda)
                    throw new CliUsageException($"--gpu-attention flash needs a CUDA accelerator (got {accelerator.AcceleratorType})");
                flash = new NvrtcFlashAttention(cuda, NvrtcKernelCache.CreateDefault());
            }
            return new GpuTrainingDevice(accelerator, owner, gemm, flash, values.Precision);
        }
        catch
        {
            (gemm as IDisposable)?.Dispose();
            owner?.Dispose();
            throw;
        }
    }
}

/// <summary>
/// An opened training device: the accelerator, its GEMM and (optionally) the flash-attention kernels, disposed together
/// with the context that owns the accelerator (when there is one).
/// </summary>
internal sealed class GpuTrainingDevice(Accelerator accelerator, IDisposable? owner, IGemm gemm, NvrtcFlashAttention? flash, GemmPrecision precision)
    : IDisposable
{
    public Accelerator Accelerator => accelerator;
    public IGemm Gemm => gemm;
    public NvrtcFlashAttention? Flash => flash;

    /// <summary>"NVIDIA H200 (bf16 cuBLAS GEMMs, flash attention (bf16 tensor cores))", for the line that says where training runs.</summary>
    public string Description => Models.Description;

    /// <summary>Builds policies and backbones on this device (borrowing its accelerator, GEMM and flash kernels).</summary>
    public GptDevice Models { get; } = new(accelerator, gemm, flash,
        $"{accelerator.Name} ({(gemm is CublasGemm ? $"{precision} cuBLAS GEMMs" : "fp32 tiled ILGPU GEMMs")}, " +
        $"{(flash is null ? "materialized fp32 attention" : "flash attention (bf16 tensor cores)")})");

    public void Dispose()
    {
        flash?.Dispose();
        (gemm as IDisposable)?.Dispose();
        owner?.Dispose();
    }
}
