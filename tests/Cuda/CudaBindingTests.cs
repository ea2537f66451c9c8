using System.Reflection;
using System.Runtime.InteropServices;
using DistAlign.Engine.Cuda;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// The CUDA P/Invoke layer without a GPU: library probing and its "not found" message, status names in
/// exception messages, and the shape of every binding (source-generated, entry point = method name,
/// blittable parameters only, so no marshalling code runs per call).
/// </summary>
public class CudaBindingTests
{
    private static readonly Type[] NativeClasses =
    [
        typeof(CudaDriver).Assembly.GetType("DistAlign.Engine.Cuda.CudaDriverNative")!,
        typeof(CudaDriver).Assembly.GetType("DistAlign.Engine.Cuda.CublasNative")!,
        typeof(CudaDriver).Assembly.GetType("DistAlign.Engine.Cuda.CublasLtNative")!,
        typeof(CudaDriver).Assembly.GetType("DistAlign.Engine.Cuda.NvrtcNative")!,
    ];

    [Test]
    public void WithoutADriverProbingFailsWithTheNamesItTried()
    {
        if (CudaLibraries.Driver.IsAvailable)
            Assert.Ignore($"a CUDA driver is installed here ({CudaLibraries.Driver.LoadedFrom}); this test checks the machine without one");
        const string expected = "no CUDA driver found: tried libcuda.so.1, libcuda.so";
        Assert.That(CudaLibraries.Driver.UnavailableReason, Is.EqualTo(expected));
        var e = Assert.Throws<CudaUnavailableException>(CudaDriver.Initialize)!;
        Assert.That(e.Message, Is.EqualTo(expected));
        var probe = CudaDriver.Probe();
        Assert.That(probe.IsUsable, Is.False);
        Assert.That(probe.Reason, Is.EqualTo(expected));
        Assert.That(probe.Devices, Is.Empty);
        TestContext.Out.WriteLine(probe.Reason);
    }

    [Test]
    public void LibraryMessagesNameEveryCandidate()
    {
        foreach (var library in CudaLibraries.All.Where(l => !l.IsAvailable))
            Assert.That(library.UnavailableReason, Is.EqualTo($"no {library.Description} found: tried {string.Join(", ", library.Candidates)}"));
        Assert.That(CudaLibraries.Cublas.Candidates, Is.EqualTo(new[] { "libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so" }));
        Assert.That(CudaLibraries.Nvrtc.Candidates[0], Is.EqualTo("libnvrtc.so.13"));
        if (!CudaLibraries.Cublas.IsAvailable)
            Assert.That(Assert.Throws<CudaUnavailableException>(() => Cublas.Create())!.Message, Does.StartWith("no cuBLAS library found: tried libcublas.so.13"));
        if (!CudaLibraries.Nvrtc.IsAvailable)
            Assert.That(Assert.Throws<CudaUnavailableException>(() => Nvrtc.Version())!.Message, Does.StartWith("no NVRTC library found: tried libnvrtc.so.13"));
    }

    [Test]
    public void ProbeTakesTheFirstCandidateThatLoadsAndSearchesTheConfiguredDirectoriesFirst()
    {
        Assert.That(CudaLibrary.Probe(["libdistalign-absent.so.99", "libdistalign-absent.so"]), Is.EqualTo(((nint)0, (string?)null)));
        var (handle, path) = CudaLibrary.Probe(["libdistalign-absent.so.99", "libm.so.6", "libc.so.6"]);
        Assert.That(handle, Is.Not.EqualTo((nint)0));
        Assert.That(path, Is.EqualTo("libm.so.6"));

        string directory = Directory.CreateTempSubdirectory("distalign-cuda-probe-").FullName;
        string? saved = Environment.GetEnvironmentVariable(CudaLibrary.SearchPathVariable);
        try
        {
            string libm = new[] { "/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6" }.First(File.Exists);
            File.Copy(libm, Path.Combine(directory, "libdistalign-fake.so.1"));
            Environment.SetEnvironmentVariable(CudaLibrary.SearchPathVariable, "/nonexistent-dir:" + directory);
            var found = CudaLibrary.Probe(["libdistalign-fake.so.1"]);
            Assert.That(found.Path, Is.EqualTo(Path.Combine(directory, "libdistalign-fake.so.1")));
            Assert.That(found.Handle, Is.Not.EqualTo((nint)0));
        }
        finally
        {
            Environment.SetEnvironmentVariable(CudaLibrary.SearchPathVariable, saved);
            Directory.Delete(directory, recursive: true);
        }
    }

    [Test]
    public void ExceptionsCarryTheStatusNameCodeAndFunction()
    {
        var cuda = new CudaException(2, "cuMemAlloc_v2");
        Assert.That(cuda.Message, Is.EqualTo("CUDA_ERROR_OUT_OF_MEMORY (2) in cuMemAlloc_v2"));
        Assert.That((cuda.Status, cuda.StatusName, cuda.Function), Is.EqualTo((2, "CUDA_ERROR_OUT_OF_MEMORY", "cuMemAlloc_v2")));
        Assert.That(new CudaException(100, "cuInit").Message, Is.EqualTo("CUDA_ERROR_NO_DEVICE (100) in cuInit"));
        Assert.That(new CudaException(4242, "cuX").Message, Is.EqualTo("CUDA_ERROR_UNKNOWN_CODE_4242 (4242) in cuX"));
        Assert.That(new CublasException(15, "cublasGemmEx").Message, Is.EqualTo("CUBLAS_STATUS_NOT_SUPPORTED (15) in cublasGemmEx"));
        Assert.That(new CublasException(13, "cublasLtMatmul", "shape 3×4×5").Message,
                    Is.EqualTo("CUBLAS_STATUS_EXECUTION_FAILED (13) in cublasLtMatmul: shape 3×4×5"));
        var nvrtc = new NvrtcException(6, "nvrtcCompileProgram", "lmhead.cu(12): error: identifier \"x\" is undefined\n");
        Assert.That(nvrtc.Message, Is.EqualTo("NVRTC_ERROR_COMPILATION (6) in nvrtcCompileProgram: compile log:\nlmhead.cu(12): error: identifier \"x\" is undefined"));
        Assert.That(nvrtc.Log, Does.Contain("is undefined"));
        Assert.That(new NvrtcException(7, "nvrtcCompileProgram").Message, Does.Contain("libnvrtc-builtins.so"));
    }

    [Test]
    public void EveryBindingIsSourceGeneratedWithBlittableParameters()
    {
        int count = 0;
        foreach (var type in NativeClasses)
        {
            Assert.That(type, Is.Not.Null);
            foreach (var method in type.GetMethods(BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public | BindingFlags.DeclaredOnly)
                                       .Where(m => m.GetCustomAttribute<LibraryImportAttribute>() is not null))
            {
                count++;
                var import = method.GetCustomAttribute<LibraryImportAttribute>()!;
                Assert.That(import.EntryPoint, Is.EqualTo(method.Name), $"{type.Name}.{method.Name}: entry point");
                Assert.That(import.LibraryName, Does.StartWith("distalign-"), "bound through the resolver's logical names");
                // For an all-blittable signature the LibraryImport generator emits the partial method as a bare
                // DllImport (no marshalling stub); any non-blittable parameter would make it a wrapper instead.
                Assert.That(method.GetCustomAttribute<DllImportAttribute>()?.EntryPoint, Is.EqualTo(method.Name),
                            $"{type.Name}.{method.Name}: the generated method forwards directly to the native function");
                foreach (var p in method.GetParameters().Select(p => p.ParameterType).Append(method.ReturnType))
                    Assert.That(p.IsPointer || p == typeof(void) || (p.IsValueType && (p.IsPrimitive || p == typeof(nint) || p == typeof(nuint))),
                                Is.True, $"{type.Name}.{method.Name}: {p} is not a blittable primitive or pointer");
            }
        }
        Assert.That(count, Is.GreaterThanOrEqualTo(55), "the driver, cuBLAS, cuBLASLt and NVRTC functions the engine uses");
    }

    [Test]
    public void CudaIsOneOfTheLibrariesTheSingleResolverServes()
    {
        // Registering another library name must not install a second resolver (the runtime allows one per assembly).
        DistAlign.Engine.Native.NativeLibraryResolver.Register("distalign-test-none", () => 0);
        Assert.That(CudaLibraries.All.Select(l => l.LogicalName), Is.Unique);
    }
}
