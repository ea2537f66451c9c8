using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Training;
using DistAlign.Engine.Native;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;
using DistAlign.Transformer.Training;

namespace DistAlign.Bench;

/// <summary>
/// Regenerates one ISA's section of docs/benchmarks.md in one run (<c>tools/bench-report.sh</c> runs it once per view of the
/// CPU, or <c>dotnet run -c Release --project bench -- report --out docs/benchmarks.md</c>): the view (vector width our kernels
/// use, OpenBLAS core, the peer's core), machine description, whole-step harness (W2, W1, DPO) with per-op breakdowns, ours
/// against PyTorch (W2, DPO, W1, alternating; a peer that fails is a row with its reason), GEMM against OpenBLAS (paired
/// rounds), the BenchmarkDotNet kernel suites with their in-run limits (unless <c>--skip-suites</c>), and a PNG chart of ours
/// vs the peers. The section is named after the widest vector .NET accelerates (AVX-512, AVX2, Vector128); the other ISAs'
/// sections and "Earlier measurements" are kept (<see cref="BenchmarkDocument"/>). Every figure is measured in this run.
/// </summary>
internal static class BenchmarkReport
{

    public static int Run(string[] args)
    {
        string output = Path.Combine("docs", "benchmarks.md");
        string python = "/usr/bin/python3";
        string? script = null;
        int threads = Environment.ProcessorCount;
        bool quick = false, skipSuites = false;
        string? isaLabel = null;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--out": output = Next(); break;
                case "--python": python = Next(); break;
                case "--peer-script": script = Next(); break;
                case "--threads": threads = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--quick": quick = true; break;
                case "--skip-suites": skipSuites = true; break;
                case "--isa-label": isaLabel = Next(); break;
                default:
                    Console.Error.WriteLine($"report: unknown option '{args[i]}' (expected --out FILE, --threads N, --python PATH, --peer-script PATH, --quick, " +
                                            "--skip-suites, --isa-label TEXT)");
                    return 2;
            }
        }
        if (threads < 1) { Console.Error.WriteLine("report: --threads must be at least 1"); return 2; }
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);   // the chart goes beside it: a missing folder would fail only at the end
        CpuParallel.Threads = threads;
        if (OpenBlas.IsAvailable) OpenBlas.SetThreads(threads);
        script ??= FindUpward(Path.Combine("tools", "peers", "torch_step.py"));
        var isa = CpuIsa.Current;
        string section = isa.KernelIsa;
        string view = isaLabel ?? isa.View(OpenBlas.CoreName);
        string? peerCoreType = OpenBlasCoreType.ForPeer();
        string chartName = $"benchmarks-peers-{section.ToLowerInvariant().Replace("-", "")}.png";
        string chartPath = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(output))!, chartName);
        string command = Command(args);
        Console.WriteLine($"report: section {section} ({view}); our kernels {CpuVectors.Describe()}; OpenBLAS core {OpenBlas.CoreName ?? "unavailable"}; " +
                          $"peer {OpenBlasCoreType.Describe(peerCoreType)}");
        var clock = Stopwatch.StartNew();
        string loadBefore = LoadAverage();

        var doc = new StringBuilder();
        doc.AppendLine($"## {section}").AppendLine();
        doc.AppendLine($"View of the CPU: **{view}**. Our kernels: {CpuVectors.Describe()}. OpenBLAS (the GEMM peer, in this process): " +
                       (OpenBlas.IsAvailable ? $"core {OpenBlas.CoreName}, {OpenBlasCoreType.Describe(OpenBlas.CoreTypeEnvironment)}" : "not available") +
                       $". PyTorch peer: {OpenBlasCoreType.Describe(peerCoreType)}.");
        doc.AppendLine($"Command: `{command}`.").AppendLine();

        // 1. Whole steps first, while the process is small (peak RSS is the process's high-water mark).
        Console.WriteLine("report: whole-step harness ...");
        var w2 = StepBenchmark.Run(GptDevice.Cpu, StepWorkload.W2, StepSettings.Peer, warmupSteps: 3, timedSteps: quick ? 3 : 10, profiledSteps: quick ? 3 : 10);
        long rssAfterW2 = w2.PeakResidentBytes;
        var dpoStep = PreferenceStepBenchmark.Run(StepWorkload.W2.Config, PreferenceStepBenchmark.DpoPairs, PreferenceStepBenchmark.DpoPromptTokens,
            PreferenceStepBenchmark.DpoResponseTokens, warmup: 2, steps: quick ? 3 : 8);
        var w1 = StepBenchmark.Run(GptDevice.Cpu, StepWorkload.W1, StepSettings.Peer, warmupSteps: 2, timedSteps: quick ? 2 : 5, profiledSteps: quick ? 2 : 5);
        Console.WriteLine("report: PPO iterations and KV-cache decoding ...");
        var ppo = PpoIterationBenchmark.RunAll(quick ? 2 : 5);
        var decode = DecodeBenchmark.Run(StepWorkload.W2.Config, rows: 8, length: 128);

        // 2. Peers. A peer that fails (SIGILL, timeout, bad output) comes back as a comparison with its reason: the rest still runs.
        var comparisons = new List<PeerComparison>();
        string? peerSkipped = PeerStepBenchmark.Unavailable(python, script);
        if (peerSkipped is null)
        {
            Console.WriteLine("report: PyTorch peers ...");
            comparisons.Add(PeerStepBenchmark.Run(StepWorkload.W2, python, script, quick ? 1 : 3, quick ? 2 : 5, threads));
            comparisons.Add(PreferenceStepBenchmark.ComparePeer(python, script, quick ? 1 : 3, quick ? 2 : 5, threads));
            comparisons.Add(PeerStepBenchmark.Run(StepWorkload.W1, python, script, quick ? 1 : 2, quick ? 1 : 3, threads));
            foreach (var failed in comparisons.Where(c => c.Failed)) Console.WriteLine($"report: the PyTorch peer failed on {failed.Workload}: {failed.Failure}");
        }
        else Console.WriteLine($"report: PyTorch peers skipped: {peerSkipped}");

        // 3. GEMM against OpenBLAS, paired rounds.
        Console.WriteLine("report: GEMM against OpenBLAS ...");
        var gemm = OpenBlas.IsAvailable ? GemmPairs(quick ? 3 : 11) : [];

        // 4. The bandwidth kernels from memory, each in rounds against its copy (seconds), then the BenchmarkDotNet suites
        //    (minutes: --skip-suites leaves them out of a smoke run).
        Console.WriteLine("report: bandwidth kernels in rounds against a copy ...");
        int bandwidthRounds = quick ? 5 : 31;
        var bandwidthPairs = BandwidthPairs.Run(bandwidthRounds);
        List<SuiteRow> bandwidthRows = [], computeRows = [];
        if (!skipSuites)
        {
            Console.WriteLine("report: BenchmarkDotNet kernel suites ...");
            Type[] bandwidth = BandwidthPairs.Classes;
            Type[] compute = [typeof(AttentionCompute), typeof(SequenceLogProbsCompute), typeof(TargetLogProbsExpCompute), typeof(GeluForwardCompute),
                              typeof(GeluBackwardCompute), typeof(BradleyTerryLossCompute)];
            bandwidthRows = [.. bandwidth.SelectMany(t => SuiteRows(BenchmarkRunner.Run(t), new BandwidthColumn(false), new BandwidthColumn(true)))];
            computeRows = [.. compute.SelectMany(t =>
            {
                string unit = t == typeof(TargetLogProbsExpCompute) ? "G exp/s" : t == typeof(BradleyTerryLossCompute) ? "M pairs/s"
                    : t.IsSubclassOf(typeof(GeluCompute)) ? "G elem/s" : "GFLOP/s";
                return SuiteRows(BenchmarkRunner.Run(t), new WorkRateColumn(unit, false), new WorkRateColumn(unit, true), unit);
            })];
        }
        string loadAfter = LoadAverage();

        // This ISA at a glance: the machine, the kernels on each side, and the headline ratios of the tables below.
        doc.AppendLine("| CPU | our vectors | OpenBLAS core | PyTorch peer's core | ours / PyTorch, step time (W2 · DPO · W1) | OpenBLAS / ours, GEMM time (per shape) | date |");
        doc.AppendLine("|---|---|---|---|---|---|---|");
        string peerRatios = peerSkipped is not null ? "peer skipped"
            : string.Join(" · ", comparisons.Select(c => c.Failed ? $"{c.Workload} failed" : string.Create(CultureInfo.InvariantCulture, $"{c.Ratio:F2}")));
        string gemmRatios = gemm.Count == 0 ? "OpenBLAS unavailable" : string.Join(" · ", gemm.Select(g => string.Create(CultureInfo.InvariantCulture, $"{g.Ratio:F2}")));
        string peerCore = peerSkipped is not null ? "—" : comparisons.Select(c => c.PeerOpenBlasCore).FirstOrDefault(c => c is not null) ?? OpenBlasCoreType.Describe(peerCoreType);
        doc.AppendLine($"| {CpuName()} | {CpuVectors.Width} | {OpenBlas.CoreName ?? "—"} | {peerCore} | {peerRatios} | {gemmRatios} | {DateTime.UtcNow:yyyy-MM-dd} |");
        doc.AppendLine();

        // A loaded machine distorts every ratio: say so first.
        double worstLoad = new[] { loadBefore, loadAfter }.Select(l => double.TryParse(l.Split(',')[0], CultureInfo.InvariantCulture, out double v) ? v : 0).Max();
        if (worstLoad > Environment.ProcessorCount)
        {
            doc.AppendLine($"> **Loaded machine.** The 1-minute load average reached {worstLoad:F1} on {Environment.ProcessorCount} logical processors during this run");
            doc.AppendLine("> (other jobs were running), so each process here got a small, varying share of the CPU: the absolute times are many");
            doc.AppendLine("> times the idle ones and the ratios carry that noise (see the min–max spreads). The quiet-machine figures are in");
            doc.AppendLine("> \"Earlier measurements\" below; rerun `tools/bench-report.sh` on an idle machine for representative ratios.").AppendLine();
        }
        if (OpenBlas.IsAvailable && OpenBlasCoreType.Mismatch(OpenBlas.CoreName, OpenBlas.CoreTypeEnvironment, isa) is { } mismatch)
            doc.AppendLine($"> **OpenBLAS and our kernels saw different ISAs:** {mismatch} The GEMM ratios below compare unlike kernels.").AppendLine();

        // Machine.
        doc.AppendLine("### Machine").AppendLine();
        foreach (var line in Machine(python, peerSkipped is null)) doc.AppendLine($"- {line}");
        doc.AppendLine($"- Threads for every measurement: {threads} (ours and the peers'). Load average (1, 5, 15 min) before: {loadBefore}; after: {loadAfter}; the run took {clock.Elapsed.TotalMinutes:F1} min{Niceness()}.");
        doc.AppendLine($"- Date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC.").AppendLine();

        // Peers.
        var measured = comparisons.Where(c => !c.Failed).ToList();
        doc.AppendLine("### Against PyTorch, alternating in one invocation").AppendLine();
        if (peerSkipped is not null) doc.AppendLine($"Skipped: {peerSkipped}.").AppendLine();
        else
        {
            doc.AppendLine("`tools/peers/torch_step.py` (same model, initialisation, AdamW settings, batch shapes and thread count; Debian's python3-torch, run with");
            doc.AppendLine($"`OMP_WAIT_POLICY=PASSIVE` and {PeerSetup(comparisons, peerCoreType)}). Rounds alternate ours and the peer's, each with 2 warm-up steps. W1: GPT-2 124M,");
            doc.AppendLine("batch 4 × 64; W2: 4 L, 4 H, C 256, V 4,096, batch 8 × 128; DPO: one DPO step (sigmoid, β 0.1, cached reference log-probs, clip 1,");
            doc.AppendLine("AdamW) on the W2 model over 8 pairs of 16 prompt + 48 response tokens (ours packs the 16 sequences two per 128-token row; the");
            doc.AppendLine("peer runs them as a [16, 63] batch). Goal: W1 and W2 ≤ 0.8 (ratio of medians).").AppendLine();
            doc.AppendLine("| workload | DistAlign median ms [min–max] | PyTorch median ms [min–max] | steps each | ratio of medians |");
            doc.AppendLine("|---|---:|---:|---:|---:|");
            foreach (var c in comparisons)
                doc.AppendLine(c.Failed
                    ? $"| {c.Workload} | {Spread(c.OursMilliseconds)} | **peer failed:** {c.Failure?.Replace("|", "\\|")} | {c.OursMilliseconds.Length} (ours) | — |"
                    : $"| {c.Workload} | {Spread(c.OursMilliseconds)} | {Spread(c.PeerMilliseconds)} | {c.OursMilliseconds.Length} | **{c.Ratio:F2}** |");
            doc.AppendLine().Append($"Peer: {(measured.Count > 0 ? measured[0] : comparisons[0]).Peer}.");
            if (measured.Count > 0)
            {
                doc.Append($" Chart: ![ours vs PyTorch, {section}]({chartName})");
                Chart(measured, chartPath, section);
            }
            doc.AppendLine().AppendLine();
        }

        // Whole steps.
        doc.AppendLine("### Whole training steps (forward + backward + AdamW), fp32").AppendLine();
        doc.AppendLine("`StepBenchmark` (as `distalign bench step`): GPT-2 init, uniform random tokens; FLOPs per step = tokens·(6·N + 6·L·C·T), llm.c's");
        doc.AppendLine("convention. The DPO step is `distalign bench dpo`'s (timed alternately with an SFT step on the same chosen + rejected tokens).");
        doc.AppendLine("Peak RSS is the process's high-water mark when the workload finished (W2 ran first, then DPO, then W1).").AppendLine();
        doc.AppendLine("| workload | median ms/step [min–max] | steps | tokens/s | GFLOP/s | peak RSS | planned arenas |");
        doc.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var m in new[] { w2, w1 })
            doc.AppendLine($"| {m.Workload.Name} | {m.MedianMilliseconds:F1} [{m.MinMilliseconds:F1}–{m.MaxMilliseconds:F1}] | {m.StepMilliseconds.Length} | {m.TokensPerSecond:N0} | {m.GflopsPerSecond:F1} | {m.PeakResidentBytes / 1048576.0:N0} MiB | {m.PlannedBytes / 1048576.0:N0} MiB |");
        doc.AppendLine($"| DPO (W2 model, 8 pairs) | {dpoStep.DpoMedianMilliseconds:F1} [{dpoStep.DpoMilliseconds.Min():F1}–{dpoStep.DpoMilliseconds.Max():F1}] | {dpoStep.DpoMilliseconds.Length} | {dpoStep.Tokens / (dpoStep.DpoMedianMilliseconds / 1000):N0} (response tokens) | — | {dpoStep.PeakResidentBytes / 1048576.0:N0} MiB | — |");
        doc.AppendLine().AppendLine($"DPO step / SFT step on the same tokens: {dpoStep.Ratio:F3} (SFT median {dpoStep.SftMedianMilliseconds:F1} ms; goal ≤ 1.1). W2's peak RSS right after it ran: {rssAfterW2 / 1048576.0:N0} MiB.").AppendLine();
        doc.AppendLine("Per-op breakdown, ms per step (the model's `OpProfile` laps; the optimizer timed by the harness):").AppendLine();
        var ops = new[] { w1.OpMillisecondsPerStep, w2.OpMillisecondsPerStep, dpoStep.DpoOpMillisecondsPerStep };
        var opNames = ops.SelectMany(o => o.Select(x => x.Op)).Distinct().OrderByDescending(op => ops[0].FirstOrDefault(x => x.Op == op).Milliseconds).ToList();
        doc.AppendLine("| op | W1 | W2 | DPO |").AppendLine("|---|---:|---:|---:|");
        foreach (var op in opNames)
            doc.AppendLine($"| {op} | {string.Join(" | ", ops.Select(o => o.Any(x => x.Op == op) ? o.First(x => x.Op == op).Milliseconds.ToString("F1", CultureInfo.InvariantCulture) : "—"))} |");
        doc.AppendLine();

        // PPO and decoding.
        doc.AppendLine("### A PPO iteration: rollout against training").AppendLine();
        doc.AppendLine("`PpoIterationBenchmark` (as `distalign bench ppo`): RLHF, value head on the policy's backbone, a reward model of the same shape,");
        doc.AppendLine("4 epochs × 2 minibatches per rollout, medians over the timed iterations. Sampling is KV-cache decoding of the responses;");
        doc.AppendLine("scoring is the rest of the rollout (ln π_old and V_old, ln π0, R̂: three packed forwards, then GAE).").AppendLine();
        foreach (var line in PpoIterationBenchmark.Table(ppo)) doc.AppendLine(line);
        doc.AppendLine();
        doc.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"KV-cache decoding (`distalign bench decode`, W2 model, {decode.Rows} rows): per new token at context {decode.Length}, cached step {decode.CachedLastStepsMilliseconds:F2} ms against {decode.RecomputeLastStepsMilliseconds:F1} ms for a full forward: **{decode.SpeedupAtFullContext:F1}×** (goal ≥ 10×); {decode.Speedup:F1}× over all {decode.Length} positions; max |Δ log-prob| {decode.MaxLogitDifference:E1}."));
        doc.AppendLine();

        // GEMM.
        doc.AppendLine("### GEMM against OpenBLAS (fp32, NN, row-major)").AppendLine();
        if (gemm.Count == 0) doc.AppendLine($"Skipped: {OpenBlas.UnavailableReason}.").AppendLine();
        else
        {
            doc.AppendLine($"OpenBLAS core {OpenBlas.CoreName}, {OpenBlasCoreType.Describe(OpenBlas.CoreTypeEnvironment)}; ours {CpuVectors.Describe()}; " +
                           $"{gemm[0].Rounds} paired rounds per shape (OpenBLAS, then ours, on the same data, each");
            doc.AppendLine("pair 150 ms after the previous one ended, so OpenBLAS's spinning idle workers no longer take a core from the call after it; each timed call");
            doc.AppendLine("right after an untimed one of the same library, so both run with their worker threads awake, as in a training step); the ratio is of");
            doc.AppendLine("the medians, OpenBLAS's time / ours (above 1: ours faster), with the min–max of the per-round ratios. Goal ≥ 0.9 on the transformer shapes");
            doc.AppendLine("(256 rows: one W1-sized batch; 256×50304×768: GPT-2's LM head).").AppendLine();
            doc.AppendLine("| shape M×N×K | ours GFLOP/s (median) | OpenBLAS GFLOP/s (median) | ratio of medians [per-round min–max] |");
            doc.AppendLine("|---|---:|---:|---:|");
            foreach (var g in gemm)
                doc.AppendLine($"| {g.M}×{g.N}×{g.K} | {g.OursGflops:F1} | {g.BlasGflops:F1} | **{g.Ratio:F2}** [{g.RatioMin:F2}–{g.RatioMax:F2}] |");
            doc.AppendLine();
        }

        doc.AppendLine("### Bandwidth-bound kernels from memory, in rounds against a copy (the ≥ 0.7 goal)").AppendLine();
        doc.AppendLine(CultureInfo.InvariantCulture, $"`dotnet run -c Release --project bench -- bandwidth --rounds {bandwidthRounds} --threads {threads}`. Each kernel (the BenchmarkDotNet");
        doc.AppendLine("class's own method and buffers, N = 8192 for the [N, C] kernels) and a copy of the same bytes (`Span.CopyTo` on the same threads)");
        doc.AppendLine("alternate call by call, which goes first alternating too, so both sample the same moments of a shared machine; each round takes the");
        doc.AppendLine(CultureInfo.InvariantCulture, $"next of several instances of the class, so that since an instance was last touched at least four L3s ({BandwidthPairs.LastLevelCacheBytes() >> 20} MiB each) of");
        doc.AppendLine("other data were moved and neither side finds its data in the cache. GB/s = bytes per call (bench/BandwidthBenchmarks.cs) / median");
        doc.AppendLine("time; \"kernel / copy\" is the ratio of the medians, the goal's measure; the last column is the middle 80 % of the per-round ratios.").AppendLine();
        doc.AppendLine(BandwidthPairs.Header);
        foreach (var pair in bandwidthPairs) doc.AppendLine(BandwidthPairs.Row(pair));
        doc.AppendLine();

        // Kernel suites.
        if (skipSuites)
        {
            doc.AppendLine("### BenchmarkDotNet kernel suites").AppendLine();
            doc.AppendLine("Skipped (`--skip-suites`): the bandwidth-bound and compute-bound kernel tables are not in this run.").AppendLine();
        }
        else
        {
            doc.AppendLine("### Bandwidth-bound kernels against a memory copy of the same bytes (BenchmarkDotNet)").AppendLine();
            doc.AppendLine("BenchmarkDotNet (in-process, 3 warm-ups + 9 iterations; `dotnet run -c Release --project bench -- --filter '*Bandwidth*'`). The copy");
            doc.AppendLine("moves the same bytes on the same threads in the same class run. Bytes per kernel are stated in bench/BandwidthBenchmarks.cs");
            doc.AppendLine("(each input read once, each output written once, += outputs read and written). Every buffer starts on a 64-byte line, as the");
            doc.AppendLine("engine's arena tensors do (a plain float[] starts 16 bytes into one, splitting every 64-byte vector access). Here all of the");
            doc.AppendLine("copy's iterations run, then all of the kernel's, each re-reading the same buffers, part of which the L3 still holds: the");
            doc.AppendLine("in-L3 rows and BenchmarkDotNet's statistics are what this table adds; the goal is judged on the interleaved rounds above.").AppendLine();
            SuiteTable(doc, bandwidthRows, "GB/s", "vs copy");
            doc.AppendLine("The [N, C] kernels run at two token counts. At N = 8192 (B·T = 8·1024; 50–100 MB per call) kernel and copy stream from");
            doc.AppendLine("memory. At N = 2048 (12–25 MB) the working set stays in the 32 MiB L3, so the copy runs at cache bandwidth and the kernels are");
            doc.AppendLine("bound by their own loads and arithmetic (LayerNorm reads each row twice and w, b once per row, against one load per copied vector):");
            doc.AppendLine("those rows are for information, not the goal. A ratio above 1 is possible where the copy pays a read-for-ownership of its");
            doc.AppendLine("destination that a read-modify-write kernel does not pay twice.");
            doc.AppendLine("TargetLogProbs reads 51 MB once but does a vector exp per 16 logits: its limit in the next table is that exp's own throughput.");
            doc.AppendLine("GELU does an exp and a divide per element (~20 vector operations): its limit in the next table is its own throughput on L1-resident data.").AppendLine();
            doc.AppendLine("### Compute-bound kernels against a compute limit measured in the same run").AppendLine();
            doc.AppendLine("`--filter '*Compute*'`. Attention (B 4, T 256, C 768, 12 heads, causal; FLOPs = the q·k and a·v dot products, 2·B·C·T(T+1)");
            doc.AppendLine($"forward, twice that backward) against the fp32 FMA peak (8 independent {CpuVectors.Width} FMA chains per thread, nothing loaded). The fused");
            doc.AppendLine("LM head + log-probs (`SequenceLogProbs`, N 256, C 768, V 50,257; forward = 1 logits GEMM, backward = 3) against OpenBLAS's");
            doc.AppendLine("sgemm of the same logits shape. TargetLogProbs' forward (256 × 50,257) against the throughput of the same vector exp on");
            doc.AppendLine("L1-resident data (its rate in 10⁹ exps per second). GELU forward and backward ([N, 4C] from memory) against the same kernel on an L1-resident");
            doc.AppendLine("block per thread (rate in 10⁹ elements per second; near 1: arithmetic-bound, not memory-bound). The Bradley–Terry loss (DPO sigmoid, 262,144 pairs, forward + gradient) against");
            doc.AppendLine("the fp64 exp/log work a pair needs (2 exp + 1 log, on the same threads; rate in 10⁶ pairs per second). GB/s where stated: the fused log-probs read the hidden states and the");
            doc.AppendLine("[V, C] head once (the backward also reads and writes both gradients); NA where bytes are not the point.").AppendLine();
            SuiteTable(doc, computeRows, "rate", "vs limit", withBandwidth: true);
        }

        doc.AppendLine("### Not measured here").AppendLine();
        doc.AppendLine("- GEMM NT/TN cases and the BenchmarkDotNet GEMM suite (`--filter '*Gemm*'`): see the earlier measurements.");

        // This section replaces the previous run's of the same ISA; the other ISAs' sections and the earlier measurements stay.
        string fullOutput = Path.GetFullPath(output);
        Directory.CreateDirectory(Path.GetDirectoryName(fullOutput)!);
        string? previous = File.Exists(fullOutput) ? File.ReadAllText(fullOutput) : null;
        string temporary = fullOutput + ".tmp";
        File.WriteAllText(temporary, BenchmarkDocument.Merge(previous, Header(), section, doc.ToString()));
        File.Move(temporary, fullOutput, overwrite: true);
        bool charted = comparisons.Any(c => !c.Failed);
        Console.WriteLine($"report: wrote the {section} section of {output}{(charted ? $" and {chartPath}" : "")} in {clock.Elapsed.TotalMinutes:F1} min");
        return 0;
    }

    /// <summary>The document's title and preamble, the same for every section's run.</summary>
    private static string Header() => string.Join('\n',
        "# Benchmarks",
        "",
        "Regenerated by `tools/bench-report.sh`, one section per view of the CPU: the widest vector our kernels ran (AVX-512, AVX2). On a CPU",
        "with avx512f the script runs the report natively (`OPENBLAS_CORETYPE=SkylakeX`) and then as the AVX2 view of that CPU",
        "(`DOTNET_EnableAVX512=0 OPENBLAS_CORETYPE=Haswell`: .NET's AVX-512 hidden, OpenBLAS's AVX2 kernels); on a CPU without it, natively",
        "with OpenBLAS's own choice of kernels (`SkylakeX` there dies with SIGILL). Each run (`dotnet run -c Release --project bench -- report`,",
        "its exact command in its section) replaces its own section and keeps the other, so the two may come from different machines or dates:",
        "each names its machine, date, vector width and OpenBLAS core. Every figure in a section comes from that section's run; a ratio is to a",
        "limit or a peer measured in the same run. The machine may be shared, so medians are given with their spread (min–max), and the load",
        "average before and after is recorded.");

    /// <summary>The command that reproduces this run: the variables that choose the ISA and the peers' settings, then the report's arguments.</summary>
    private static string Command(string[] args)
    {
        var variables = new[] { "DOTNET_EnableAVX512", "DOTNET_EnableAVX2", OpenBlasCoreType.Variable, "OMP_WAIT_POLICY" }
            .Select(v => (Name: v, Value: Environment.GetEnvironmentVariable(v))).Where(v => !string.IsNullOrEmpty(v.Value)).Select(v => $"{v.Name}={v.Value}");
        var arguments = args.Select(a => a.Length > 0 && a.All(ch => char.IsLetterOrDigit(ch) || "-_./=:,".Contains(ch)) ? a : $"'{a.Replace("'", "'\\''")}'");
        return string.Join(' ', variables.Concat(["dotnet run -c Release --project bench -- report"]).Concat(arguments));
    }

    /// <summary>How the peer's OpenBLAS ran: the variable it got and the core it reported (each workload's, where they differ).</summary>
    private static string PeerSetup(List<PeerComparison> comparisons, string? peerCoreType)
    {
        var cores = comparisons.Select(c => c.PeerOpenBlasCore).Where(c => c is not null).Distinct().ToList();
        return $"`{OpenBlasCoreType.Describe(peerCoreType)}`" + (cores.Count == 0 ? ", OpenBLAS core not reported" : $", OpenBLAS core {string.Join(" / ", cores)}");
    }

    private static string Spread(double[] ms) => ms.Length == 0 ? "—"
        : string.Create(CultureInfo.InvariantCulture, $"{Median(ms):F1} [{ms.Min():F1}–{ms.Max():F1}]");

    private sealed record SuiteRow(string Suite, string Method, string Unit, double MedianNanoseconds, string Rate, string Ratio, bool Baseline, string GigabytesPerSecond);

    private static IEnumerable<SuiteRow> SuiteRows(Summary summary, BenchmarkDotNet.Columns.IColumn rate, BenchmarkDotNet.Columns.IColumn ratio, string unit = "GB/s")
    {
        foreach (var c in summary.BenchmarksCases)
        {
            var stats = summary[c]?.ResultStatistics;
            string suite = c.Descriptor.Type.Name + (c.Parameters.Items.FirstOrDefault(p => p.Name == nameof(TokenBandwidthBenchmark.Tokens))?.Value is int tokens
                ? $" (N = {tokens}: {(tokens == BandwidthSizes.CachedTokens ? "in L3" : "from memory")})" : "");
            yield return new SuiteRow(suite, c.Descriptor.WorkloadMethod.Name, unit, stats?.Median ?? double.NaN,
                rate.GetValue(summary, c), ratio.GetValue(summary, c), c.Descriptor.Baseline, new BandwidthColumn(false).GetValue(summary, c));
        }
    }

    private static void SuiteTable(StringBuilder doc, List<SuiteRow> rows, string rateName, string ratioName, bool withBandwidth = false)
    {
        doc.AppendLine($"| suite | kernel | median time | {rateName} |{(withBandwidth ? " GB/s |" : "")} limit (baseline) | limit median time | limit {rateName} | {ratioName} |");
        doc.AppendLine($"|---|---|---:|---:|{(withBandwidth ? "---:|" : "")}---|---:|---:|---:|");
        foreach (var suite in rows.GroupBy(r => r.Suite))
        {
            var limit = suite.FirstOrDefault(r => r.Baseline);
            foreach (var r in suite.Where(r => !r.Baseline))
                doc.AppendLine($"| {suite.Key} | {r.Method} | {Time(r.MedianNanoseconds)} | {r.Rate} {r.Unit} |{(withBandwidth ? $" {r.GigabytesPerSecond} |" : "")} {limit?.Method ?? "none"} | {(limit is null ? "—" : Time(limit.MedianNanoseconds))} | {(limit is null ? "—" : $"{limit.Rate} {limit.Unit}")} | **{r.Ratio}** |");
        }
        doc.AppendLine();
    }

    private static string Time(double nanoseconds) => double.IsNaN(nanoseconds) ? "NA"
        : nanoseconds >= 1e6 ? $"{nanoseconds / 1e6:F2} ms" : $"{nanoseconds / 1e3:F1} µs";

    private sealed record GemmPair(int M, int N, int K, int Rounds, double OursGflops, double BlasGflops, double Ratio, double RatioMin, double RatioMax);

    /// <summary>OpenBLAS then ours on the same data, round by round; the ratio per round is OpenBLAS time / ours.</summary>
    private static List<GemmPair> GemmPairs(int rounds)
    {
        var result = new List<GemmPair>();
        foreach (var (m, n, k) in new[] { (2048, 768, 768), (2048, 3072, 768), (2048, 768, 3072), (256, 3072, 768), (256, 768, 3072), (256, 50304, 768), (1024, 1024, 1024) })
        {
            var rng = new Random(1);
            float[] a = Enumerable.Range(0, m * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            float[] b = Enumerable.Range(0, k * n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            float[] c = new float[m * n];
            double flops = 2.0 * m * n * k;
            void Ours() => Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, a, k, b, n, 0f, c, n);
            void Blas() => OpenBlas.Sgemm(false, false, m, n, k, 1f, a, k, b, n, 0f, c, n);
            Ours(); Blas(); Ours(); Blas();
            var ours = new double[rounds];
            var blas = new double[rounds];
            for (int r = 0; r < rounds; r++)
            {
                blas[r] = OpenBlas.SecondsWithWorkersAwake(Blas);
                OpenBlas.WaitForIdleWorkers();
                ours[r] = OpenBlas.SecondsWithWorkersAwake(Ours);
                OpenBlas.WaitForIdleWorkers();
            }
            var ratios = blas.Zip(ours, (x, y) => x / y).ToArray();
            result.Add(new GemmPair(m, n, k, rounds, flops / Median(ours) / 1e9, flops / Median(blas) / 1e9, Median(blas) / Median(ours), ratios.Min(), ratios.Max()));
        }
        return result;
    }

    /// <summary>The median of <paramref name="values"/> (the mean of the middle two for an even count).</summary>
    internal static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
    }

    /// <summary>Grouped bars: each workload's median step time relative to PyTorch's (PyTorch = 1), with min–max whiskers; the 0.8 goal as a line.</summary>
    private static void Chart(List<PeerComparison> comparisons, string path, string section)
    {
        var plot = new ScottPlot.Plot();
        var bars = new List<ScottPlot.Bar>();
        var ticks = new List<ScottPlot.Tick>();
        for (int i = 0; i < comparisons.Count; i++)
        {
            var c = comparisons[i];
            double peer = c.PeerMedian;
            bars.Add(Bar(3 * i, c.OursMedian / peer, c.OursMilliseconds.Min() / peer, c.OursMilliseconds.Max() / peer, ScottPlot.Colors.SteelBlue,
                $"{c.OursMedian:F0} ms"));
            bars.Add(Bar(3 * i + 1, 1.0, c.PeerMilliseconds.Min() / peer, c.PeerMilliseconds.Max() / peer, ScottPlot.Colors.DarkOrange, $"{peer:F0} ms"));
            ticks.Add(new ScottPlot.Tick(3 * i + 0.5, $"{c.Workload} (ratio {c.Ratio:F2})"));
        }
        var barPlot = plot.Add.Bars(bars);
        barPlot.ValueLabelStyle.FontSize = 12;
        var goal = plot.Add.HorizontalLine(0.8);
        goal.LinePattern = ScottPlot.LinePattern.Dashed;
        goal.Color = ScottPlot.Colors.Gray;
        goal.LegendText = "goal for W1, W2: 0.8";
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks.ToArray());
        plot.Axes.Margins(bottom: 0);
        plot.Title($"DistAlign vs PyTorch (CPU, fp32, {section}): median step time, PyTorch = 1");
        plot.YLabel("step time relative to PyTorch (whiskers: min–max)");
        plot.Legend.ManualItems.Add(new ScottPlot.LegendItem { LabelText = "DistAlign", FillColor = ScottPlot.Colors.SteelBlue });
        plot.Legend.ManualItems.Add(new ScottPlot.LegendItem { LabelText = "PyTorch", FillColor = ScottPlot.Colors.DarkOrange });
        plot.ShowLegend(ScottPlot.Alignment.UpperRight);
        double top = comparisons.Max(c => Math.Max(c.OursMilliseconds.Max(), c.PeerMilliseconds.Max()) / c.PeerMedian);
        plot.Axes.SetLimitsY(0, Math.Max(1.2, top) + 0.35);   // room for the legend above the bars
        plot.SavePng(path, 900, 500);
    }

    private static ScottPlot.Bar Bar(double position, double value, double min, double max, ScottPlot.Color color, string label) => new()
    {
        Position = position, Value = value, FillColor = color, Label = label,
        // ScottPlot draws a symmetric error bar: use the larger side of the spread (the table gives both ends).
        Error = Math.Max(value - min, max - value),
    };

    private static string CpuName() => ReadFirst("/proc/cpuinfo", "model name") ?? RuntimeInformation.ProcessArchitecture.ToString();

    private static IEnumerable<string> Machine(string python, bool torch)
    {
        string cpu = CpuName();
        string memory = ReadFirst("/proc/meminfo", "MemTotal") ?? "?";
        string os = File.Exists("/etc/os-release")
            ? File.ReadLines("/etc/os-release").FirstOrDefault(l => l.StartsWith("PRETTY_NAME=", StringComparison.Ordinal))?.Split('=', 2)[1].Trim('"') ?? RuntimeInformation.OSDescription
            : RuntimeInformation.OSDescription;
        string flags = ReadFirst("/proc/cpuinfo", "flags") ?? "";
        if (memory.EndsWith(" kB", StringComparison.Ordinal) && long.TryParse(memory[..^3], out long kb)) memory = $"{kb / 1048576.0:F1} GiB";
        string cache = ReadFirst("/proc/cpuinfo", "cache size") ?? "?";
        string kernel = File.Exists("/proc/sys/kernel/osrelease") ? File.ReadAllText("/proc/sys/kernel/osrelease").Trim() : "?";
        string hypervisor = flags.Split(' ').Contains("hypervisor") ? " (virtual machine)" : "";
        var isa = CpuIsa.Current;
        yield return $"CPU: {cpu}{hypervisor}, {Environment.ProcessorCount} logical processors, {(isa.HasAvx512F ? "AVX-512 (avx512f)" : isa.HasAvx2 ? "AVX2 + FMA, no avx512f" : "neither AVX2 nor AVX-512")}, " +
                     $"cache size (per /proc/cpuinfo) {cache}; memory {memory}.";
        yield return $"OS: {os}, Linux {kernel}; {RuntimeInformation.FrameworkDescription}; BenchmarkDotNet {typeof(BenchmarkRunner).Assembly.GetName().Version}.";
        yield return OpenBlas.IsAvailable
            ? $"OpenBLAS: {OpenBlas.Config}; core {OpenBlas.CoreName}, {OpenBlasCoreType.Describe(OpenBlas.CoreTypeEnvironment)}."
            : $"OpenBLAS: {OpenBlas.UnavailableReason}.";
        if (torch) yield return $"PyTorch: {PythonVersion(python)} ({python}), OMP_WAIT_POLICY=PASSIVE, {OpenBlasCoreType.Describe(OpenBlasCoreType.ForPeer())}.";
    }

    private static string PythonVersion(string python)
    {
        var info = new ProcessStartInfo(python) { RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "-c", "import sys, torch; print(torch.__version__, 'on Python', sys.version.split()[0])" }) info.ArgumentList.Add(a);
        using var p = Process.Start(info)!;
        string text = p.StandardOutput.ReadToEnd().Trim();
        p.WaitForExit();
        return text;
    }

    private static string? ReadFirst(string file, string key) =>
        File.Exists(file) ? File.ReadLines(file).FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal))?.Split(':', 2)[1].Trim() : null;

    /// <summary>", at nice N" when the report ran at a non-default priority (the peers, its children, inherit it).</summary>
    private static string Niceness()
    {
        if (!File.Exists("/proc/self/stat")) return "";
        string stat = File.ReadAllText("/proc/self/stat");
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');   // fields from the 3rd on; nice is the 19th
        return fields.Length > 16 && fields[16] != "0" ? $", at nice {fields[16]} (ours and the peer alike)" : "";
    }

    private static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? string.Join(", ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "unknown";

    private static string FindUpward(string relative)
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, relative);
            if (File.Exists(candidate)) return candidate;
        }
        return relative;
    }
}
