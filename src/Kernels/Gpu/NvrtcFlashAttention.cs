using DistAlign.Engine.Cuda;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// Causal, segment-masked attention without the [B, NH, T, T] score matrix: the NVRTC-compiled kernels of
/// <c>native/flash_attention.cu</c> (64-row tiles streamed through shared memory, online softmax, bf16 tensor-core
/// products with fp32 accumulation). Same contract as <see cref="GpuAttention.Forward"/>/<see cref="GpuAttention.Backward"/>
/// (qkv [B, T, 3C], out [B, T, C], dqkv accumulated) except that the forward saves the per-row log-sum-exp
/// [B, NH, T] instead of the probabilities, and products see bf16-rounded inputs (about 2⁻⁸ relative error;
/// the portable fp32 path is <see cref="GpuAttention"/>). Head size 64 only (<see cref="Supports"/>).
/// Every output element has one writer, so results are bit-identical run to run on one GPU.
/// Runs on ILGPU's CUDA stream and buffers.
/// </summary>
public sealed unsafe class NvrtcFlashAttention : IDisposable
{
    public const string SourceName = "flash_attention.cu";
    /// <summary>The only head size the kernels take.</summary>
    public const int HeadSize = 64;
    private const int Tile = 64, Threads = 128, WarpsPerBlock = Threads / 32;

    private readonly CudaAccelerator _accelerator;
    private readonly CudaModuleHandle _module;
    private readonly nint _forward, _delta, _backwardKeyValue, _backwardQuery;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _noSegments;

    /// <summary>Compiles (or loads from <paramref name="cache"/>) the kernels for this accelerator's architecture (sm_80 or newer).</summary>
    public NvrtcFlashAttention(CudaAccelerator accelerator, NvrtcKernelCache cache)
    {
        _accelerator = accelerator;
        accelerator.Bind();
        var device = CudaDriver.Device(accelerator.DeviceId);
        if (device.ComputeMajor < 8)
            throw new NotSupportedException($"flash attention needs bf16 tensor cores (sm_80 or newer); {device.Name} is sm_{device.ComputeMajor}{device.ComputeMinor}");
        var (image, fromCache) = cache.Get(NativeSource.Get(SourceName), device.ComputeMajor, device.ComputeMinor);
        LoadedFromCache = fromCache;
        _module = CudaDriver.LoadModule(image);
        _forward = CudaDriver.GetFunction(_module, "distalign_flash_attention_forward");
        _delta = CudaDriver.GetFunction(_module, "distalign_flash_attention_backward_delta");
        _backwardKeyValue = CudaDriver.GetFunction(_module, "distalign_flash_attention_backward_kv");
        _backwardQuery = CudaDriver.GetFunction(_module, "distalign_flash_attention_backward_q");
        _noSegments = accelerator.Allocate1D<int>(1);
    }

    /// <summary>Whether the compiled kernels came from the on-disk cache.</summary>
    public bool LoadedFromCache { get; }

    /// <summary>Whether C channels over <paramref name="heads"/> heads give the head size the kernels take (64).</summary>
    public static bool Supports(int channels, int heads) => heads > 0 && channels == heads * HeadSize;

    /// <summary>
    /// out [B, T, C] = softmax(q·kᵀ/√hs, causal ∧ same segment)·v per head; logSumExp [B, NH, T] saved for
    /// <see cref="Backward"/>. segmentIds: empty (one sequence per row) or [B, T].
    /// </summary>
    public void Forward(ArrayView<float> qkv, ArrayView<int> segmentIds, int batch, int seqLen, int heads,
                        ArrayView<float> output, ArrayView<float> logSumExp)
    {
        int c = Validate(qkv, segmentIds, batch, seqLen, heads);
        GpuLaunch.CheckLength(output.Length, (long)batch * seqLen * c, nameof(output), "[B, T, C]");
        GpuLaunch.CheckLength(logSumExp.Length, (long)batch * heads * seqLen, nameof(logSumExp), "[B, NH, T]");
        if (batch == 0 || seqLen == 0) return;
        ulong q = Address(qkv), segments = Address(SegmentsOrDummy(segmentIds)), o = Address(output), l = Address(logSumExp);
        int hasSegments = segmentIds.Length > 0 ? 1 : 0;
        float scale = 1f / MathF.Sqrt(HeadSize);
        void** arguments = stackalloc void*[9];
        arguments[0] = &q;
        arguments[1] = &segments;
        arguments[2] = &hasSegments;
        arguments[3] = &seqLen;
        arguments[4] = &c;
        arguments[5] = &heads;
        arguments[6] = &scale;
        arguments[7] = &o;
        arguments[8] = &l;
        Launch(_forward, Tiles(seqLen, heads, batch), arguments);
    }

    /// <summary>
    /// Accumulates dQkv [B, T, 3C] from dOutput [B, T, C], recomputing the probabilities from qkv and the
    /// forward's logSumExp; <paramref name="delta"/> [B, NH, T] is scratch (Σ_d dOut·out per row and head).
    /// </summary>
    public void Backward(ArrayView<float> dOutput, ArrayView<float> qkv, ArrayView<int> segmentIds, ArrayView<float> output,
                         ArrayView<float> logSumExp, int batch, int seqLen, int heads, ArrayView<float> delta, ArrayView<float> dQkv)
    {
        int c = Validate(qkv, segmentIds, batch, seqLen, heads);
        GpuLaunch.CheckLength(dOutput.Length, (long)batch * seqLen * c, nameof(dOutput), "[B, T, C]");
        GpuLaunch.CheckLength(output.Length, (long)batch * seqLen * c, nameof(output), "[B, T, C]");
        GpuLaunch.CheckLength(logSumExp.Length, (long)batch * heads * seqLen, nameof(logSumExp), "[B, NH, T]");
        GpuLaunch.CheckLength(delta.Length, (long)batch * heads * seqLen, nameof(delta), "[B, NH, T]");
        GpuLaunch.CheckLength(dQkv.Length, qkv.Length, nameof(dQkv), "[B, T, 3C]");
        if (batch == 0 || seqLen == 0) return;
        ulong dO = Address(dOutput), q = Address(qkv), segments = Address(SegmentsOrDummy(segmentIds)), o = Address(output),
              l = Address(logSumExp), d = Address(delta), dq = Address(dQkv);
        int hasSegments = segmentIds.Length > 0 ? 1 : 0;
        float scale = 1f / MathF.Sqrt(HeadSize);

        void** deltaArguments = stackalloc void*[6];
        deltaArguments[0] = &dO;
        deltaArguments[1] = &o;
        deltaArguments[2] = &seqLen;
        deltaArguments[3] = &c;
        deltaArguments[4] = &heads;
        deltaArguments[5] = &d;
        Launch(_delta, ((uint)((seqLen * heads + WarpsPerBlock - 1) / WarpsPerBlock), (uint)batch, 1), deltaArguments);

        void** arguments = stackalloc void*[11];
        arguments[0] = &q;
        arguments[1] = &segments;
        arguments[2] = &hasSegments;
        arguments[3] = &dO;
        arguments[4] = &l;
        arguments[5] = &d;
        arguments[6] = &seqLen;
        arguments[7] = &c;
        arguments[8] = &heads;
        arguments[9] = &scale;
        arguments[10] = &dq;
        Launch(_backwardKeyValue, Tiles(seqLen, heads, batch), arguments);
        Launch(_backwardQuery, Tiles(seqLen, heads, batch), arguments);
    }

    private static (uint, uint, uint) Tiles(int seqLen, int heads, int batch) => ((uint)((seqLen + Tile - 1) / Tile), (uint)heads, (uint)batch);

    private static int Validate(ArrayView<float> qkv, ArrayView<int> segmentIds, int batch, int seqLen, int heads)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        ArgumentOutOfRangeException.ThrowIfNegative(seqLen);
        GpuLaunch.CheckPositive(heads, nameof(heads));
        int c = heads * HeadSize;
        GpuLaunch.CheckLength(qkv.Length, (long)batch * seqLen * 3 * c, nameof(qkv), $"[B, T, 3C] with C = NH·{HeadSize}");
        if (segmentIds.Length != 0) GpuLaunch.CheckLength(segmentIds.Length, (long)batch * seqLen, nameof(segmentIds), "empty or [B, T]");
        if (batch > 65535) throw new ArgumentOutOfRangeException(nameof(batch), batch, "at most 65,535 rows (the grid's z dimension)");
        return c;
    }

    private ArrayView<int> SegmentsOrDummy(ArrayView<int> segmentIds) => segmentIds.Length > 0 ? segmentIds : _noSegments.View;

    private static ulong Address<T>(ArrayView<T> view) where T : unmanaged => (ulong)view.LoadEffectiveAddressAsPtr();

    private void Launch(nint function, (uint X, uint Y, uint Z) grid, void** arguments)
    {
        _accelerator.Bind();
        CudaDriver.Launch(function, grid, (Threads, 1, 1), 0, ((CudaStream)_accelerator.DefaultStream).StreamPtr, arguments);
    }

    public void Dispose()
    {
        _noSegments.Dispose();
        _module.Dispose();
    }
}
