using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using DistAlign.Engine.Cuda;

namespace DistAlign.Kernels.Gpu;

/// <summary>A CUDA C source shipped in <c>native/</c> and embedded in this assembly.</summary>
/// <param name="Name">The file name, e.g. "target_logprobs.cu".</param>
/// <param name="Text">The source text.</param>
public sealed record NativeSource(string Name, string Text)
{
    private const string Prefix = "DistAlign.Native.";

    /// <summary>Every embedded source, by file name.</summary>
    public static IReadOnlyList<NativeSource> All { get; } = typeof(NativeSource).Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal)
        .Select(n => new NativeSource(n[Prefix.Length..], Read(n))).ToArray();

    /// <summary>The embedded source <paramref name="name"/>.</summary>
    public static NativeSource Get(string name) => All.FirstOrDefault(s => s.Name == name)
        ?? throw new ArgumentException($"no embedded CUDA source '{name}' (have: {string.Join(", ", All.Select(s => s.Name))})", nameof(name));

    private static string Read(string resource)
    {
        using var stream = typeof(NativeSource).Assembly.GetManifestResourceStream(resource)!;
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }
}

/// <summary>
/// Compiles <see cref="NativeSource"/>s with NVRTC to cubins for one device architecture and caches them on
/// disk, keyed by SHA-256 of (source, options, architecture, NVRTC version), so a changed kernel, compiler or GPU
/// never reuses a stale binary. The cache lives under the user's cache directory
/// (<c>$XDG_CACHE_HOME/distalign/nvrtc</c>, else <c>~/.cache/distalign/nvrtc</c>); files are written to a
/// temporary name and renamed, so concurrent processes never read half a file.
/// </summary>
public sealed class NvrtcKernelCache
{
    /// <summary>Options every compile uses (the architecture option is added per device).</summary>
    public static readonly IReadOnlyList<string> BaseOptions = ["--std=c++17", "-lineinfo"];

    private readonly Func<string, string, IReadOnlyList<string>, NvrtcOutput> compile;

    /// <param name="directory">Where compiled images are kept (created on first write).</param>
    /// <param name="compilerVersion">Part of the key, e.g. "nvrtc 13.0".</param>
    /// <param name="compile">(source, name, options) → cubin; <see cref="Nvrtc.Compile"/> in production.</param>
    public NvrtcKernelCache(string directory, string compilerVersion, Func<string, string, IReadOnlyList<string>, NvrtcOutput> compile)
    {
        Directory = directory;
        CompilerVersion = compilerVersion;
        this.compile = compile;
    }

    /// <summary>The cache backed by the installed NVRTC in <see cref="DefaultDirectory"/>. Throws <see cref="CudaUnavailableException"/> without NVRTC.</summary>
    public static NvrtcKernelCache CreateDefault()
    {
        var (major, minor) = Nvrtc.Version();
        return new NvrtcKernelCache(DefaultDirectory, $"nvrtc {major}.{minor}", (source, name, options) => Nvrtc.Compile(source, name, options, cubin: true));
    }

    /// <summary><c>$XDG_CACHE_HOME/distalign/nvrtc</c>, or <c>~/.cache/distalign/nvrtc</c>.</summary>
    public static string DefaultDirectory
    {
        get
        {
            string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            string root = !string.IsNullOrEmpty(xdg) && Path.IsPathRooted(xdg)
                ? xdg
                : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "distalign", "nvrtc");
        }
    }

    public string Directory { get; }
    public string CompilerVersion { get; }

    /// <summary>The NVRTC options for compute capability major.minor (a cubin for sm_XY).</summary>
    public static IReadOnlyList<string> Options(int major, int minor) => [$"--gpu-architecture=sm_{major}{minor}", .. BaseOptions];

    /// <summary>Hex SHA-256 of everything that determines the compiled image.</summary>
    public static string Key(string source, IReadOnlyList<string> options, string compilerVersion)
    {
        string material = string.Join("\n\0", [compilerVersion, .. options, source]);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(material)));
    }

    /// <summary>The file that holds (or will hold) <paramref name="source"/> compiled for sm_major.minor.</summary>
    public string PathFor(NativeSource source, int major, int minor) =>
        Path.Combine(Directory, $"{Path.GetFileNameWithoutExtension(source.Name)}-sm_{major}{minor}-{Key(source.Text, Options(major, minor), CompilerVersion)[..24]}.cubin");

    /// <summary>The compiled image for sm_major.minor, from the cache or compiled now (and cached).</summary>
    public (byte[] Image, bool FromCache) Get(NativeSource source, int major, int minor)
    {
        string path = PathFor(source, major, minor);
        if (File.Exists(path)) return (File.ReadAllBytes(path), true);
        var output = compile(source.Text, source.Name, Options(major, minor));
        System.IO.Directory.CreateDirectory(Directory);
        string temporary = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        File.WriteAllBytes(temporary, output.Image);
        File.Move(temporary, path, overwrite: true);
        return (output.Image, false);
    }
}
