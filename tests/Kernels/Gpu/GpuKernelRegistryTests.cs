using System.Reflection;
using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Tests.Kernels.Gpu;

public class GpuKernelRegistryTests
{
    private static readonly Type[] IndexTypes = [typeof(Index1D), typeof(Index2D), typeof(Index3D)];

    private static IEnumerable<MethodInfo> GpuNamespaceMethods() =>
        typeof(GpuKernels).Assembly.GetTypes()
            .Where(t => t.Namespace == typeof(GpuKernels).Namespace)
            .SelectMany(t => t.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly));

    private static bool TakesViews(MethodInfo m) =>
        m.GetParameters().Any(p => p.ParameterType.IsGenericType && p.ParameterType.GetGenericTypeDefinition() == typeof(ArrayView<>));

    [Test]
    public void TheRegistryListsEveryKernelInTheGpuNamespace()
    {
        var registered = GpuKernelRegistry.All.Select(k => k.Method).ToHashSet();
        Assert.That(registered, Has.Count.EqualTo(GpuKernelRegistry.All.Count), "duplicates in the registry");
        foreach (var m in GpuNamespaceMethods())
        {
            string name = $"{m.DeclaringType!.Name}.{m.Name}";
            bool attributed = m.GetCustomAttribute<GpuKernelAttribute>() is not null;
            bool indexFirst = m.GetParameters() is { Length: > 0 } ps && IndexTypes.Contains(ps[0].ParameterType);
            bool deviceFunction = m.GetCustomAttribute<GpuDeviceFunctionAttribute>() is not null;
            if (attributed || indexFirst)
                Assert.That(registered, Does.Contain(m), $"{name} is a kernel but not in GpuKernelRegistry.All");
            else if (m.ReturnType == typeof(void) && TakesViews(m) && !deviceFunction && !m.IsSpecialName)
                Assert.Fail($"{name} is a static void method taking views: mark it [GpuKernel] (and register it) or [GpuDeviceFunction]");
        }
        foreach (var k in GpuKernelRegistry.All)
        {
            var attribute = k.Method.GetCustomAttribute<GpuKernelAttribute>();
            Assert.That(attribute, Is.Not.Null, $"{k.Name} lacks [GpuKernel]");
            Assert.That(attribute!.ExplicitlyGrouped, Is.EqualTo(k.ExplicitlyGrouped), $"{k.Name}: grouping mismatch");
            bool indexFirst = k.Method.GetParameters() is { Length: > 0 } ps && IndexTypes.Contains(ps[0].ParameterType);
            Assert.That(indexFirst, Is.EqualTo(!k.ExplicitlyGrouped), $"{k.Name}: implicit kernels take an index first, explicit ones do not");
        }
    }

    /// <summary>
    /// Compiles every registered kernel with ILGPU's PTX backend for SM_90 (no GPU needed). ILGPU 1.5.3 writes
    /// <c>.target</c> from <see cref="CudaCapabilityContext.TargetArchitecture"/> = min(requested, SM_80) (the
    /// newest architecture any ILGPU feature gate needs), so for SM_90 it emits <c>.target sm_80</c>, exactly as
    /// a CudaAccelerator on an H100/H200 would; the driver JIT-compiles that PTX for sm_90. The test asserts
    /// that behaviour, a PTX ISA new enough for sm_90 (8.0 ≥ 7.8), and the entry point of each kernel.
    /// </summary>
    [Test]
    public void EveryKernelCompilesToPtxForSm90()
    {
        using var context = Context.Create(builder => builder.Cuda().EnableAlgorithms().Math(MathMode.Default));
        using var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90),
                                           CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, null);
        Assert.That(backend.Architecture, Is.EqualTo(CudaArchitecture.SM_90));
        var target = backend.Capabilities.TargetArchitecture;
        Assert.That(target, Is.EqualTo(CudaArchitecture.SM_80), "ILGPU 1.5.3 caps .target at sm_80; if this changes, assert sm_90");
        var failures = new List<string>();
        foreach (var k in GpuKernelRegistry.All)
        {
            var entry = k.ExplicitlyGrouped
                ? EntryPointDescription.FromExplicitlyGroupedKernel(k.Method)
                : EntryPointDescription.FromImplicitlyGroupedKernel(k.Method);
            try
            {
                var compiled = (PTXCompiledKernel)backend.Compile(entry, new KernelSpecialization());
                string ptx = compiled.PTXAssembly;
                if (!ptx.Contains(".version 8.0")) failures.Add($"{k.Name}: no '.version 8.0'");
                if (!ptx.Contains(".target " + target.ToString().ToLowerInvariant())) failures.Add($"{k.Name}: no '.target {target}'");
                if (!ptx.Contains(".entry " + compiled.Name)) failures.Add($"{k.Name}: no '.entry {compiled.Name}'");
                TestContext.Out.WriteLine($"{k.Name}: {ptx.Length} chars of PTX, entry {compiled.Name}");
            }
            catch (Exception e)
            {
                failures.Add($"{k.Name}: {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.That(failures, Is.Empty, string.Join("\n", failures));
    }
}
