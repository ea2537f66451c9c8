using System.Runtime.InteropServices;
using System.Text;

namespace DistAlign.Engine.Cuda;

/// <summary>Source-generated bindings of NVRTC (nvrtc.h).</summary>
internal static unsafe partial class NvrtcNative
{
    private const string Lib = CudaLibraries.NvrtcName;

    [LibraryImport(Lib, EntryPoint = "nvrtcVersion")] internal static partial int nvrtcVersion(int* major, int* minor);
    [LibraryImport(Lib, EntryPoint = "nvrtcCreateProgram")]
    internal static partial int nvrtcCreateProgram(nint* program, byte* source, byte* name, int headerCount, byte** headers, byte** includeNames);
    [LibraryImport(Lib, EntryPoint = "nvrtcDestroyProgram")] internal static partial int nvrtcDestroyProgram(nint* program);
    [LibraryImport(Lib, EntryPoint = "nvrtcCompileProgram")] internal static partial int nvrtcCompileProgram(nint program, int optionCount, byte** options);
    [LibraryImport(Lib, EntryPoint = "nvrtcGetPTXSize")] internal static partial int nvrtcGetPTXSize(nint program, nuint* size);
    [LibraryImport(Lib, EntryPoint = "nvrtcGetPTX")] internal static partial int nvrtcGetPTX(nint program, byte* ptx);
    [LibraryImport(Lib, EntryPoint = "nvrtcGetCUBINSize")] internal static partial int nvrtcGetCUBINSize(nint program, nuint* size);
    [LibraryImport(Lib, EntryPoint = "nvrtcGetCUBIN")] internal static partial int nvrtcGetCUBIN(nint program, byte* cubin);
    [LibraryImport(Lib, EntryPoint = "nvrtcGetProgramLogSize")] internal static partial int nvrtcGetProgramLogSize(nint program, nuint* size);
    [LibraryImport(Lib, EntryPoint = "nvrtcGetProgramLog")] internal static partial int nvrtcGetProgramLog(nint program, byte* log);
}

/// <summary>
/// The result of one NVRTC compile: the module image (PTX text, or a cubin when compiled for a real
/// architecture, <c>--gpu-architecture=sm_XY</c>) and the compiler's log (warnings).
/// </summary>
public sealed record NvrtcOutput(byte[] Image, bool IsCubin, string Log)
{
    /// <summary>The PTX text (only for PTX output).</summary>
    public string Ptx => IsCubin ? throw new InvalidOperationException("this output is a cubin, not PTX") : Encoding.UTF8.GetString(Image).TrimEnd('\0');
}

/// <summary>
/// NVRTC: CUDA C++ → PTX at run time, no CUDA toolkit or GPU needed beyond libnvrtc (+ its builtins library).
/// Errors are <see cref="NvrtcException"/>; a failed compile carries the log.
/// </summary>
public static unsafe class Nvrtc
{
    private static void EnsureLoaded()
    {
        CudaLibraries.EnsureRegistered();
        CudaLibraries.Nvrtc.EnsureAvailable();
    }

    private static void Check(int status, string function, string? log = null)
    {
        if (status != 0) throw new NvrtcException(status, function, log);
    }

    /// <summary>NVRTC's (major, minor) version, e.g. (13, 0).</summary>
    public static (int Major, int Minor) Version()
    {
        EnsureLoaded();
        int major, minor;
        Check(NvrtcNative.nvrtcVersion(&major, &minor), "nvrtcVersion");
        return (major, minor);
    }

    /// <summary>
    /// Compiles <paramref name="source"/> (named <paramref name="name"/> in messages) with <paramref name="options"/>.
    /// With <paramref name="cubin"/> the options must name a real architecture (<c>--gpu-architecture=sm_90</c>)
    /// and the result is machine code the driver loads without JIT (and without needing a driver as new as
    /// NVRTC's PTX ISA); otherwise PTX (<c>compute_90</c>).
    /// </summary>
    public static NvrtcOutput Compile(string source, string name, IReadOnlyList<string> options, bool cubin)
    {
        EnsureLoaded();
        nint program = 0;
        byte[] sourceBytes = Encoding.UTF8.GetBytes(source + "\0"), nameBytes = Encoding.UTF8.GetBytes(name + "\0");
        var optionHandles = options.Select(o => GCHandle.Alloc(Encoding.UTF8.GetBytes(o + "\0"), GCHandleType.Pinned)).ToArray();
        try
        {
            fixed (byte* s = sourceBytes, n = nameBytes)
                Check(NvrtcNative.nvrtcCreateProgram(&program, s, n, 0, null, null), "nvrtcCreateProgram");
            byte** optionPointers = stackalloc byte*[Math.Max(1, optionHandles.Length)];
            for (int i = 0; i < optionHandles.Length; i++) optionPointers[i] = (byte*)optionHandles[i].AddrOfPinnedObject();
            int compiled = NvrtcNative.nvrtcCompileProgram(program, optionHandles.Length, optionPointers);
            string log = ReadLog(program);
            Check(compiled, "nvrtcCompileProgram", log);
            nuint size;
            byte[] image;
            if (cubin)
            {
                Check(NvrtcNative.nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
                image = new byte[(int)size];
                fixed (byte* p = image) Check(NvrtcNative.nvrtcGetCUBIN(program, p), "nvrtcGetCUBIN");
            }
            else
            {
                Check(NvrtcNative.nvrtcGetPTXSize(program, &size), "nvrtcGetPTXSize");
                image = new byte[(int)size];
                fixed (byte* p = image) Check(NvrtcNative.nvrtcGetPTX(program, p), "nvrtcGetPTX");
            }
            return new NvrtcOutput(image, cubin, log);
        }
        finally
        {
            if (program != 0) NvrtcNative.nvrtcDestroyProgram(&program);
            foreach (var h in optionHandles) h.Free();
        }
    }

    private static string ReadLog(nint program)
    {
        nuint size;
        if (NvrtcNative.nvrtcGetProgramLogSize(program, &size) != 0 || size <= 1) return "";
        var log = new byte[(int)size];
        fixed (byte* p = log)
            if (NvrtcNative.nvrtcGetProgramLog(program, p) != 0) return "";
        return Encoding.UTF8.GetString(log).TrimEnd('\0');
    }
}
