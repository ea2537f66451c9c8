using System.Diagnostics;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Experiments;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using ILGPU.Runtime;

namespace DistAlign.GpuCheck;

/// <summary>
/// <c>demo --device cuda</c>: the known-target experiment (<see cref="DemoExperiment"/>) on the accelerator — π0's pretraining and the
/// reward model's backbone on GpuGpt, every policy on GpuGptPolicy, decoding and entropies on the device — against the same run on the
/// CPU at <see cref="DemoSettings.Smoke"/> (fp32 GEMMs): every number of the two reports (<see cref="DemoComparison"/>) within
/// 1e-3·max(1, |cpu|) (the simulator test holds it to 1e-4 and sees about 5e-7; cuBLAS sums in its own order). With benchmarks, the CI-sized demo (<see cref="DemoSettings.Quick"/>) is
/// timed end to end on the device and on the CPU, and a PPO iteration (<c>bench ppo --device cuda</c>) is split into its phases.
/// </summary>
internal sealed class DemoChecks(Accelerator accelerator, Report report)
{
    private const double Tolerance = 1e-3;

    public void CompareWithTheCpuRun()
    {
        const string what = "demo (DemoSettings.Smoke) on the device vs the CPU: every reported number";
        try
        {
            var settings = DemoSettings.Smoke.Validate();
            var (cpu, cpuSize) = RunOn(GptDevice.Cpu, settings, out _);
            using (cpu)
            {
                var device = Device(GemmPrecision.Float32, out var gemm);
                using (gemm)
                {
                    var (gpu, gpuSize) = RunOn(device, settings, out _);
                    using (gpu)
                    {
                        var differences = DemoComparison.Differences(gpu, gpuSize, cpu, cpuSize).ToList();
                        var worst = differences.MaxBy(d => d.Relative)!;
                        report.Add(new CheckResult(what, differences.Count, worst.Relative, worst.Relative / Tolerance, $"1e-3·max(1, |cpu|) (worst: {worst.Name})"));
                    }
                }
            }
        }
        catch (Exception e) { report.Add(new CheckResult(what, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    /// <summary>The CI-sized demo, end to end (π0 pretrained, no cache), on the device (fp32 and bf16 GEMMs) and on the CPU.</summary>
    public void TimeTheQuickDemo()
    {
        var settings = DemoSettings.Quick.Validate();
        RunOn(GptDevice.Cpu, settings, out double cpuSeconds).Experiment.Dispose();
        foreach (var precision in new[] { GemmPrecision.Float32, GemmPrecision.BFloat16 })
        {
            try
            {
                var device = Device(precision, out var gemm);
                double seconds;
                using (gemm) RunOn(device, settings, out seconds).Experiment.Dispose();
                report.Add(new BenchmarkResult($"demo --quick, {precision} GEMMs", "π0 150 steps, reward model, 6 methods × 10 steps, evaluation",
                    seconds * 1e3, $"{seconds:F1} s on the device; {cpuSeconds:F1} s on the CPU ({CpuParallel.Threads} threads)", $"{cpuSeconds / seconds:F2}× the CPU"));
            }
            catch (Exception e) { report.Add(new CheckResult($"demo --quick timing ({precision})", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
        }
    }

    /// <summary><c>bench ppo --device cuda</c>: a PPO iteration's sampling, scoring and training on the device (fp32 GEMMs), tiny and W2.</summary>
    public void TimeThePpoIteration()
    {
        try
        {
            var device = Device(GemmPrecision.Float32, out var gemm);
            using (gemm)
            {
                foreach (var m in PpoIterationBenchmark.RunAll(iterations: 3, device))
                    report.Add(new BenchmarkResult($"PPO iteration ({m.Name}), GpuGptPolicy + GPU R̂", $"{m.Prompts} × ({m.PromptTokens} + {m.ResponseTokens / m.Prompts}) tokens, {m.OptimizerSteps} optimizer steps",
                        m.TotalMilliseconds, $"sampling {m.SamplingMilliseconds:F0} ms ({m.SamplingTokensPerSecond:N0} tokens/s), scoring {m.ScoringMilliseconds:F0} ms, training {m.TrainingMilliseconds:F0} ms",
                        "see docs/benchmarks.md for the CPU's"));
            }
        }
        catch (Exception e) { report.Add(new CheckResult("bench ppo on the device", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    private GptDevice Device(GemmPrecision precision, out IDisposable? gemmOwner)
    {
        var gemm = GpuContext.CreateGemm(accelerator, precision);
        gemmOwner = gemm as IDisposable;
        return new GptDevice(accelerator, gemm, null, $"{accelerator.Name} ({precision} GEMMs)");
    }

    private static (DemoExperiment Experiment, DemoSizeResult Size) RunOn(GptDevice device, DemoSettings settings, out double seconds)
    {
        string cache = Directory.CreateTempSubdirectory("distalign-gpu-check-demo-").FullName;
        var watch = Stopwatch.StartNew();
        try
        {
            var experiment = DemoExperiment.Prepare(settings, cache, device: device);
            var size = experiment.RunAtSize(settings.Pairs);
            seconds = watch.Elapsed.TotalSeconds;
            return (experiment, size);
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }
}
