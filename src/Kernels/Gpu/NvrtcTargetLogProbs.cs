using DistAlign.Engine.Cuda;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// The forward of <see cref="GpuTargetLogProbs"/> and its bf16 backward as the NVRTC-compiled CUDA C kernels in
/// <c>native/target_logprobs.cu</c>: the forward is one pass with 16-byte loads and warp-shuffle merges, reading fp32 or
/// bf16 logits (half the bytes; statistics in fp32); the backward reads four fp32 logits and writes four bf16 gradients per
/// access (<see cref="BackwardToBFloat16"/>, what the LM head's bf16 GEMMs read). <see cref="GpuTargetLogProbs"/> stays the
/// portable path; both are checked against <see cref="Cpu.TargetLogProbs"/> (on the GPU by gpu-check, without one in the
/// host CUDA emulator). Runs on ILGPU's CUDA stream and buffers. Row sums are merged in a fixed order, so results are
/// bit-identical run to run on one GPU, but not bit-identical to the ILGPU kernel (different merge trees, __expf).
/// </summary>
public sealed unsafe class NvrtcTargetLogProbs : IDisposable
{
    /// <summary>Threads per row (one block per row).</summary>
    public const int ThreadsPerRow = 512;
    public const string SourceName = "target_logprobs.cu";

    private readonly CudaAccelerator accelerator;
    private readonly CudaModuleHandle module;
    private readonly nint bf16, f32, backwardBf16;

    /// <summary>Compiles (or loads from <paramref name="cache"/>) the kernels for this accelerator's architecture.</summary>
    public NvrtcTargetLogProbs(CudaAccelerator accelerator, NvrtcKernelCache cache)
    {
        this.accelerator = accelerator;
        accelerator.Bind();
        var device = CudaDriver.Device(accelerator.DeviceId);
        var (image, fromCache) = cache.Get(NativeSource.Get(SourceName), device.ComputeMajor, device.ComputeMinor);
        LoadedFromCache = fromCache;
        module = CudaDriver.LoadModule(image);
        bf16 = CudaDriver.GetFunction(module, "distalign_target_logprobs_bf16");
        f32 = CudaDriver.GetFunction(module, "distalign_target_logprobs_f32");
        backwardBf16 = CudaDriver.GetFunction(module, "distalign_target_logprobs_backward_bf16");
    }

    /// <summary>
    /// The kernels for <paramref name="accelerator"/> when it is a CUDA accelerator and NVRTC is installed (compiled once, then
    /// loaded from the default on-disk cache); null otherwise, so a caller keeps the portable ILGPU kernels. A source NVRTC
    /// rejects also gives null (an optional fast path must not stop training), with the compiler's message in
    /// <see cref="LastUnavailableReason"/>; gpu-check builds the kernels directly and reports such an error as a failed check.
    /// </summary>
    public static NvrtcTargetLogProbs? TryCreate(Accelerator accelerator)
    {
        if (accelerator is not CudaAccelerator cuda) return null;
        if (!CudaLibraries.Nvrtc.IsAvailable)
        {
            LastUnavailableReason = CudaLibraries.Nvrtc.UnavailableReason;
            return null;
        }
        try
        {
            return new NvrtcTargetLogProbs(cuda, NvrtcKernelCache.CreateDefault());
        }
        catch (NvrtcException e)
        {
            LastUnavailableReason = e.Message;
            return null;
        }
    }

    /// <summary>Why the last <see cref="TryCreate"/> on a CUDA accelerator gave null, or null when it has not.</summary>
    public static string? LastUnavailableReason { get; private set; }

    /// <summary>Whether the compiled kernel came from the on-disk cache.</summary>
    public bool LoadedFromCache { get; }

    /// <summary>logProbs[N], logSumExp[N] from fp32 logits [N, V]; targets −1 give log-prob 0.</summary>
    public void Forward(ArrayView<float> logits, ArrayView<int> targets, int vocab, ArrayView<float> logProbs, ArrayView<float> logSumExp) =>
        Forward(logits, targets, vocab, vocab, logProbs, logSumExp);

    /// <summary>The same for logits [N, rowStride] whose first <paramref name="vocab"/> columns are the logits (the rest is not read).</summary>
    public void Forward(ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride, ArrayView<float> logProbs, ArrayView<float> logSumExp) =>
        Launch(f32, logits.Length, (ulong)logits.LoadEffectiveAddressAsPtr(), targets, vocab, rowStride, logProbs, logSumExp);

    /// <summary>The same from bf16 logits [N, V] (bit patterns, e.g. from <see cref="GpuBFloat16"/>).</summary>
    public void Forward(ArrayView<ushort> logits, ArrayView<int> targets, int vocab, ArrayView<float> logProbs, ArrayView<float> logSumExp) =>
        Launch(bf16, logits.Length, (ulong)logits.LoadEffectiveAddressAsPtr(), targets, vocab, vocab, logProbs, logSumExp);

    /// <summary>
    /// d(logits) as bf16 bits into <paramref name="gradient"/> [N, rowStride], as <see cref="GpuTargetLogProbs.BackwardToBFloat16"/>
    /// (g·(1[v = target] − exp(x − lse)) at the V real columns, 0 at the padding and on rows with target −1; the logits are not
    /// changed). Needs <paramref name="rowStride"/> a multiple of 4 and both views 16- and 8-byte aligned (the LM head's
    /// padded chunks are); see <see cref="SupportsBackward"/>.
    /// </summary>
    public void BackwardToBFloat16(ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride, ArrayView<float> logSumExp,
                                   ArrayView<float> dLogProbs, ArrayView<ushort> gradient)
    {
        int n = GpuTargetLogProbs.Rows(logits.Length, targets.Length, vocab, rowStride);
        GpuLaunch.CheckLength(logSumExp.Length, n, nameof(logSumExp), "[N]");
        GpuLaunch.CheckLength(dLogProbs.Length, n, nameof(dLogProbs), "[N]");
        GpuLaunch.CheckLength(gradient.Length, (long)n * rowStride, nameof(gradient), "[N, rowStride]");
        ulong logitsPointer = (ulong)logits.LoadEffectiveAddressAsPtr(), gradientPointer = (ulong)gradient.LoadEffectiveAddressAsPtr();
        if (!SupportsBackward(rowStride, logitsPointer, gradientPointer))
            throw new ArgumentException($"the bf16 backward needs a row stride that is a multiple of 4 (got {rowStride}) and 16-byte aligned logits, 8-byte aligned gradients");
        if (n == 0) return;
        ulong targetsPointer = (ulong)targets.LoadEffectiveAddressAsPtr(), lsePointer = (ulong)logSumExp.LoadEffectiveAddressAsPtr(),
              dLogProbsPointer = (ulong)dLogProbs.LoadEffectiveAddressAsPtr();
        void** arguments = stackalloc void*[7];
        arguments[0] = &logitsPointer;
        arguments[1] = &targetsPointer;
        arguments[2] = &vocab;
        arguments[3] = &rowStride;
        arguments[4] = &lsePointer;
        arguments[5] = &dLogProbsPointer;
        arguments[6] = &gradientPointer;
        accelerator.Bind();
        CudaDriver.Launch(backwardBf16, ((uint)n, 1, 1), (ThreadsPerRow, 1, 1), 0, ((CudaStream)accelerator.DefaultStream).StreamPtr, arguments);
    }

    /// <summary>Whether <see cref="BackwardToBFloat16"/> takes this layout: row stride a multiple of 4, logits 16-byte and gradients 8-byte aligned.</summary>
    public static bool SupportsBackward(int rowStride, ulong logitsAddress, ulong gradientAddress) =>
        rowStride % 4 == 0 && logitsAddress % 16 == 0 && gradientAddress % 8 == 0;

    private void Launch(nint function, long logitsLength, ulong logits, ArrayView<int> targets, int vocab, int rowStride,
                        ArrayView<float> logProbs, ArrayView<float> logSumExp)
    {
        int n = GpuTargetLogProbs.Rows(logitsLength, targets.Length, vocab, rowStride);
        GpuLaunch.CheckLength(logProbs.Length, n, nameof(logProbs), "[N]");
        GpuLaunch.CheckLength(logSumExp.Length, n, nameof(logSumExp), "[N]");
        if (n == 0) return;
        ulong targetsPointer = (ulong)targets.LoadEffectiveAddressAsPtr(), logProbsPointer = (ulong)logProbs.LoadEffectiveAddressAsPtr(),
              lsePointer = (ulong)logSumExp.LoadEffectiveAddressAsPtr();
        void** arguments = stackalloc void*[6];
        arguments[0] = &logits;
        arguments[1] = &targetsPointer;
        arguments[2] = &vocab;
        arguments[3] = &rowStride;
        arguments[4] = &logProbsPointer;
        arguments[5] = &lsePointer;
        accelerator.Bind();
        CudaDriver.Launch(function, ((uint)n, 1, 1), (ThreadsPerRow, 1, 1), 0, ((CudaStream)accelerator.DefaultStream).StreamPtr, arguments);
    }

    public void Dispose() => module.Dispose();
}
