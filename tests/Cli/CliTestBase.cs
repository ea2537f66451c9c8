using DistAlign.Cli;
using DistAlign.Engine.Cuda;
using DistAlign.Tests.Cuda;

namespace DistAlign.Tests.Cli;

/// <summary>
/// In-process CLI tests: a fresh temporary folder per test and the console captured into
/// <see cref="Output"/> and <see cref="Error"/> (restored afterwards). A test may drive the CUDA code path without a GPU
/// through the CLI's seams (<see cref="PretendAnH200"/>); they are put back after every test.
/// </summary>
[NonParallelizable]
public abstract class CliTestBase
{
    private TextWriter? savedOut, savedError;
    private static readonly Func<(ILGPU.Runtime.Accelerator, IDisposable?)?> RealAccelerator = GpuTrainingOptions.OpenAccelerator;

    protected string TestDirectory { get; private set; } = "";
    protected StringWriter Output { get; private set; } = new();
    protected StringWriter Error { get; private set; } = new();

    [SetUp]
    public void CaptureConsoleAndMakeFolder()
    {
        TestDirectory = Directory.CreateTempSubdirectory("distalign-cli-").FullName;
        savedOut = Console.Out;
        savedError = Console.Error;
        Output = new StringWriter();
        Error = new StringWriter();
        Console.SetOut(Output);
        Console.SetError(Error);
    }

    [TearDown]
    public void RestoreConsoleAndRemoveFolder()
    {
        Console.SetOut(savedOut!);
        Console.SetError(savedError!);
        DeviceOption.Probe = CudaDriver.Probe;
        GpuTrainingOptions.OpenAccelerator = RealAccelerator;
        Directory.Delete(TestDirectory, recursive: true);
    }

    /// <summary>
    /// <c>--device auto|cuda</c> finds an H200 (<see cref="PretendGpu.H200"/>); with <paramref name="onSimulator"/> a command that
    /// opens it gets ILGPU's CPU simulator (shared: kernels compiled once per process), so the very code a GPU run takes runs here.
    /// </summary>
    protected static void PretendAnH200(bool onSimulator = false)
    {
        DeviceOption.Probe = () => PretendGpu.H200;
        if (onSimulator) GpuTrainingOptions.OpenAccelerator = () => (GpuBackend.Get("simulator"), null);
    }
}
