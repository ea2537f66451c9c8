using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// The accelerator and <see cref="GpuKernels"/> of the backend the current fixture runs on (<see cref="GpuFixture"/>
/// sets it): ILGPU's CPU simulator, or the first CUDA device. Kernels are compiled once per backend (recompiling
/// per test would dominate the runtime); plus host↔device helpers.
/// </summary>
internal static class GpuTest
{
    private static readonly Dictionary<string, GpuKernels> KernelsByBackend = [];

    /// <summary>"simulator" or "cuda"; set by <see cref="GpuFixture"/> before each test.</summary>
    public static string Backend { get; set; } = "simulator";

    public static Accelerator Accelerator => DistAlign.Tests.Cuda.GpuBackend.Get(Backend);

    public static GpuKernels Ops
    {
        get
        {
            if (!KernelsByBackend.TryGetValue(Backend, out var kernels)) KernelsByBackend[Backend] = kernels = new GpuKernels(Accelerator);
            return kernels;
        }
    }

    /// <summary>A device copy of <paramref name="data"/> (at least one element, so empty inputs still have a valid buffer).</summary>
    public static MemoryBuffer1D<T, Stride1D.Dense> Up<T>(T[] data) where T : unmanaged
    {
        var buffer = Accelerator.Allocate1D<T>(Math.Max(1, data.Length));
        if (data.Length > 0) buffer.View.SubView(0, data.Length).CopyFromCPU(data);
        return buffer;
    }

    /// <summary>The first <paramref name="length"/> elements of a buffer as a view (length 0 allowed).</summary>
    public static ArrayView<T> V<T>(MemoryBuffer1D<T, Stride1D.Dense> buffer, int length) where T : unmanaged =>
        buffer.View.SubView(0, length);

    public static ArrayView<T> V<T>(MemoryBuffer1D<T, Stride1D.Dense> buffer, T[] host) where T : unmanaged => V(buffer, host.Length);

    /// <summary>The rest of a view from <paramref name="offset"/> on.</summary>
    public static ArrayView<T> From<T>(this ArrayView1D<T, Stride1D.Dense> view, long offset) where T : unmanaged
    {
        ArrayView<T> whole = view;
        return whole.SubView(offset, whole.Length - offset);
    }

    /// <summary>Synchronises and copies the first <paramref name="length"/> elements back.</summary>
    public static T[] Down<T>(MemoryBuffer1D<T, Stride1D.Dense> buffer, int length) where T : unmanaged
    {
        Accelerator.Synchronize();
        var host = new T[length];
        if (length > 0) buffer.View.SubView(0, length).CopyToCPU(host);
        return host;
    }

    /// <summary>Segment ids [B, T] with segment boundaries at random positions (runs of 1..maxRun).</summary>
    public static int[] Segments(int batch, int seqLen, int seed)
    {
        var rng = new Random(seed);
        var seg = new int[batch * seqLen];
        for (int b = 0; b < batch; b++)
        {
            int id = 0;
            for (int t = 0; t < seqLen; t++)
            {
                if (t > 0 && rng.Next(4) == 0) id++;
                seg[b * seqLen + t] = id;
            }
        }
        return seg;
    }
}

/// <summary>
/// Base of the GPU kernel fixtures: each runs once per backend, <c>[TestFixture("simulator")]</c> and
/// <c>[TestFixture("cuda")]</c>; the CUDA run is skipped with the reason where no CUDA device is usable.
/// </summary>
[NonParallelizable]
public abstract class GpuFixture(string backend)
{
    protected string Backend { get; } = backend;

    [SetUp]
    public void UseBackend()
    {
        GpuTest.Backend = Backend;
        _ = GpuTest.Accelerator;   // Assert.Ignore with the reason when the backend is not available
    }
}
