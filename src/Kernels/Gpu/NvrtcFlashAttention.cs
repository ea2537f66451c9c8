using DistAlign.Engine.Cuda;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// Causal, segment-masked attention without the [B, NH, T, T] score matrix: the NVRTC-compiled kernels of
/// <c>native/flash_attention.cu</c> (q, k, v and dout first copied to bf16 per head, then 64-row tiles streamed
/// through shared memory, online softmax, bf16 tensor-core products with fp32 accumulation). The bf16 copies live
/// in a scratch buffer this object owns (4 tensors of B·NH·Tp·64 values, Tp = T rounded up to 64; grown as needed). Same contract as <see cref="GpuAttention.Forward"/>/<see cref="GpuAttention.Backward"/>
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

    private readonly CudaAccelerator accelerator;
    private readonly CudaModuleHandle module;
    private readonly nint convert, forward, delta, backwardKeyValue, backwardQuery;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> noSegments;
    private MemoryBuffer1D<ushort, Stride1D.Dense>? scratch;

    /// <summary>Compiles (or loads from <paramref name="cache"/>) the kernels for this accelerator's architecture (sm_80 or newer).</summary>
    public NvrtcFlashAttention(CudaAccelerator accelerator, NvrtcKernelCache cache)
    {
        this.accelerator = accelerator;
        accelerator.Bind();
        var device = CudaDriver.Device(accelerator.DeviceId);
        if (device.ComputeMajor < 8)
            throw new NotSupportedException($"flash attention needs bf16 tensor cores (sm_80 or newer); {device.Name} is sm_{device.ComputeMajor}{device.ComputeMinor}");
        var (image, fromCache) = cache.Get(NativeSource.Get(SourceName), device.ComputeMajor, device.ComputeMinor);
        LoadedFromCache = fromCache;
        module = CudaDriver.LoadModule(image);
        convert = CudaDriver.GetFunction(module, "distalign_flash_attention_convert");
        forward = CudaDriver.GetFunction(module, "distalign_flash_attention_forward");
        delta = CudaDriver.GetFunction(module, "distalign_flash_attention_backward_delta");
        backwardKeyValue = CudaDriver.GetFunction(module, "distalign_flash_attention_backward_kv");
        backwardQuery = CudaDriver.GetFunction(module, "distalign_flash_attention_backward_q");
        noSegments = accelerator.Allocate1D<int>(1);
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
        var (qRows, kRows, vRows, _) = Scratch(batch, seqLen, heads);
        Convert(qkv, 3L * c, 0, seqLen, heads, batch, qRows);
        Convert(qkv, 3L * c, c, seqLen, heads, batch, kRows);
        Convert(qkv, 3L * c, 2 * c, seqLen, heads, batch, vRows);
        ulong qr = Address(qRows), kr = Address(kRows), vr = Address(vRows), segments = Address(SegmentsOrDummy(segmentIds)),
              o = Address(output), l = Address(logSumExp);
        int hasSegments = segmentIds.Length > 0 ? 1 : 0, paddedLength = PaddedLength(seqLen);
        float scale = 1f / MathF.Sqrt(HeadSize);
        void** arguments = stackalloc void*[12];
        arguments[0] = &qr;
        arguments[1] = &kr;
        arguments[2] = &vr;
        arguments[3] = &segments;
        arguments[4] = &hasSegments;
        arguments[5] = &seqLen;
        arguments[6] = &paddedLength;
        arguments[7] = &c;
        arguments[8] = &heads;
        arguments[9] = &scale;
        arguments[10] = &o;
        arguments[11] = &l;
        Launch(forward, Tiles(seqLen, heads, batch), arguments);
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
        ulong dO = Address(dOutput), o = Address(output), d = Address(delta);
        void** deltaArguments = stackalloc void*[6];
        deltaArguments[0] = &dO;
        deltaArguments[1] = &o;
        deltaArguments[2] = &seqLen;
        deltaArguments[3] = &c;
        deltaArguments[4] = &heads;
        deltaArguments[5] = &d;
        Launch(this.delta, ((uint)((seqLen * heads + WarpsPerBlock - 1) / WarpsPerBlock), (uint)batch, 1), deltaArguments);

        var (qRows, kRows, vRows, dRows) = Scratch(batch, seqLen, heads);
        Convert(qkv, 3L * c, 0, seqLen, heads, batch, qRows);
        Convert(qkv, 3L * c, c, seqLen, heads, batch, kRows);
        Convert(qkv, 3L * c, 2 * c, seqLen, heads, batch, vRows);
        Convert(dOutput, c, 0, seqLen, heads, batch, dRows);
        ulong qr = Address(qRows), kr = Address(kRows), vr = Address(vRows), dr = Address(dRows),
              segments = Address(SegmentsOrDummy(segmentIds)), l = Address(logSumExp), dq = Address(dQkv);
        int hasSegments = segmentIds.Length > 0 ? 1 : 0, paddedLength = PaddedLength(seqLen);
        float scale = 1f / MathF.Sqrt(HeadSize);

        // backward_kv and backward_q(q_rows, k_rows, v_rows, dout_rows, segments, has_segments, lse, delta, T, Tp, C, NH, scale, dqkv)
        void** arguments = stackalloc void*[14];
        arguments[0] = &qr; arguments[1] = &kr; arguments[2] = &vr; arguments[3] = &dr;
        arguments[4] = &segments; arguments[5] = &hasSegments; arguments[6] = &l; arguments[7] = &d;
        arguments[8] = &seqLen; arguments[9] = &paddedLength; arguments[10] = &c; arguments[11] = &heads; arguments[12] = &scale;
        arguments[13] = &dq;
        Launch(backwardKeyValue, Tiles(seqLen, heads, batch), arguments);
        Launch(backwardQuery, Tiles(seqLen, heads, batch), arguments);
    }

    private static int PaddedLength(int seqLen) => (seqLen + Tile - 1) / Tile * Tile;

    /// <summary>The four bf16 scratch tensors (q, k, v, dout), each [B, NH, Tp, 64].</summary>
    private (ArrayView<ushort> Q, ArrayView<ushort> K, ArrayView<ushort> V, ArrayView<ushort> DOut) Scratch(int batch, int seqLen, int heads)
    {
        long each = (long)batch * heads * PaddedLength(seqLen) * HeadSize;
        if (scratch is null || scratch.Length < 4 * each)
        {
            accelerator.Synchronize();   // queued kernels may still read the old buffer
            scratch?.Dispose();
            scratch = accelerator.Allocate1D<ushort>(4 * each);
        }
        var v = scratch.View;
        return (v.SubView(0, each), v.SubView(each, each), v.SubView(2 * each, each), v.SubView(3 * each, each));
    }

    /// <summary>convert(source, stride, col0, T, Tp, NH, rows_out): each head's 64 columns of source [B, T, stride] to bf16 [B, NH, Tp, 64].</summary>
    private void Convert(ArrayView<float> source, long stride, int col0, int seqLen, int heads, int batch, ArrayView<ushort> rows)
    {
        ulong s = Address(source), r = Address(rows);
        int paddedLength = PaddedLength(seqLen);
        void** arguments = stackalloc void*[7];
        arguments[0] = &s;
        arguments[1] = &stride;
        arguments[2] = &col0;
        arguments[3] = &seqLen;
        arguments[4] = &paddedLength;
        arguments[5] = &heads;
        arguments[6] = &r;
        Launch(convert, Tiles(seqLen, heads, batch), arguments);
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

    private ArrayView<int> SegmentsOrDummy(ArrayView<int> segmentIds) => segmentIds.Length > 0 ? segmentIds : noSegments.View;

    private static ulong Address<T>(ArrayView<T> view) where T : unmanaged => (ulong)view.LoadEffectiveAddressAsPtr();

    private void Launch(nint function, (uint X, uint Y, uint Z) grid, void** arguments)
    {
        accelerator.Bind();
        CudaDriver.Launch(function, grid, (Threads, 1, 1), 0, ((CudaStream)accelerator.DefaultStream).StreamPtr, arguments);
    }

    public void Dispose()
    {
        scratch?.Dispose();
        noSegments.Dispose();
        module.Dispose();
    }
}
