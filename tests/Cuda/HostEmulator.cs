using System.Diagnostics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// Builds and runs a host check of a native/*.cu kernel through the CUDA emulator (tests/Cuda/cuda_emulator.h): g++ compiles
/// tests/Cuda/CHECK.cpp (which includes the kernel source) into a temporary executable, runs it, and returns its exit code and
/// output. Ignores the test with the reason when g++ is not installed.
/// </summary>
internal static class HostEmulator
{
    public static readonly string RepositoryRoot = FindRoot();

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "DistAlign.sln"))) return d.FullName;
        throw new InvalidOperationException("repository root (DistAlign.sln) not found above the test directory");
    }

    /// <param name="check">the check's file name in tests/Cuda, e.g. "flash_attention_check.cpp"</param>
    public static (int Code, string Output) CompileAndRun(string check)
    {
        string? gpp = new[] { "/usr/bin/g++", "/usr/local/bin/g++" }.FirstOrDefault(File.Exists);
        if (gpp is null) Assert.Ignore($"g++ is not installed: the emulated run of {check} did not happen");
        string folder = Directory.CreateTempSubdirectory("distalign-emulated-").FullName;
        try
        {
            string executable = Path.Combine(folder, Path.GetFileNameWithoutExtension(check));
            string tests = Path.Combine(RepositoryRoot, "tests", "Cuda");
            var (compileCode, compileOutput) = RunProcess(gpp!, ["-std=c++20", "-O1", "-pthread", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
                "-include", Path.Combine(tests, "cuda_emulator.h"), "-I", Path.Combine(RepositoryRoot, "native"),
                "-x", "c++", Path.Combine(tests, check), "-o", executable]);
            Assert.That(compileCode, Is.Zero, $"g++ failed on {check}:\n{compileOutput}");
            return RunProcess(executable, []);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static (int Code, string Output) RunProcess(string file, string[] arguments)
    {
        var info = new ProcessStartInfo(file, arguments) { RedirectStandardError = true, RedirectStandardOutput = true };
        using var process = Process.Start(info)!;
        var error = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output + error.Result);
    }
}
