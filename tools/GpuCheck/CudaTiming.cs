using DistAlign.Engine.Cuda;
using ILGPU.Runtime.Cuda;

namespace DistAlign.GpuCheck;

/// <summary>Device time of queued work, measured with CUDA events on the accelerator's stream.</summary>
internal static class CudaTiming
{
    /// <summary>Median milliseconds of <paramref name="repeats"/> runs of <paramref name="launch"/>, after two warm-up runs.</summary>
    public static double MedianMilliseconds(CudaAccelerator accelerator, int repeats, Action launch)
    {
        nint stream = ((CudaStream)accelerator.DefaultStream).StreamPtr;
        using var start = CudaDriver.CreateEvent();
        using var end = CudaDriver.CreateEvent();
        launch();
        launch();
        accelerator.Synchronize();
        var times = new double[repeats];
        for (int r = 0; r < repeats; r++)
        {
            CudaDriver.Record(start, stream);
            launch();
            CudaDriver.Record(end, stream);
            times[r] = CudaDriver.ElapsedMilliseconds(start, end);
        }
        Array.Sort(times);
        return times[repeats / 2];
    }
}
