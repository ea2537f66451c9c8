using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// One CPU-simulator accelerator and one <see cref="GpuKernels"/> for all GPU op tests (kernels are compiled
/// once per accelerator; recompiling per test would dominate the runtime), plus host↔device helpers.
/// </summary>
internal static class GpuTest
{
    private static readonly Lazy<(GpuContext Context, GpuKernels Kernels)> Shared = new(() =>
    {
        var context = GpuContext.CreateCpuSimulator();
        return (context, new GpuKernels(context.Accelerator));
    });

    public static Accelerator Accelerator => Shared.Value.Context.Accelerator;
    public static GpuKernels Ops => Shared.Value.Kernels;

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
