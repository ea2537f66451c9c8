using DistAlign.Engine.Cuda;
using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Tests.Kernels.Gpu;

public class GpuContextTests
{
    private static void AddOne(Index1D i, ArrayView<float> data) => data[i] += 1f;

    [Test]
    public void TheCpuSimulatorRunsAKernel()
    {
        using var gpu = GpuContext.CreateCpuSimulator();
        var kernel = gpu.Accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>>(AddOne);
        using var buffer = gpu.Accelerator.Allocate1D(new float[] { 1, 2, 3 });
        kernel((int)buffer.Length, buffer.View);
        gpu.Accelerator.Synchronize();
        Assert.That(buffer.GetAsArray1D(), Is.EqualTo(new float[] { 2, 3, 4 }));
    }

    [Test]
    public void TryCreateCudaReturnsNullOrAWorkingAcceleratorWithoutThrowing()
    {
        using var gpu = GpuContext.TryCreateCuda();   // null on machines without a CUDA driver and device
        if (gpu is null)
        {
            // Returning null rather than throwing is half of what this test checks; the working accelerator, the other half,
            // cannot be checked here, so the test is reported as not run, with the reason, instead of passing.
            var probe = CudaDriver.Probe();
            Assert.Ignore("TryCreateCuda returned null without throwing, but there is no CUDA device to check the accelerator on: " +
                          (probe.IsUsable ? $"ILGPU could not open {probe.Devices[0]}" : probe.Reason));
        }
        Assert.That(gpu.Accelerator.AcceleratorType, Is.EqualTo(AcceleratorType.Cuda));
        var kernel = gpu.Accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>>(AddOne);
        using var buffer = gpu.Accelerator.Allocate1D(new float[] { 1, 2, 3 });
        kernel((int)buffer.Length, buffer.View);
        gpu.Accelerator.Synchronize();
        Assert.That(buffer.GetAsArray1D(), Is.EqualTo(new float[] { 2, 3, 4 }));
    }
}
