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

    /// <summary>
    /// Weights after optimizer steps, compared as an update: ‖w_gpu − w_cpu‖₂ ≤ 1e-3·‖w_cpu − w_0‖₂ (and the update is not tiny).
    /// Not per element: AdamW moves an element whose gradient is mostly cancellation noise by about lr whatever that noise's
    /// size, so fp32 summation order can shift a few elements by a good part of a step.
    /// </summary>
    public static void AssertUpdateClose(string backend, ReadOnlySpan<float> initial, ReadOnlySpan<float> cpu, ReadOnlySpan<float> gpu, string what)
    {
        Assert.That(gpu.Length, Is.EqualTo(cpu.Length), what);
        Assert.That(initial.Length, Is.EqualTo(cpu.Length), what);
        double update = 0, apart = 0;
        for (int i = 0; i < cpu.Length; i++)
        {
            update += Math.Pow(cpu[i] - (double)initial[i], 2);
            apart += Math.Pow(gpu[i] - (double)cpu[i], 2);
        }
        (update, apart) = (Math.Sqrt(update), Math.Sqrt(apart));
        TestContext.Out.WriteLine($"[{backend}] {what}: ‖w_cpu − w_0‖ = {update:E3}, ‖w_gpu − w_cpu‖ = {apart:E3}");
        Assert.That(update, Is.GreaterThan(1e-2), $"{what}: the steps move the weights");
        Assert.That(apart, Is.LessThanOrEqualTo(1e-3 * update), $"{what}: the GPU run's update is the CPU's");
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
