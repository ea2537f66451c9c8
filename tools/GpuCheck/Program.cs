using System.Diagnostics;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Engine.Cuda;
using DistAlign.Kernels.Gpu;
using ILGPU.Runtime.Cuda;

namespace DistAlign.GpuCheck;

/// <summary>
/// <c>gpu-check [--out DIR] [--quick] [--skip-bench]</c>: on a machine with an NVIDIA GPU, checks the GPU kernels
/// (ILGPU on the CUDA accelerator, cuBLAS/cuBLASLt GEMMs, the NVRTC kernel) against the CPU kernels, then
/// checks the whole GPT (GpuGpt) against the CPU Gpt, DPO steps on GpuGptPolicy against the CPU GptPolicy and KV-cache decoding (GpuGptDecoder)
/// against the CPU GptDecoder (W2; with the benchmarks also GPT-2 124M, and ms per cached step next to the CPU's), times the GEMMs at GPT-2 124M shapes, the fused log-prob
/// kernels and whole GPT-2 124M training steps (bf16 and fp32 GEMMs; tokens/s, MFU), writing summary.md, checks.tsv and
/// benchmarks.tsv into DIR. Exit codes: 0 all checks passed, 1 a check failed, 2 bad arguments, 3 no usable
/// CUDA device (nothing was run; the reason is printed and written to DIR/summary.md). <c>--simulator</c> runs the
/// ILGPU kernel checks on ILGPU's CPU accelerator instead (no GPU).
/// </summary>
public static class Program
{
    public const int NoDevice = 3;

    public static int Main(string[] args) => Run(args, Console.Out);

    /// <summary>
    /// <c>--simulator</c>: the ILGPU kernel checks (quick shapes) on ILGPU's CPU accelerator, no GPU needed: a smoke
    /// test that a published build loads ILGPU, compiles kernels and compares them with the CPU kernels.
    /// </summary>
    private static int RunOnSimulator(Report report, string outDir)
    {
        using var context = GpuContext.CreateCpuSimulator();
        new KernelChecks(context.Accelerator, report, quick: true).RunAll();
        var gpt = new GptChecks(context.Accelerator, report);
        gpt.CompareWithTheCpuModel();
        gpt.CompareFeaturesWithTheCpuModel(cuda: false);
        var alignment = new AlignmentChecks(context.Accelerator, report);
        alignment.CompareDpoStepsWithTheCpuPolicy(GemmPrecision.Float32);   // tiled fp32 GEMMs here
        alignment.ComparePpoIterationWithTheCpuPolicy(GemmPrecision.Float32);
        new DemoChecks(context.Accelerator, report).CompareWithTheCpuRun();
        new DecoderChecks(context.Accelerator, report).Run("tiny (simulator smoke)", new(Layers: 2, Heads: 3, Channels: 24, VocabSize: 37, MaxSequenceLength: 16),
                                                           rows: 3, length: 12, time: false);
        gpt.StepBenchmark("tiny GPT (simulator smoke)", new(Layers: 2, Heads: 2, Channels: 16, VocabSize: 64, MaxSequenceLength: 16),
                          rows: 2, length: 16, GemmPrecision.Float32, warmup: 1, steps: 1, KernelBenchmarks.PeakBf16Flops, profile: true);
        report.Write(outDir, "ILGPU CPU simulator (no GPU): ILGPU kernels and the GPT (tiny shapes); timings mean nothing here.");
        int failed = report.Checks.Count(c => !c.Passed);
        report.Log.WriteLine($"{report.Checks.Count - failed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }

    /// <summary>Free and total device memory as the driver sees it, in the context ILGPU made current on this thread.</summary>
    private static void NoteFreeMemory(Report report, CudaAccelerator accelerator)
    {
        try
        {
            var (free, total) = CudaDriver.MemoryInfo();
            report.Note($"{accelerator.Name}: {free / (1024.0 * 1024 * 1024):F1} of {total / (1024.0 * 1024 * 1024):F1} GiB free");
        }
        catch (Engine.Cuda.CudaException e)
        {
            report.Note($"free device memory unknown: {e.Message}");
        }
    }

    private static string NvrtcVersionText()
    {
        var (major, minor) = Nvrtc.Version();
        return $"{major}.{minor}";
    }

    public static int Run(string[] args, TextWriter log)
    {
        string outDir = "gpu-check-out";
        bool quick = false, bench = true, simulator = false, flashBenchmarkOnly = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--out" when i + 1 < args.Length: outDir = args[++i]; break;
                case "--quick": quick = true; break;
                case "--skip-bench": bench = false; break;
                case "--simulator": simulator = true; break;
                case "--flash-benchmark-only": flashBenchmarkOnly = true; break;   // one short run for a profiler (ncu)
                default:
                    Console.Error.WriteLine($"gpu-check: unknown argument '{args[i]}' (usage: gpu-check [--out DIR] [--quick] [--skip-bench] [--simulator] [--flash-benchmark-only])");
                    return 2;
            }
        }
        var report = new Report(log);
        foreach (var library in CudaLibraries.All.Append(CudaLibraries.Nccl))
            report.Note($"{library.Description}: {(library.IsAvailable ? "loaded " + library.LoadedFrom : library.UnavailableReason)}");
        if (simulator) return RunOnSimulator(report, outDir);
        var probe = CudaDriver.Probe();
        if (!probe.IsUsable)
        {
            report.Note($"no CUDA device: {probe.Reason}");
            report.Write(outDir, "Nothing was run on a GPU.");
            return NoDevice;
        }
        string header = $"Device: {probe.Devices[0]}; driver {probe.DriverVersionText}; cuBLAS {(CudaLibraries.Cublas.IsAvailable ? Cublas.Version().ToString() : "missing")}; " +
                        $"NVRTC {(CudaLibraries.Nvrtc.IsAvailable ? NvrtcVersionText() : "missing")}; {(quick ? "quick shapes" : "full shapes")}; {DateTime.UtcNow:u}.";
        report.Note(header);
        var total = Stopwatch.StartNew();
        using var context = GpuContext.TryCreateCuda();
        if (context is null)
        {
            report.Add(new CheckResult("ILGPU CUDA accelerator", 0, double.NaN, double.NaN, "", "ILGPU found no CUDA device although the driver reports one"));
            report.Write(outDir, header);
            log.WriteLine($"{report.Checks.Count(c => c.Passed)} passed, {report.Checks.Count(c => !c.Passed)} failed");
            return 1;
        }
        var accelerator = (CudaAccelerator)context.Accelerator;
        NoteFreeMemory(report, accelerator);
        try
        {
            if (flashBenchmarkOnly)
            {
                new FlashAttentionChecks(accelerator, report, quick).RunOnceForProfiler();
                report.Write(outDir, header);
                return report.Checks.Any(c => !c.Passed) ? 1 : 0;
            }
            var checks = new KernelChecks(accelerator, report, quick);
            checks.RunAll();
            new NcclChecks(accelerator, report).Run();   // data-parallel training's device collectives (one rank)
            var gpt = new GptChecks(accelerator, report);
            gpt.CompareWithTheCpuModel();
            new FlashAttentionChecks(accelerator, report, quick).RunAll();
            gpt.CompareFlashWithTheCpuModel();
            gpt.CompareFeaturesWithTheCpuModel(cuda: true);
            var alignment = new AlignmentChecks(accelerator, report);
            alignment.CompareDpoStepsWithTheCpuPolicy(GemmPrecision.Float32);
            alignment.CompareDpoStepsWithTheCpuPolicy(GemmPrecision.BFloat16);
            alignment.ComparePpoIterationWithTheCpuPolicy(GemmPrecision.Float32);
            alignment.ComparePpoIterationWithTheCpuPolicy(GemmPrecision.BFloat16);
            // demo --device cuda: the whole known-target experiment on the device vs on the CPU
            var demo = new DemoChecks(accelerator, report);
            demo.CompareWithTheCpuRun();
            // KV-cache decoding (sample --device cuda): logits of every step vs the CPU decoder, and ms per cached step next to the CPU's
            var decoder = new DecoderChecks(accelerator, report);
            decoder.Run("W2", Alignment.Benchmarks.StepWorkload.W2.Config, rows: 8, length: 128, time: bench);
            if (bench)
                decoder.Run("GPT-2 124M", new Transformer.Model.GptConfig(Layers: 12, Heads: 12, Channels: 768, VocabSize: 50257, MaxSequenceLength: 1024),
                            rows: 8, length: quick ? 16 : 64, time: true);
            if (bench)
            {
                new KernelBenchmarks(accelerator, report, quick).RunAll();
                // GPT-2 124M, B × 1024 tokens: bf16 GEMMs (cuBLAS, fp32 accumulation), then fp32 for comparison
                var gpt2 = new Transformer.Model.GptConfig(Layers: 12, Heads: 12, Channels: 768, VocabSize: 50257, MaxSequenceLength: 1024);
                int rows = quick ? 2 : 16;
                gpt.StepBenchmark("GPT-2 124M", gpt2, rows, 1024, GemmPrecision.BFloat16, warmup: 3, steps: quick ? 3 : 20, KernelBenchmarks.PeakBf16Flops, profile: true, flash: true);
                gpt.StepBenchmark("GPT-2 124M", gpt2, rows, 1024, GemmPrecision.BFloat16, warmup: 2, steps: quick ? 3 : 5, KernelBenchmarks.PeakBf16Flops, profile: true);
                gpt.StepBenchmark("GPT-2 124M", gpt2, rows, 1024, GemmPrecision.Float32, warmup: 1, steps: 3, KernelBenchmarks.PeakBf16Flops, profile: true);
                demo.TimeThePpoIteration();
                if (!quick) demo.TimeTheQuickDemo();
            }
            else report.Note("benchmarks skipped (--skip-bench)");
        }
        catch (Exception e)
        {
            report.Add(new CheckResult("gpu-check run", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}"));
            log.WriteLine(e);
        }
        if (NvrtcTargetLogProbs.LastUnavailableReason is { } reason) report.Note($"GpuGpt's LM head ran the ILGPU log-prob kernels: {reason}");
        report.Note($"total {total.Elapsed.TotalSeconds:F1} s");
        report.Write(outDir, header);
        int failed = report.Checks.Count(c => !c.Passed);
        log.WriteLine($"{report.Checks.Count - failed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
}
