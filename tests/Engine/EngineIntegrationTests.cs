using System.Runtime.InteropServices;
using DistAlign.Engine.Memory;
using DistAlign.Engine.Random;
using DistAlign.Engine.SafeTensors;

namespace DistAlign.Tests.Engine;

/// <summary>The pieces together: plan → arenas → Philox init → safetensors checkpoint → reload into fresh arenas.</summary>
public class EngineIntegrationTests
{
    [Test]
    public void ParametersInitialisedSavedAndReloadedBitIdentically()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("parameters").Add<float>("wte.weight", 64 * 16).Add<float>("h.0.ln_1.weight", 16).Add<float>("h.0.ln_1.bias", 16);
        builder.Arena("gradients").Add<float>("wte.weight", 64 * 16);
        var plan = builder.Build();
        plan.EnsureFits(1 << 20);

        using var memory = MemoryArenas.Allocate(plan);
        var parameters = memory["parameters"];
        var philox = new Philox(seed: 1337);
        philox.FillNormal(parameters.Span<float>("wte.weight"), stream: 0, offset: 0, mean: 0f, standardDeviation: 0.02f, maxDegreeOfParallelism: 2);
        parameters.Span<float>("h.0.ln_1.weight").Fill(1f);

        string path = Path.Combine(Path.GetTempPath(), $"distalign-ckpt-{Guid.NewGuid():N}.safetensors");
        try
        {
            var tensors = parameters.Plan.Tensors.Select(t =>
                SafeTensor.FromFloats(t.Name, parameters.Span<float>(t.Name), [t.ElementCount]));
            SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["seed"] = "1337" });

            using var reloaded = MemoryArenas.Allocate(plan);
            using var file = SafeTensorsFile.Open(path);
            foreach (var t in plan["parameters"].Tensors)
                file.ReadF32(t.Name, reloaded["parameters"].Span<float>(t.Name));

            var original = new byte[parameters.SizeInBytes];
            var restored = new byte[parameters.SizeInBytes];
            parameters.Bytes.CopyTo(original);
            reloaded["parameters"].Bytes.CopyTo(restored);
            Assert.That(restored, Is.EqualTo(original));
            Assert.That(MemoryMarshal.Cast<byte, float>(restored).ToArray().Take(4), Is.Not.All.EqualTo(0f));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
