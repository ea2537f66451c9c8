using DistAlign.Engine.Cuda;
using DistAlign.Kernels.Gpu;
using ILGPU.Runtime;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// Backends for GPU kernel fixtures: <c>[TestFixture("simulator")]</c> runs on ILGPU's CPU accelerator,
/// <c>[TestFixture("cuda")]</c> on the first CUDA device, and is skipped with the reason (e.g. "no CUDA driver
/// found: tried libcuda.so.1, libcuda.so") where there is none, never silently passed. Each context is created
/// once per process.
/// </summary>
internal static class GpuBackend
{
    private static readonly Lazy<GpuContext> Simulator = new(GpuContext.CreateCpuSimulator);
    private static readonly Lazy<(GpuContext? Context, string? Reason)> Cuda = new(() =>
    {
        var probe = CudaDriver.Probe();
        if (!probe.IsUsable) return (null, probe.Reason);
        var context = GpuContext.TryCreateCuda();
        return context is null ? (null, $"ILGPU could not open {probe.Devices[0]}") : (context, null);
    });

    /// <summary>The accelerator for <paramref name="name"/>; for "cuda" without a usable device, Assert.Ignore with the reason.</summary>
    public static Accelerator Get(string name)
    {
        switch (name)
        {
            case "simulator":
                return Simulator.Value.Accelerator;
            case "cuda":
                var (context, reason) = Cuda.Value;
                if (context is null) Assert.Ignore($"CUDA case skipped, no CUDA device: {reason}");
                return context!.Accelerator;
            default:
                throw new ArgumentException($"unknown GPU backend '{name}' (simulator or cuda)", nameof(name));
        }
    }
}
