using System.Reflection;
using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// Compiles every kernel of <see cref="GpuPairwiseBradleyTerryLoss"/> to PTX for sm_90 with ILGPU's PTX backend,
/// which needs no GPU (fp64 exp/log need ILGPU.Algorithms' implementations, hence EnableAlgorithms), so code that only the CUDA backend would reject (unsupported calls, fp64 math) fails here.
/// </summary>
public class PairwiseLossPtxTests
{
    private static IEnumerable<TestCaseData> Kernels() =>
        GpuPairwiseBradleyTerryLoss.KernelMethods().Select(m => new TestCaseData(m).SetArgDisplayNames(m.Name));

    [TestCaseSource(nameof(Kernels))]
    public void CompilesToPtxForSm90(MethodInfo kernel)
    {
        using var context = Context.Create(builder => builder.EnableAlgorithms().Math(MathMode.Default));
        using var backend = new PTXBackend(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_78, null!);
        var entry = EntryPointDescription.FromImplicitlyGroupedKernel(kernel);
        var compiled = (PTXCompiledKernel)backend.Compile(entry, KernelSpecialization.Empty);
        // ILGPU 1.5.3 accepts SM_90 but writes `.target sm_80` (the newest target it emits); PTX is
        // forward-compatible, so the driver JIT-compiles it for sm_90 at load time.
        Assert.That(compiled.PTXAssembly, Does.Match(@"\.target sm_[89]0"));
        Assert.That(compiled.PTXAssembly, Does.Contain(".entry"));
    }
}
