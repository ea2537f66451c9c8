using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// A GPU model's results against the CPU <see cref="Gpt"/>'s, shared by the GPU model fixtures: per tensor,
/// max |gpu − cpu| ≤ 1e-5 + 1e-4·max |cpu| (fp32 GEMMs, so the difference is summation order only).
/// </summary>
internal static class GpuVersusCpu
{
    public const double AbsoluteTolerance = 1e-5, RelativeTolerance = 1e-4;

    /// <returns>max |actual − expected| / max |expected|</returns>
    public static double AssertTensorClose(string backend, ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), what);
        float scale = MaxAbs(expected);
        double worst = 0;
        int at = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs((double)actual[i] - expected[i]);
            if (!(d <= worst)) (worst, at) = (d, i);
        }
        double limit = AbsoluteTolerance + RelativeTolerance * scale;
        if (!(worst <= limit))
            Assert.Fail($"[{backend}] {what}: element {at}: gpu {actual[at]:R} vs cpu {expected[at]:R} (|Δ| = {worst:E2} > {limit:E2})");
        return scale > 0 ? worst / scale : worst;
    }

    /// <summary>Every parameter tensor's gradient within the tolerance (and non-zero on the CPU, so the check has teeth); logs the worst.</summary>
    public static void AssertEveryGradientClose(string backend, Gpt cpu, Gpt fromGpu, string what = "gradient")
    {
        double worst = 0;
        string worstName = "";
        foreach (var t in cpu.Layout.Tensors)
        {
            var expected = cpu.Gradients.Slice((int)t.Offset, (int)t.Length);
            Assert.That(MaxAbs(expected), Is.GreaterThan(0f), $"{t.Name}: the test must produce a non-zero gradient");
            double relative = AssertTensorClose(backend, fromGpu.Gradients.Slice((int)t.Offset, (int)t.Length), expected, $"{what}: ∂{t.Name}");
            if (relative > worst) (worst, worstName) = (relative, t.Name);
        }
        TestContext.Out.WriteLine($"[{backend}] {what}: worst gradient {worstName}, max|Δ|/max|cpu| = {worst:E2}");
    }

    public static float MaxAbs(ReadOnlySpan<float> values)
    {
        float max = 0f;
        foreach (float v in values) max = Math.Max(max, Math.Abs(v));
        return max;
    }
}
