using DistAlign.Engine.Cuda;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// What the CUDA command-line tests pretend: the probe result of one H200 (for <c>DeviceOption.Probe</c>), under which the
/// seam <c>GpuTrainingOptions.OpenAccelerator</c> opens ILGPU's CPU simulator instead of a CUDA device.
/// </summary>
internal static class PretendGpu
{
    public static readonly CudaProbe H200 = new(true, null, 13000, [new CudaDeviceInfo(0, "NVIDIA H200", 9, 0, 132, 150_000_000_000)]);
}
