using System.Globalization;
using System.Text;
using System.Text.Json;

namespace DistAlign.Alignment.Experiments;

/// <summary>A finished demo or n-sweep: the experiment's fixed parts and the results per dataset size.</summary>
/// <param name="Command">the command line that produced it</param>
/// <param name="Machine">cores, threads, OS, runtime, in words</param>
public sealed record DemoOutcome(string Title, string Command, string Machine, double WallSeconds, DemoSettings Settings,
                                 PretrainedReference Pi0, DemoTaskSummary Task, KnownTargetEvaluation Pi0Evaluation,
                                 KnownTargetEvaluation TargetEvaluation, IReadOnlyList<DemoSizeResult> Sizes);

/// <summary>Writes <c>report.json</c> and <c>report.md</c> of a <see cref="DemoOutcome"/> (the plots are the CLI's).</summary>
public static class DemoReport
{
    public const string JsonFileName = "report.json";
    public const string MarkdownFileName = "report.md";

    /// <summary>The metric names every evaluated method (and π0, π*) has in report.json, in order.</summary>
    public static IReadOnlyList<string> MetricNames { get; } =
        [.. new KnownTargetEvaluation(default, default, default, default, default, 0, 0, 0, 0).Named().Select(kv => kv.Key)];

    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static void WriteJson(string path, DemoOutcome o)
    {
        using var stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteString("title", o.Title);
        w.WriteString("command", o.Command);
        w.WriteString("machine", o.Machine);
        Number(w, "wall_seconds", o.WallSeconds);
        w.WriteStartObject("settings");
        var s = o.Settings;
        w.WriteString("tokenizer", s.Tokenizer);
        w.WriteString("model", $"{s.Model.Layers} layers, {s.Model.Heads} heads, {s.Model.Channels} channels, context {s.Model.MaxSequenceLength}");
        Number(w, "pretraining_steps", s.Pretraining.Steps);
        w.WriteString("train", s.Train switch { TrainedWeights.HeadLora => "head-lora", var t => t.ToString().ToLowerInvariant() });
        if (s.Train == TrainedWeights.HeadLora) w.WriteNumber("adapter_rank", s.AdapterRank);
        Number(w, "weight_decay", s.WeightDecay);
        Number(w, "steps_per_method", s.Steps);
        Number(w, "batch", s.BatchPairs);
        Number(w, "learning_rate", s.LearningRate);
        Number(w, "ppo_learning_rate", s.PpoLearningRate);
        Number(w, "dpo_beta", s.DpoBeta);
        Number(w, "pmle_kl_beta", s.PmleKlBeta);
        Number(w, "distillation_kl_beta", s.DistillationKlBeta);
        Number(w, "rebel_eta", s.RebelEta);
        Number(w, "rlhf_beta", s.RlhfBeta);
        Number(w, "reverse_kl_beta", s.ReverseKlBeta);
        Number(w, "ppo_epochs", s.PpoEpochs);
        Number(w, "ppo_minibatches", s.PpoMinibatches);
        Number(w, "reward_steps", s.RewardSteps);
        w.WriteBoolean("reward_baseline", s.RewardBaseline);
        Number(w, "reward_learning_rate", s.RewardLearningRate);
        Number(w, "eval_samples_per_prompt", s.EvalSamplesPerPrompt);
        Number(w, "seed", s.Seed);
        w.WriteEndObject();
        w.WriteStartObject("pi0");
        w.WriteString("path", o.Pi0.Path);
        w.WriteBoolean("cached", o.Pi0.Cached);
        Number(w, "validation_loss", o.Pi0.ValidationLoss);
        Number(w, "pretraining_seconds", o.Pi0.Seconds);
        w.WriteEndObject();
        w.WriteStartObject("task");
        Number(w, "tau", o.Task.Temperature);
        Number(w, "gamma", o.Task.Gamma);
        Number(w, "response_tokens", o.Task.ResponseTokens);
        Number(w, "lexicon_tokens", o.Task.LexiconTokens);
        Number(w, "train_prompts", o.Task.TrainPrompts);
        Number(w, "eval_prompts", o.Task.EvalPrompts);
        Number(w, "eval_samples", o.Task.EvalSamples);
        Number(w, "kl_target_pi0", o.Task.TargetKl.Mean);
        Number(w, "kl_target_pi0_se", o.Task.TargetKl.StandardError);
        Number(w, "target_mean_length", o.Task.TargetMeanLength);
        w.WriteEndObject();
        w.WriteStartObject("baselines");
        Metrics(w, "pi0", o.Pi0Evaluation);
        Metrics(w, "pi_star", o.TargetEvaluation);
        w.WriteEndObject();
        w.WriteStartArray("sizes");
        foreach (var size in o.Sizes)
        {
            w.WriteStartObject();
            Number(w, "n", size.Pairs);
            Number(w, "mean_label_margin", size.MeanLabelMargin);
            Number(w, "agreement_with_target", size.AgreementWithTarget);
            Number(w, "labels_against_pi0", size.AgainstReference);
            w.WriteStartObject("reward_model");
            Number(w, "steps", size.Reward.Steps);
            Number(w, "final_loss", size.Reward.FinalLoss);
            Number(w, "true_order_accuracy", size.Reward.TrueOrderAccuracy);
            Number(w, "seconds", size.Reward.Seconds);
            w.WriteEndObject();
            w.WriteStartObject("methods");
            foreach (var m in size.Methods)
            {
                w.WriteStartObject(m.Name);
                w.WriteString("settings", m.Settings);
                Number(w, "seconds", m.Seconds);
                if (double.IsFinite(m.ValidationLoss)) Number(w, "validation_loss", m.ValidationLoss);
                if (m.Candidates is { Count: > 0 } candidates)
                {
                    w.WriteStartArray("tuning");
                    foreach (var c in candidates)
                    {
                        w.WriteStartObject();
                        w.WriteString("parameter", c.Parameter);
                        Number(w, "value", c.Value);
                        Number(w, "validation_loss", c.ValidationLoss);
                        Number(w, "seconds", c.Seconds);
                        w.WriteBoolean("honest_pick", c.Kept);
                        w.WriteBoolean("oracle_pick", ReferenceEquals(c, m.OraclePick));
                        Metrics(w, "metrics", c.Evaluation);
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                }
                Metrics(w, "metrics", m.Evaluation);
                w.WriteStartArray("loss_curve");
                foreach (var (step, loss) in m.LossCurve)
                {
                    w.WriteStartArray();
                    w.WriteNumberValue(step);
                    if (double.IsFinite(loss)) w.WriteNumberValue(loss); else w.WriteNullValue();
                    w.WriteEndArray();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteStartArray("seeds");
            foreach (var (run, k) in size.AllSeeds.Select((run, k) => (run, k)))
            {
                w.WriteStartObject();
                Number(w, "seed", o.Settings.Seed + (ulong)k);
                Number(w, "mean_label_margin", run.MeanLabelMargin);
                Number(w, "reward_true_order_accuracy", run.Reward.TrueOrderAccuracy);
                w.WriteStartObject("methods");
                foreach (var m in run.Methods)
                {
                    w.WriteStartObject(m.Name);
                    Number(w, "forward_kl", m.Evaluation.ForwardKl.Mean);
                    Number(w, "oracle_forward_kl", (m.OraclePick?.Evaluation ?? m.Evaluation).ForwardKl.Mean);
                    Number(w, "kl_to_pi0", m.Evaluation.KlToReference.Mean);
                    if (double.IsFinite(m.ValidationLoss)) Number(w, "validation_loss", m.ValidationLoss);
                    w.WriteEndObject();
                }
                w.WriteEndObject();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("across_seeds");
            foreach (var m in size.Methods)
            {
                var (honest, oracle) = size.ForwardKlOverSeeds(m.Method);
                w.WriteStartObject(m.Name);
                Number(w, "seeds", honest.Count);
                Number(w, "forward_kl", honest.Mean);
                Number(w, "forward_kl_se", honest.StandardError);
                Number(w, "oracle_forward_kl", oracle.Mean);
                Number(w, "oracle_forward_kl_se", oracle.StandardError);
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        if (o.Sizes.Count > 1)
        {
            w.WriteStartObject("slopes");
            foreach (var slope in Slopes(o))
            {
                w.WriteStartObject(slope.Method);
                Number(w, "slope", slope.Slope);
                Number(w, "slope_se", slope.StandardError);
                Number(w, "n_min", slope.NMin);
                Number(w, "n_max", slope.NMax);
                Number(w, "points", slope.Points);
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    private static void Metrics(Utf8JsonWriter w, string name, KnownTargetEvaluation e)
    {
        w.WriteStartObject(name);
        foreach (var (key, value) in e.Named()) Number(w, key, value);
        w.WriteEndObject();
    }

    /// <summary>Per method, the least-squares slope of ln(mean KL(π*‖π̂) over seeds) on ln n over the larger half of the sizes.</summary>
    public static IReadOnlyList<TabularSlope> Slopes(DemoOutcome o)
    {
        var large = o.Sizes.Skip(o.Sizes.Count / 2).ToList();
        var result = new List<TabularSlope>();
        foreach (var m in o.Sizes[^1].Methods)
        {
            var points = large.Select(size => (size.Pairs, Kl: size.ForwardKlOverSeeds(m.Method).Honest.Mean)).Where(p => p.Kl > 0).ToList();
            var (slope, se) = TabularExperiment.FitSlope([.. points.Select(p => Math.Log(p.Pairs))], [.. points.Select(p => Math.Log(p.Kl))]);
            result.Add(new TabularSlope(m.Name, slope, se, points.Count > 0 ? points[0].Pairs : 0, points.Count > 0 ? points[^1].Pairs : 0, points.Count));
        }
        return result;
    }

    private static void Number(Utf8JsonWriter w, string name, double value)
    {
        if (double.IsFinite(value)) w.WriteNumber(name, value);
        else w.WriteNull(name);
    }

    /// <summary>The results table in markdown: π0, every method, π*.</summary>
    public static string Table(DemoSizeResult size, KnownTargetEvaluation pi0, KnownTargetEvaluation target)
    {
        var sb = new StringBuilder();
        sb.AppendLine("| model | KL(π*‖π̂) ± SE | KL(π̂‖π*) ± SE | KL(π̂‖π0) ± SE | win rate vs π0 ± SE | lexicon reward ± SE | entropy/token | distinct-1 | distinct-2 | length | seconds |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|");
        sb.AppendLine(Row("π0 (start)", pi0, null));
        foreach (var m in size.Methods) sb.AppendLine(Row(m.Name, m.Evaluation, m.Seconds));
        sb.AppendLine(Row("π* (target)", target, null));
        return sb.ToString();
    }

    private static string Row(string name, KnownTargetEvaluation e, double? seconds) => string.Create(Inv,
        $"| {name} | {E(e.ForwardKl)} | {E(e.ReverseKl)} | {E(e.KlToReference)} | {E(e.WinRate)} | {E(e.LexiconReward)} | {e.TokenEntropy:F3} | {e.Distinct1:F3} | {e.Distinct2:F3} | {e.MeanLength:F1} | {(seconds is double s ? s.ToString("F0", Inv) : "")} |");

    private static string E(Estimate e) => string.Create(Inv, $"{e.Mean:F3} ± {e.StandardError:F3}");

    /// <summary>report.md: command, machine, task (KL(π*‖π0), label margin), π0, reward model, the table per n, plots, settings.</summary>
    public static void WriteMarkdown(string path, DemoOutcome o, IReadOnlyList<(string File, string Caption)> plots)
    {
        var sb = new StringBuilder();
        var s = o.Settings;
        sb.AppendLine($"# {o.Title}");
        sb.AppendLine();
        sb.AppendLine("```sh");
        sb.AppendLine(o.Command);
        sb.AppendLine("```");
        sb.AppendLine();
        sb.AppendLine(string.Create(Inv, $"Machine: {o.Machine}. Wall time: {o.WallSeconds:F0} s."));
        sb.AppendLine();
        sb.AppendLine("## Task");
        sb.AppendLine();
        sb.Append(string.Create(Inv, $"π* ∝ π0 · exp(w/τ) token by token, w = VADER valence on {o.Task.LexiconTokens} whole-word tokens of `{s.Tokenizer}`; τ = {o.Task.Temperature}. "));
        sb.Append(string.Create(Inv, $"Preferences P*(a ≻ b) = σ(γ [ln π*(a) − ln π*(b)]), γ = {o.Task.Gamma}, pairs a, b ~ π0. Responses: up to {o.Task.ResponseTokens} tokens "));
        sb.Append(string.Create(Inv, $"(stopping at <|endoftext|>) after prompts of the first {s.Task.PromptWords} words of held-out *Moby-Dick* sentences; "));
        sb.AppendLine(string.Create(Inv, $"{o.Task.TrainPrompts} training prompts, {o.Task.EvalPrompts} evaluation prompts × {s.EvalSamplesPerPrompt} samples = {o.Task.EvalSamples} samples per estimate."));
        sb.AppendLine();
        sb.AppendLine(string.Create(Inv, $"- KL(π*‖π0) per response: **{E(o.Task.TargetKl)}** nats (π*'s mean response length {o.Task.TargetMeanLength:F1} tokens)"));
        foreach (var size in o.Sizes)
            sb.AppendLine(string.Create(Inv,
                $"- n = {size.Pairs}: mean |P*(a ≻ b) − ½| = **{size.MeanLabelMargin:F3}**; the preferred response has the higher ln π* in {size.AgreementWithTarget:P1} of pairs, and the lower ln π0 (a label π0 alone would get wrong) in **{size.AgainstReference:P1}**"));
        sb.AppendLine();
        sb.AppendLine("## π0");
        sb.AppendLine();
        sb.Append(string.Create(Inv, $"{s.Model.Layers} layers, {s.Model.Heads} heads, {s.Model.Channels} channels, context {s.Model.MaxSequenceLength}; {s.Pretraining.Steps} pretraining steps of "));
        sb.Append(string.Create(Inv, $"{s.Pretraining.Rows} × {s.Pretraining.Length} tokens; held-out loss {o.Pi0.ValidationLoss:F3} nats/token; "));
        sb.AppendLine(o.Pi0.Cached ? "loaded from the cache." : string.Create(Inv, $"pretrained in {o.Pi0.Seconds:F0} s."));
        sb.AppendLine();
        sb.AppendLine("## Reward model");
        sb.AppendLine();
        sb.AppendLine(s.Train == TrainedWeights.Tilt
            ? string.Create(Inv, $"R̂(x, y) = γ·ln π_r(y|x) with γ = {s.Task.Gamma}: π_r ∝ π0·exp(r) token by token, its own offset r fitted by Bradley–Terry on the pairs (with this head that loss is preference MLE's). R̂ = γ ln π* is in the class.")
            : s.Train == TrainedWeights.HeadLora
            ? string.Create(Inv, $"R̂(x, y) = γ·ln π_r(y|x) with γ = {s.Task.Gamma}: π_r in the head-LoRA class (its own offset and rank-{s.AdapterRank} head adapter), fitted by Bradley–Terry on the pairs (with this head that loss is preference MLE's). R̂ = γ ln π* is in the class.")
            : s.RewardBaseline
            ? string.Create(Inv, $"R̂(x, y) = γ·ln π0(y|x) + w·h_last + b with γ = {s.Task.Gamma} (reference-anchored: the head, on a copy of π0's backbone, learns how the preferences depart from π0's likelihood).")
            : "R̂(x, y) = w·h_last + b on a copy of π0's backbone.");
        sb.AppendLine();
        foreach (var size in o.Sizes)
            sb.AppendLine(string.Create(Inv,
                $"- n = {size.Pairs}: {size.Reward.Steps} steps, last loss {size.Reward.FinalLoss:F3}, orders fresh π0 pairs like ln π* in {size.Reward.TrueOrderAccuracy:P1} ({size.Reward.Seconds:F0} s)"));
        sb.AppendLine();
        sb.AppendLine("## Results");
        sb.AppendLine();
        sb.AppendLine(s.Train == TrainedWeights.Tilt
            ? "**What trains: the tilt class.** π_b ∝ π0·exp(b) token by token: π0 frozen, b ∈ ℝ^V trained (b = 0 is π0; b = w/τ is π* exactly). PPO's critic is a linear head on π0's frozen features."
            : s.Train == TrainedWeights.HeadLora
            ? string.Create(Inv, $"**What trains: the head-LoRA class.** π ∝ π0·exp(b + (h·A)·Bᵀ): π0 frozen, b ∈ ℝ^V and a rank-{s.AdapterRank} update A·Bᵀ of the LM head over π0's final features h trained (B starts at 0, so every method starts at π0; b = w/τ, B = 0 is π*). PPO's critic is a linear head on π0's frozen features.")
            : "**What trains: every weight** (full fine-tuning of a copy of π0).");
        sb.AppendLine();
        if (s.Epochs > 0 || s.OnPolicySteps > 0)
            sb.Append(string.Create(Inv, $"Every method starts from π0. Budget: the offline methods {(s.Epochs > 0 ? $"{s.Epochs} epochs" : $"{s.Steps} steps")} of {s.BatchPairs} pairs; the methods that sample every step (PPO, REBEL{(s.DistillationPairs == Objectives.PairSource.Dataset ? "" : ", distillation")}) {(s.OnPolicySteps > 0 ? s.OnPolicySteps : s.Steps)} steps of {(s.OnPolicyBatch > 0 ? s.OnPolicyBatch : s.BatchPairs)} prompts. "));
        else
            sb.Append(string.Create(Inv, $"Every method starts from π0 with the same budget: {s.Steps} steps of {s.BatchPairs} pairs (offline) or prompts (online), learning rate {s.LearningRate}. "));
        sb.AppendLine("KLs are per response, in nats; ± is one standard error of the Monte Carlo mean.");
        sb.AppendLine();
        foreach (var size in o.Sizes)
        {
            sb.AppendLine($"### n = {size.Pairs}");
            sb.AppendLine();
            sb.Append(Table(size, o.Pi0Evaluation, o.TargetEvaluation));
            sb.AppendLine();
            sb.AppendLine("| method | settings |");
            sb.AppendLine("|---|---|");
            foreach (var m in size.Methods) sb.AppendLine($"| {m.Name} | {m.Settings} |");
            if (size.Methods.Any(m => m.Candidates is { Count: > 0 }))
            {
                sb.AppendLine();
                sb.AppendLine("Tuning: each method ran once per value of its key parameter. The table above keeps the run with the lowest held-out " +
                              "preference loss −ln σ(γ Δ ln π̂) (**honest**: no access to π*); **oracle** marks the run with the lowest KL(π*‖π̂).");
                sb.AppendLine();
                sb.AppendLine("| method | parameter | value | held-out loss | KL(π*‖π̂) | KL(π̂‖π0) | pick |");
                sb.AppendLine("|---|---|---|---|---|---|---|");
                foreach (var m in size.Methods)
                    foreach (var c in m.Candidates ?? [])
                    {
                        string pick = string.Join(", ", new[] { c.Kept ? "honest" : null, ReferenceEquals(c, m.OraclePick) ? "oracle" : null }.Where(x => x is not null));
                        sb.AppendLine(string.Create(Inv, $"| {m.Name} | {c.Parameter} | {c.Value:G4} | {c.ValidationLoss:F4} | {E(c.Evaluation.ForwardKl)} | {E(c.Evaluation.KlToReference)} | {pick} |"));
                    }
            }
            sb.AppendLine();
        }
        if (o.Sizes.Count > 1 || o.Settings.Seeds > 1)
        {
            sb.AppendLine(o.Settings.Seeds > 1 ? $"## Across {o.Settings.Seeds} seeds of pairs and training" : "## Across n");
            sb.AppendLine();
            sb.AppendLine(string.Create(Inv, $"KL(π*‖π̂) of the kept run (honest tuning) and of the oracle's pick: mean ± standard error over seeds (π0, π* and the evaluation samples are shared, so this spread is that of pairs and training); ratio = honest / KL(π*‖π0) = {o.Pi0Evaluation.ForwardKl.Mean:F3}."));
            sb.AppendLine();
            sb.AppendLine("| n | method | KL(π*‖π̂), honest | ratio to π0 | KL(π*‖π̂), oracle |");
            sb.AppendLine("|---|---|---|---|---|");
            foreach (var size in o.Sizes)
                foreach (var m in size.Methods)
                {
                    var (honest, oracle) = size.ForwardKlOverSeeds(m.Method);
                    sb.AppendLine(string.Create(Inv, $"| {size.Pairs} | {m.Name} | {honest.Mean:F3} ± {honest.StandardError:F3} | {honest.Mean / o.Pi0Evaluation.ForwardKl.Mean:F2} | {oracle.Mean:F3} ± {oracle.StandardError:F3} |"));
                }
            sb.AppendLine();
            if (o.Sizes.Count > 1)
            {
                sb.AppendLine("Slope of ln KL(π*‖π̂) (honest, mean over seeds) on ln n over the larger half of the sizes (−1 is the parametric rate; ~0 a method that levels off):");
                sb.AppendLine();
                sb.AppendLine("| method | slope ± SE | n range | points |");
                sb.AppendLine("|---|---|---|---|");
                foreach (var slope in Slopes(o))
                    sb.AppendLine(string.Create(Inv, $"| {slope.Method} | {slope.Slope:F2} ± {slope.StandardError:F2} | {slope.NMin} … {slope.NMax} | {slope.Points} |"));
                sb.AppendLine();
            }
        }
        sb.AppendLine("## Plots");
        sb.AppendLine();
        foreach (var (file, caption) in plots)
        {
            sb.AppendLine($"![{caption}]({file})");
            sb.AppendLine();
        }
        File.WriteAllText(path, sb.ToString());
    }
}
