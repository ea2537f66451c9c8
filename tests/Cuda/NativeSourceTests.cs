using System.Diagnostics;
using System.Text.RegularExpressions;
using DistAlign.Engine.Cuda;
using DistAlign.Kernels.Gpu;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// The CUDA C sources in native/ and their NVRTC cache, without a GPU: embedded as resources, the extern "C"
/// entry points the launchers look up, balanced brackets, a host-compiler syntax/type check through a shim
/// (tests/Cuda/cuda_host_shim.h, which says what that does and does not check), a real NVRTC compile when
/// libnvrtc is installed (skipped with the reason otherwise), and the cache's keys and files.
/// </summary>
public partial class NativeSourceTests
{
    private static readonly string RepositoryRoot = HostEmulator.RepositoryRoot;

    [GeneratedRegex(@"extern\s+""C""\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(")]
    private static partial Regex EntryPoint();

    [Test]
    public void EveryNativeFileIsEmbeddedVerbatim()
    {
        var files = Directory.GetFiles(Path.Combine(RepositoryRoot, "native"), "*.cu").Select(Path.GetFileName).Order().ToArray();
        Assert.That(files, Is.Not.Empty);
        Assert.That(NativeSource.All.Select(s => s.Name), Is.EqualTo(files));
        foreach (var source in NativeSource.All)
            Assert.That(source.Text, Is.EqualTo(File.ReadAllText(Path.Combine(RepositoryRoot, "native", source.Name))), source.Name);
        Assert.Throws<ArgumentException>(() => NativeSource.Get("missing.cu"));
    }

    [Test]
    public void TheTargetLogProbsSourceHasTheEntryPointsTheLauncherLoads()
    {
        var source = NativeSource.Get(NvrtcTargetLogProbs.SourceName);
        var entries = EntryPoint().Matches(source.Text).Select(m => m.Groups[1].Value).Order().ToArray();
        Assert.That(entries, Is.EqualTo(new[] { "distalign_target_logprobs_backward_bf16", "distalign_target_logprobs_bf16", "distalign_target_logprobs_f32" }));
        string launcher = File.ReadAllText(Path.Combine(RepositoryRoot, "src", "Kernels", "Gpu", "NvrtcTargetLogProbs.cs"));
        foreach (var entry in entries) Assert.That(launcher, Does.Contain($"\"{entry}\""), $"{entry} is looked up by the launcher");
        Assert.That(source.Text, Does.Not.Contain("#include"), "self-contained: NVRTC compiles it without CUDA headers");
    }

    /// <summary>
    /// native/target_logprobs.cu's kernels run in the host CUDA emulator as <see cref="NvrtcTargetLogProbs"/> launches them
    /// (512 threads per row) against an fp64 log-sum-exp and log-probs and the fp64 d(logits) (tests/Cuda/target_logprobs_check.cpp:
    /// odd vocabularies up to GPT-2's, rows V apart (off a 16-byte boundary) and padded to the LM head's row stride with garbage
    /// in the padding, a last-element maximum, a maximum that rises at every element; bounds 2e-6 and bf16 rounding, 2⁻⁸).
    /// On CUDA the launcher is held to the CPU op in <see cref="CudaKernelTests"/> and gpu-check.
    /// </summary>
    [Test]
    public void TheTargetLogProbsKernelsMatchAnFp64ReferenceInTheHostEmulator()
    {
        Assert.That(File.ReadAllText(Path.Combine(RepositoryRoot, "tests", "Cuda", "target_logprobs_check.cpp")),
                    Does.Contain($"constexpr int Threads = {NvrtcTargetLogProbs.ThreadsPerRow};"), "the check launches as the launcher does");
        var (code, output) = HostEmulator.CompileAndRun("target_logprobs_check.cpp");
        TestContext.Out.WriteLine(output);
        Assert.That(code, Is.Zero, $"the emulated kernels are outside their bound:\n{output}");
        Assert.That(output.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(25).And.All.StartWith("ok"));
    }

    [Test]
    public void TheFlashAttentionSourceHasTheEntryPointsTheLauncherLoads()
    {
        var source = NativeSource.Get(NvrtcFlashAttention.SourceName);
        var entries = EntryPoint().Matches(source.Text).Select(m => m.Groups[1].Value).Order().ToArray();
        Assert.That(entries, Is.EqualTo(new[] { "distalign_flash_attention_backward_delta", "distalign_flash_attention_backward_kv",
                                                "distalign_flash_attention_backward_q", "distalign_flash_attention_convert", "distalign_flash_attention_forward" }));
        string launcher = File.ReadAllText(Path.Combine(RepositoryRoot, "src", "Kernels", "Gpu", "NvrtcFlashAttention.cs"));
        foreach (var entry in entries) Assert.That(launcher, Does.Contain($"\"{entry}\""), $"{entry} is looked up by the launcher");
        Assert.That(source.Text, Does.Not.Contain("#include"), "self-contained: NVRTC compiles it without CUDA headers");
    }

    [Test]
    public void BracketsBalanceOutsideCommentsAndStrings()
    {
        foreach (var source in NativeSource.All)
        {
            string code = Regex.Replace(source.Text, @"//[^\n]*|/\*.*?\*/|""(?:\\.|[^""\\])*""|'(?:\\.|[^'\\])'", "", RegexOptions.Singleline);
            var stack = new Stack<(char, int)>();
            int line = 1;
            foreach (char ch in code)
            {
                if (ch == '\n') line++;
                if (ch is '(' or '[' or '{') stack.Push((ch, line));
                else if (ch is ')' or ']' or '}')
                {
                    Assert.That(stack, Is.Not.Empty, $"{source.Name}:{line}: unmatched '{ch}'");
                    var (open, at) = stack.Pop();
                    Assert.That("([{".IndexOf(open), Is.EqualTo(")]}".IndexOf(ch)), $"{source.Name}:{line}: '{ch}' closes '{open}' from line {at}");
                }
            }
            Assert.That(stack, Is.Empty, $"{source.Name}: unclosed brackets");
        }
    }

    [Test]
    public void SourcesCompileAsCppThroughTheHostShim()
    {
        string? gpp = new[] { "/usr/bin/g++", "/usr/local/bin/g++" }.FirstOrDefault(File.Exists);
        if (gpp is null) Assert.Ignore("g++ is not installed: the host-compiler check of native/*.cu did not run");
        string shim = Path.Combine(RepositoryRoot, "tests", "Cuda", "cuda_host_shim.h");
        foreach (var file in Directory.GetFiles(Path.Combine(RepositoryRoot, "native"), "*.cu"))
        {
            var info = new ProcessStartInfo(gpp, ["-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas", "-include", shim, "-x", "c++", file])
            { RedirectStandardError = true, RedirectStandardOutput = true };
            using var process = Process.Start(info)!;
            string errors = process.StandardError.ReadToEnd();
            process.WaitForExit();
            Assert.That(process.ExitCode, Is.Zero, $"g++ on {Path.GetFileName(file)}:\n{errors}");
        }
    }

    [Test]
    public void NvrtcCompilesEverySourceForSm90WhenInstalled()
    {
        if (!CudaLibraries.Nvrtc.IsAvailable) Assert.Ignore($"NVRTC is not installed, so native/*.cu was not compiled for the GPU: {CudaLibraries.Nvrtc.UnavailableReason}");
        foreach (var source in NativeSource.All)
        {
            var output = Nvrtc.Compile(source.Text, source.Name, NvrtcKernelCache.Options(9, 0), cubin: true);
            Assert.That(output.Image, Is.Not.Empty, source.Name);
            var ptx = Nvrtc.Compile(source.Text, source.Name, ["--gpu-architecture=compute_90", .. NvrtcKernelCache.BaseOptions], cubin: false).Ptx;
            foreach (Match m in EntryPoint().Matches(source.Text))
                Assert.That(ptx, Does.Contain(".entry " + m.Groups[1].Value), source.Name);
        }
        var broken = Assert.Throws<NvrtcException>(() => Nvrtc.Compile("extern \"C\" __global__ void k() { undefined_name = 1; }", "broken.cu", ["--gpu-architecture=compute_90"], cubin: false))!;
        Assert.That(broken.StatusName, Is.EqualTo("NVRTC_ERROR_COMPILATION"));
        Assert.That(broken.Log, Does.Contain("undefined_name"));
    }

    [Test]
    public void TheCacheCompilesOncePerSourceArchitectureAndCompiler()
    {
        string directory = Path.Combine(Directory.CreateTempSubdirectory("distalign-nvrtc-").FullName, "cache");
        try
        {
            var compiled = new List<(string Name, string[] Options)>();
            NvrtcOutput Fake(string text, string name, IReadOnlyList<string> options)
            {
                compiled.Add((name, options.ToArray()));
                return new NvrtcOutput([.. System.Text.Encoding.UTF8.GetBytes($"{name}|{string.Join(' ', options)}|{text.Length}")], true, "");
            }
            var cache = new NvrtcKernelCache(directory, "nvrtc 13.0", Fake);
            var source = new NativeSource("k.cu", "extern \"C\" __global__ void k() {}");
            var first = cache.Get(source, 9, 0);
            var second = cache.Get(source, 9, 0);
            Assert.That((first.FromCache, second.FromCache), Is.EqualTo((false, true)));
            Assert.That(second.Image, Is.EqualTo(first.Image));
            Assert.That(compiled, Has.Count.EqualTo(1));
            Assert.That(compiled[0].Options, Does.Contain("--gpu-architecture=sm_90"));
            Assert.That(Path.GetFileName(cache.PathFor(source, 9, 0)), Does.StartWith("k-sm_90-").And.EndWith(".cubin"));

            Assert.That(cache.Get(source, 8, 0).FromCache, Is.False, "another architecture compiles again");
            Assert.That(cache.Get(source with { Text = source.Text + " " }, 9, 0).FromCache, Is.False, "a changed source compiles again");
            Assert.That(new NvrtcKernelCache(directory, "nvrtc 13.1", Fake).Get(source, 9, 0).FromCache, Is.False, "another NVRTC compiles again");
            Assert.That(compiled, Has.Count.EqualTo(4));
            Assert.That(Directory.GetFiles(directory), Has.Length.EqualTo(4).And.All.EndsWith(".cubin"), "no temporary files left");
            Assert.That(NvrtcKernelCache.Key("a", ["x"], "v"), Is.Not.EqualTo(NvrtcKernelCache.Key("a", ["x"], "w")));
            Assert.That(NvrtcKernelCache.Key("a", ["x", "y"], "v"), Is.Not.EqualTo(NvrtcKernelCache.Key("a", ["xy"], "v")));
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(directory)!, recursive: true);
        }
    }

    [Test]
    public void TheDefaultCacheIsUnderTheUsersCacheDirectory()
    {
        string? saved = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        try
        {
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", "/tmp/xdg-test");
            Assert.That(NvrtcKernelCache.DefaultDirectory, Is.EqualTo("/tmp/xdg-test/distalign/nvrtc"));
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", null);
            Assert.That(NvrtcKernelCache.DefaultDirectory, Is.EqualTo(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "distalign", "nvrtc")));
        }
        finally
        {
            Environment.SetEnvironmentVariable("XDG_CACHE_HOME", saved);
        }
    }
}
