using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>Marks a static method as a GPU kernel entry point (listed in <see cref="GpuKernelRegistry"/>).</summary>
[AttributeUsage(AttributeTargets.Method)]
internal sealed class GpuKernelAttribute(bool explicitlyGrouped) : Attribute
{
    /// <summary>True for kernels launched with a <see cref="KernelConfig"/> that use Group/Grid indices and
    /// shared memory; false for implicitly grouped kernels whose first parameter is an index.</summary>
    public bool ExplicitlyGrouped { get; } = explicitlyGrouped;
}

/// <summary>Marks a static device function (called from kernels, never launched) that takes views.</summary>
[AttributeUsage(AttributeTargets.Method)]
internal sealed class GpuDeviceFunctionAttribute : Attribute;

/// <summary>
/// Launch geometry and group-level device functions shared by the GPU ops.
/// Reductions are shared-memory trees over a power-of-two group: the pairing order depends only on the
/// group size, which is fixed per accelerator, so every reduction is bit-identical run to run on one device
/// (no atomics anywhere).
/// </summary>
internal static class GpuLaunch
{
    /// <summary>Largest group the reductions are written for (size of their shared-memory scratch).</summary>
    public const int MaxGroupSize = 256;

    /// <summary>The group size used for row reductions on <paramref name="accelerator"/>: the largest power of
    /// two ≤ min(<see cref="MaxGroupSize"/>, the accelerator's limit). Fixed per accelerator.</summary>
    public static int ReductionGroupSize(Accelerator accelerator)
    {
        int limit = Math.Min(MaxGroupSize, accelerator.MaxNumThreadsPerGroup);
        int size = 1;
        while (size * 2 <= limit) size *= 2;
        return size;
    }

    /// <summary>
    /// Σ of every thread's <paramref name="value"/> over the group (all threads get the result). When the group is
    /// whole warps: a shuffle tree inside each warp, the warp totals through shared memory, and a shuffle tree over
    /// them in the first warp (two barriers instead of one per tree level); otherwise a shared-memory tree. Either
    /// way the pairing order depends only on the group and warp sizes, so the sum is bit-identical run to run.
    /// </summary>
    [GpuDeviceFunction]
    public static float GroupSum(ArrayView<float> scratch, float value)
    {
        int size = Group.DimX, warpSize = Warp.WarpSize;
        if (size % warpSize == 0 && size / warpSize <= warpSize)
        {
            float v = value;
            for (int offset = warpSize / 2; offset > 0; offset >>= 1) v += Warp.ShuffleDown(v, offset);
            if (Warp.LaneIdx == 0) scratch[Warp.WarpIdx] = v;
            Group.Barrier();
            if (Warp.WarpIdx == 0)
            {
                int warps = size / warpSize;
                v = Warp.LaneIdx < warps ? scratch[Warp.LaneIdx] : 0f;
                for (int offset = warpSize / 2; offset > 0; offset >>= 1) v += Warp.ShuffleDown(v, offset);
                if (Warp.LaneIdx == 0) scratch[warpSize] = v;   // past the warp totals: no thread still reads it
            }
            Group.Barrier();
            float sum = scratch[warpSize];
            Group.Barrier();
            return sum;
        }
        return TreeSum(scratch, value);
    }

    private static float TreeSum(ArrayView<float> scratch, float value)
    {
        int i = Group.IdxX;
        scratch[i] = value;
        Group.Barrier();
        for (int half = Group.DimX / 2; half > 0; half >>= 1)
        {
            if (i < half) scratch[i] += scratch[i + half];
            Group.Barrier();
        }
        float total = scratch[0];
        Group.Barrier();
        return total;
    }

    /// <summary>fp64 Σ over the group.</summary>
    [GpuDeviceFunction]
    public static double GroupSum(ArrayView<double> scratch, double value)
    {
        int i = Group.IdxX;
        scratch[i] = value;
        Group.Barrier();
        for (int half = Group.DimX / 2; half > 0; half >>= 1)
        {
            if (i < half) scratch[i] += scratch[i + half];
            Group.Barrier();
        }
        double total = scratch[0];
        Group.Barrier();
        return total;
    }

    /// <summary>max over the group (all threads get the result).</summary>
    [GpuDeviceFunction]
    public static float GroupMax(ArrayView<float> scratch, float value)
    {
        int i = Group.IdxX;
        scratch[i] = value;
        Group.Barrier();
        for (int half = Group.DimX / 2; half > 0; half >>= 1)
        {
            if (i < half) scratch[i] = IntrinsicMath.Max(scratch[i], scratch[i + half]);
            Group.Barrier();
        }
        float total = scratch[0];
        Group.Barrier();
        return total;
    }

    /// <summary>A 1D launch of one group per row: <paramref name="rows"/> groups of <paramref name="groupSize"/> threads.</summary>
    public static KernelConfig Rows(int rows, int groupSize) => new(new Index1D(rows), new Index1D(groupSize));

    public static void CheckLength(long actual, long expected, string name, string shape)
    {
        if (actual != expected)
            throw new ArgumentException($"{name} has {actual} elements; expected {expected} ({shape}).", name);
    }

    public static void CheckPositive(int value, string name)
    {
        if (value <= 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be positive.");
    }
}
