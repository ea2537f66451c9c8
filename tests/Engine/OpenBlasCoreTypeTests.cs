using DistAlign.Engine.Native;

namespace DistAlign.Tests.Engine;

/// <summary>
/// The rule for OPENBLAS_CORETYPE (never force an ISA the CPU lacks) and the CPU views benchmarks name, on made-up CPUs:
/// an AVX-512 Xeon, the same with AVX-512 hidden from .NET, an AVX2-only Zen 3, an old SSE-only CPU.
/// </summary>
public class OpenBlasCoreTypeTests
{
    private static readonly HashSet<string> Avx512Flags = ["fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"];
    private static readonly HashSet<string> Avx2Flags = ["fpu", "sse2", "avx", "avx2", "fma"];
    private static readonly HashSet<string> SseFlags = ["fpu", "sse2", "sse3"];

    private static CpuIsa Native512 => new(Avx512Flags, true, true, true);
    private static CpuIsa Avx2ViewOf512 => new(Avx512Flags, false, true, true);
    private static CpuIsa NativeAvx2 => new(Avx2Flags, false, true, true);

    [Test]
    public void SkylakeXOnlyWhereTheCpuHasAvx512fAndOurKernelsUseIt()
    {
        Assert.That(OpenBlasCoreType.ForPeer(null, Avx512Flags, vector512Accelerated: true), Is.EqualTo("SkylakeX"));
        Assert.That(OpenBlasCoreType.ForPeer(null, Avx2Flags, vector512Accelerated: false), Is.Null, "AVX2 CPU: OpenBLAS's own choice, never SkylakeX (SIGILL)");
        Assert.That(OpenBlasCoreType.ForPeer(null, SseFlags, vector512Accelerated: false), Is.Null);
        Assert.That(OpenBlasCoreType.ForPeer(null, new HashSet<string>(), vector512Accelerated: false), Is.Null, "no /proc/cpuinfo: leave it unset");
        // a flag list that lacks avx512f is never given SkylakeX, whatever .NET claims
        Assert.That(OpenBlasCoreType.ForPeer(null, Avx2Flags, vector512Accelerated: true), Is.Null);
    }

    [Test]
    public void AnAvx512CpuWithAvx512HiddenFromDotNetGivesThePeerTheAvx2View()
    {
        Assert.That(OpenBlasCoreType.ForPeer(null, Avx512Flags, vector512Accelerated: false), Is.EqualTo("Haswell"));
    }

    [Test]
    public void TheCallersValueIsPassedThrough()
    {
        Assert.That(OpenBlasCoreType.ForPeer("Zen", Avx512Flags, true), Is.EqualTo("Zen"));
        Assert.That(OpenBlasCoreType.ForPeer("Haswell", Avx2Flags, false), Is.EqualTo("Haswell"));
        Assert.That(OpenBlasCoreType.ForPeer("", Avx512Flags, true), Is.EqualTo("SkylakeX"), "an empty variable counts as unset");
    }

    [Test]
    public void DescribeNamesTheValueOrOpenBlassOwnChoice()
    {
        Assert.That(OpenBlasCoreType.Describe("SkylakeX"), Is.EqualTo("OPENBLAS_CORETYPE=SkylakeX"));
        Assert.That(OpenBlasCoreType.Describe(null), Is.EqualTo("OPENBLAS_CORETYPE unset (OpenBLAS's own choice)"));
    }

    [Test]
    public void AMismatchSuggestsSkylakeXOnlyOnAnAvx512Cpu()
    {
        // Debian's OpenBLAS 0.3.21 on an AVX-512 CPU it does not know: SSE3 (Prescott) kernels
        Assert.That(OpenBlasCoreType.Mismatch("Prescott", null, Native512), Does.Contain("OPENBLAS_CORETYPE=SkylakeX").And.Contain("is not set"));
        Assert.That(OpenBlasCoreType.Mismatch("SkylakeX", "SkylakeX", Native512), Is.Null);
        Assert.That(OpenBlasCoreType.Mismatch("Cooperlake", null, Native512), Is.Null, "a recognised AVX-512 CPU needs nothing");
        // an AVX2 CPU: whatever OpenBLAS picked, never suggest SkylakeX
        Assert.That(OpenBlasCoreType.Mismatch("Zen", null, NativeAvx2), Is.Null);
        Assert.That(OpenBlasCoreType.Mismatch("Prescott", null, NativeAvx2), Is.Null);
        Assert.That(OpenBlasCoreType.Mismatch(null, null, Native512), Is.Null, "core unknown: nothing to say");
    }

    [Test]
    public void AMismatchSuggestsHaswellWhereDotNetHidesAvx512ButOpenBlasUsesIt()
    {
        Assert.That(OpenBlasCoreType.Mismatch("SkylakeX", "SkylakeX", Avx2ViewOf512), Does.Contain("OPENBLAS_CORETYPE=Haswell").And.Not.Contain("=SkylakeX for"));
        Assert.That(OpenBlasCoreType.Mismatch("Haswell", "Haswell", Avx2ViewOf512), Is.Null);
    }

    [Test]
    public void TheViewSaysWhichPartOfTheCpuOurKernelsUse()
    {
        Func<string, string?> none = _ => null;
        Func<string, string?> avx512Off = v => v == "DOTNET_EnableAVX512" ? "0" : null;
        Func<string, string?> avx2Off = v => v == "DOTNET_EnableAVX2" ? "0" : null;
        Assert.That(Native512.View("SkylakeX", none), Is.EqualTo("native AVX-512"));
        Assert.That(Avx2ViewOf512.View("Haswell", avx512Off), Is.EqualTo("AVX2 view of an AVX-512 CPU: .NET AVX-512 disabled, OpenBLAS Haswell core"));
        Assert.That(Avx2ViewOf512.View("Haswell", none), Does.StartWith("AVX2 view of an AVX-512 CPU: .NET does not accelerate Vector512 here"));
        Assert.That(NativeAvx2.View("Zen", none), Is.EqualTo("native AVX2"));
        Assert.That(new CpuIsa(Avx2Flags, false, false, true).View(null, avx2Off), Is.EqualTo("Vector128 view of an AVX2 CPU: .NET AVX2 disabled, OpenBLAS ? core"));
        Assert.That(new CpuIsa(SseFlags, false, false, true).View(null, none), Is.EqualTo("native Vector128"));
        Assert.That(Native512.KernelIsa, Is.EqualTo("AVX-512"));
        Assert.That(Avx2ViewOf512.KernelIsa, Is.EqualTo("AVX2"));
    }

    [Test]
    public void FlagsComeFromTheFirstProcessorsFlagsLine()
    {
        string[] cpuinfo =
        [
            "processor\t: 0", "model name\t: Intel(R) Xeon(R) Processor", "flags\t\t: fpu sse2 avx2 fma avx512f", "",
            "processor\t: 1", "flags\t\t: fpu sse2",
        ];
        var flags = CpuIsa.ParseFlags(cpuinfo);
        Assert.That(flags, Is.EquivalentTo(new[] { "fpu", "sse2", "avx2", "fma", "avx512f" }));
        Assert.That(CpuIsa.ParseFlags(["processor\t: 0", "Features\t: fp asimd"]), Is.Empty, "ARM64 lists Features, not flags");
    }
}
