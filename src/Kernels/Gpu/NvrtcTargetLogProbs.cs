using DistAlign.Engine.Cuda;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// The forward of <see cref="GpuTargetLogProbs"/> as the NVRTC-compiled CUDA C kernel in
/// <c>native/target_logprobs.cu</c>: one pass with 16-byte loads and warp-shuffle merges, reading fp32 or bf16
/// logits (half the bytes; statistics in fp32). <see cref="GpuTargetLogProbs"/> stays the portable path; both
/// are checked against <see cref="Cpu.TargetLogProbs"/>. Runs on ILGPU's CUDA stream and buffers. Row sums are
/// merged in a fixed order, so results are bit-identical run to run on one GPU, but not bit-identical to the
/// ILGPU kernel (different merge trees).
/// </summary>
public sealed unsafe class NvrtcTargetLogProbs : IDisposable
{
    /// <summary>Threads per row (one block per row).</summary>
    public const int ThreadsPerRow = 512;
    public const string SourceName = "target_logprobs.cu";

    private readonly CudaAccelerator _accelerator;
    private readonly CudaModuleHandle _module;
    private readonly nint _bf16, _f32;

    /// <summary>Compiles (or loads from <paramref name="cache"/>) the kernels for this accelerator's architecture.</summary>
    public NvrtcTargetLogProbs(CudaAccelerator accelerator, NvrtcKernelCache cache)
    {
        _accelerator = accelerator;
        accelerator.Bind();
        var device = CudaDriver.Device(accelerator.DeviceId);
        var (image, fromCache) = cache.Get(NativeSource.Get(SourceName), device.ComputeMajor, device.ComputeMinor);
        LoadedFromCache = fromCache;
        _module = CudaDriver.LoadModule(image);
        _bf16 = CudaDriver.GetFunction(_module, "distalign_target_logprobs_bf16");
        _f32 = CudaDriver.GetFunction(_module, "distalign_target_logprobs_f32");
    }

    /// <summary>Whether the compiled kernel came from the on-disk cache.</summary>
    public bool LoadedFromCache { get; }

    /// <summary>logProbs[N], logSumExp[N] from fp32 logits [N, V]; targets −1 give log-prob 0.</summary>
    public void Forward(ArrayView<float> logits, ArrayView<int> targets, int vocab, ArrayView<float> logProbs, ArrayView<float> logSumExp) =>
        Launch(_f32, logits.Length, (ulong)logits.LoadEffectiveAddressAsPtr(), targets, vocab, logProbs, logSumExp);

    /// <summary>The same from bf16 logits (bit patterns, e.g. from <see cref="GpuBFloat16"/>).</summary>
    public void Forward(ArrayView<ushort> logits, ArrayView<int> targets, int vocab, ArrayView<float> logProbs, ArrayView<float> logSumExp) =>
        Launch(_bf16, logits.Length, (ulong)logits.LoadEffectiveAddressAsPtr(), targets, vocab, logProbs, logSumExp);

    private void Launch(nint function, long logitsLength, ulong logits, ArrayView<int> targets, int vocab, ArrayView<float> logProbs, ArrayView<float> logSumExp)
    {
        GpuLaunch.CheckPositive(vocab, nameof(vocab));
        GpuLaunch.CheckLength(logitsLength, targets.Length * vocab, "logits", "[N, V] with N = targets.Length");
        int n = (int)targets.Length;
        GpuLaunch.CheckLength(logProbs.Length, n, nameof(logProbs), "[N]");
        GpuLaunch.CheckLength(logSumExp.Length, n, nameof(logSumExp), "[N]");
        if (n == 0) return;
        ulong targetsPointer = (ulong)targets.LoadEffectiveAddressAsPtr(), logProbsPointer = (ulong)logProbs.LoadEffectiveAddressAsPtr(),
              lsePointer = (ulong)logSumExp.LoadEffectiveAddressAsPtr();
        void** arguments = stackalloc void*[5];
        arguments[0] = &logits;
        arguments[1] = &targetsPointer;
        arguments[2] = &vocab;
        arguments[3] = &logProbsPointer;
        arguments[4] = &lsePointer;
        _accelerator.Bind();
        CudaDriver.Launch(function, ((uint)n, 1, 1), (ThreadsPerRow, 1, 1), 0, ((CudaStream)_accelerator.DefaultStream).StreamPtr, arguments);
    }

    public void Dispose() => _module.Dispose();
}
