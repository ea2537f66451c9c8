using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Xml.Linq;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Gpu;

namespace DistAlign.Tests.Architecture;

/// <summary>
/// The NativeAOT contract: the four libraries build with the trimming and AOT analyzers (so an unsafe call is a build
/// error under warnings-as-errors), and every way into the GPU path — which needs ILGPU's run-time code generation —
/// carries <see cref="RequiresDynamicCodeAttribute"/>, so an AOT host that reaches for it gets a compile-time warning.
/// .ci/run publishes samples/dotnet-aot with NativeAOT and checks its score against <c>distalign score</c>.
/// </summary>
public class AotFenceTests
{
    [TestCase("Engine")]
    [TestCase("Kernels")]
    [TestCase("Transformer")]
    [TestCase("Alignment")]
    public void TheLibraryBuildsWithTheAotAnalyzers(string project)
    {
        var csproj = XDocument.Load(Path.Combine(SourceTree.RepositoryRoot(), "src", project, project + ".csproj"));
        Assert.That(csproj.Descendants("IsAotCompatible").Select(e => e.Value), Is.EqualTo(new[] { "true" }));
    }

    [Test]
    public void EveryWayIntoTheGpuPathRequiresDynamicCode()
    {
        MethodBase[] entries =
        [
            typeof(GpuContext).GetMethod(nameof(GpuContext.CreateCpuSimulator))!,
            typeof(GpuContext).GetMethod(nameof(GpuContext.TryCreateCuda))!,
            typeof(GptDevice).GetConstructors().Single(c => c.GetParameters().Length > 0),
            typeof(GpuGpt).GetConstructors().Single(),
            typeof(GpuGptDecoder).GetConstructors().Single(),
        ];
        foreach (var m in entries)
        {
            var attribute = m.GetCustomAttribute<RequiresDynamicCodeAttribute>();
            Assert.That(attribute, Is.Not.Null, $"{m.DeclaringType!.Name}.{m.Name}");
            Assert.That(attribute!.Message, Is.EqualTo(GpuContext.DynamicCodeReason));
        }
    }
}
