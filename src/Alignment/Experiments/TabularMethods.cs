using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Alignment.Experiments;

/// <summary>
/// The fixed optimisation schedule of every gradient-trained tabular method: full-batch AdamW (β1 0.9,
/// β2 0.999, no weight decay) for <see cref="Steps"/> steps from π0, the learning rate falling from
/// <see cref="LearningRate"/> to <see cref="FinalLearningRateFraction"/>·lr on a half cosine.
/// </summary>
public sealed record TabularTrainingSchedule(int Steps = 100, float LearningRate = 0.05f, float FinalLearningRateFraction = 0.05f)
{
    /// <summary>lr at the 1-based <paramref name="step"/> of <paramref name="steps"/>.</summary>
    public float LearningRateAt(int step, int steps)
    {
        double progress = steps <= 1 ? 1 : (step - 1) / (double)(steps - 1);
        double floor = FinalLearningRateFraction;
        return (float)(LearningRate * (floor + (1 - floor) * 0.5 * (1 + Math.Cos(Math.PI * progress))));
    }

    /// <summary>Throws when a value is out of range.</summary>
    public void Validate()
    {
        if (Steps < 1) throw new ArgumentOutOfRangeException(nameof(Steps), Steps, "the schedule needs at least one step");
        if (!(LearningRate > 0 && float.IsFinite(LearningRate))) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "the learning rate must be finite and > 0");
        if (!(FinalLearningRateFraction is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(FinalLearningRateFraction), FinalLearningRateFraction, "the final learning-rate fraction must lie in [0, 1]");
    }
}

/// <summary>What one method needs for one (seed, n): the problem, the n pairs as counts, R̂ fitted on them.</summary>
/// <param name="Problem">π*, π0, μ and γ.</param>
/// <param name="Data">The n preference pairs.</param>
/// <param name="Reward">R̂, the Bradley–Terry table fitted on <paramref name="Data"/> (methods that use one).</param>
/// <param name="Schedule">The optimisation schedule.</param>
public sealed record TabularRunInput(TabularProblem Problem, TabularPairCounts Data, TabularReward Reward, TabularTrainingSchedule Schedule);

/// <summary>A fitted tabular policy: its logits [X·Y], the norm of its objective's full gradient there, and steps taken (0: closed form).</summary>
public sealed record TabularFit(float[] Logits, double GradientNorm, int Steps);

/// <summary>
/// One alignment method of the tabular experiment with its tuning parameter (β, or η for REBEL) and the grid
/// it is tuned on. RLHF and reverse KL plug in here the same way as the gradient-trained methods.
/// </summary>
public interface ITabularMethod
{
    /// <summary>Short name used in tables, CSV and the plot.</summary>
    string Name { get; }
    /// <summary>"β" or "η".</summary>
    string ParameterName { get; }
    /// <summary>The values the parameter is tuned over.</summary>
    IReadOnlyList<double> Grid { get; }
    /// <summary>How the method is solved, in a few words (printed in the report).</summary>
    string How { get; }
    /// <summary>Fits π̂ for one parameter value.</summary>
    TabularFit Fit(TabularRunInput input, double parameter);
}

/// <summary>The methods of the tabular experiment and the exact full-batch gradient machinery they share.</summary>
public static class TabularMethods
{
    /// <summary>Half-decades 10^(k/2) from 10^<paramref name="fromExponent"/> to 10^<paramref name="toExponent"/>.</summary>
    public static double[] HalfDecades(int fromExponent, int toExponent, bool withZero)
    {
        var grid = new List<double>();
        if (withZero) grid.Add(0);
        for (int k = 2 * fromExponent; k <= 2 * toExponent; k++) grid.Add(k % 2 == 0 ? Math.Pow(10, k / 2) : Math.Pow(10, k / 2.0));
        return [.. grid];
    }

    /// <summary>Every method, in table order.</summary>
    public static IReadOnlyList<ITabularMethod> All() =>
    [
        new ClosedFormRlhf(), new ClosedFormReverseKl(), new PreferenceMle(), new Distillation(), new Dpo(), new Rebel(),
    ];

    /// <summary>A fresh policy at π0 (logits α0) and its frozen copy, the reference.</summary>
    internal static (TabularPolicy Policy, TabularPolicy Reference) StartAtReference(TabularProblem problem)
    {
        var policy = new TabularPolicy(problem.Contexts, problem.Responses);
        var logits = policy.Logits;
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)problem.ReferenceLogits[i];
        return (policy, (TabularPolicy)policy.Snapshot());
    }

    /// <summary>
    /// The gradient-trained methods' common frame: start π at π0, let <paramref name="prepare"/> precompute what it needs
    /// from π0 and return the step's gradient accumulation, run <see cref="Train"/> for the schedule, and return the fit.
    /// </summary>
    internal static TabularFit FitFromReference(TabularRunInput input, Func<TabularPolicy, Action<TabularPolicy>> prepare)
    {
        var (policy, reference) = StartAtReference(input.Problem);
        using var _p = policy;
        using var _r = reference;
        var accumulate = prepare(reference);
        int steps = input.Schedule.Steps;
        double norm = Train(policy, input.Schedule, steps, accumulate);
        return new TabularFit(policy.Logits.ToArray(), norm, steps);
    }

    /// <summary>(x, y) for every context and response, in row-major order: the support a tabular expectation sums over.</summary>
    internal static List<PromptResponse> AllSequences(int contexts, int responses)
    {
        var all = new List<PromptResponse>(contexts * responses);
        for (int x = 0; x < contexts; x++) for (int y = 0; y < responses; y++) all.Add(new PromptResponse([x], [y]));
        return all;
    }

    /// <summary>
    /// Adds β·∇ E_x KL(π(·|x) ‖ π0(·|x)) exactly, by enumerating the responses: with f(y) = ln π(y|x) − ln π0(y|x),
    /// ∂KL_x/∂ln π(y|x) as seen through the score function is π(y|x)·(f(y) − KL_x) — the expectation of the
    /// leave-one-out estimator of <see cref="OfflinePreferenceObjective"/>, without its sampling noise.
    /// <code>
    /// forward:  KL = (1/X) Σ_x Σ_y π(y|x) f(y)
    /// backward: dL/d ln π(y|x) = β π(y|x) (f(y) − KL_x) / X      (then the policy's own softmax backward)
    /// </code>
    /// Returns the KL value.
    /// </summary>
    internal static double AccumulateExactKl(IPolicy policy, List<PromptResponse> all, ReadOnlySpan<float> referenceLogProbs, int responses, double beta)
    {
        var logProbs = new float[all.Count];
        policy.Score(all, logProbs);
        int contexts = all.Count / responses;
        var d = new float[all.Count];
        double total = 0;
        for (int x = 0; x < contexts; x++)
        {
            double kl = 0;
            for (int y = 0; y < responses; y++)
            {
                int i = x * responses + y;
                kl += Math.Exp(logProbs[i]) * (logProbs[i] - (double)referenceLogProbs[i]);
            }
            for (int y = 0; y < responses; y++)
            {
                int i = x * responses + y;
                d[i] = (float)(beta * Math.Exp(logProbs[i]) * (logProbs[i] - (double)referenceLogProbs[i] - kl) / contexts);
            }
            total += kl;
        }
        policy.Backward(d);
        return total / contexts;
    }

    /// <summary>ln π of every sequence of <paramref name="all"/> under <paramref name="policy"/>.</summary>
    internal static float[] LogProbs(IPolicy policy, List<PromptResponse> all)
    {
        var result = new float[all.Count];
        policy.Score(all, result);
        return result;
    }

    /// <summary>
    /// The pair-weighted form of the pairwise loss: Σ_i w_i ℓ_i over pairs whose sequences are 2i (first) and
    /// 2i+1 (second) of <paramref name="sequences"/>, through <see cref="PairwiseBradleyTerryLoss"/>. The kernel
    /// returns the gradient of the MEAN over P pairs and each pair owns its two sequence slots, so scaling slot
    /// 2i and 2i+1 by w_i·P gives exactly the gradient of the weighted sum. Returns Σ w_i ℓ_i.
    /// </summary>
    internal static double AccumulateWeightedPairs(IPolicy policy, in PairwiseLossSettings settings, List<PromptResponse> sequences,
                                                   ReadOnlySpan<double> weights, ReadOnlySpan<float> anchor, ReadOnlySpan<float> rewards,
                                                   ReadOnlySpan<float> labels)
    {
        int s = sequences.Count, p = s / 2;
        var logps = new float[s];
        policy.Score(sequences, logps);
        var first = new int[p];
        var second = new int[p];
        for (int i = 0; i < p; i++) { first[i] = 2 * i; second[i] = 2 * i + 1; }
        var dLogps = new float[s];
        var losses = new float[p];
        PairwiseBradleyTerryLoss.ForwardBackward(settings, new PairwiseLossBatch
        {
            Logps = logps, RefLogps = anchor, Rewards = rewards, Chosen = first, Rejected = second, Labels = labels,
        }, losses, dLogps, default);
        double loss = 0;
        for (int i = 0; i < p; i++)
        {
            double scale = weights[i] * p;
            dLogps[2 * i] = (float)(dLogps[2 * i] * scale);
            dLogps[2 * i + 1] = (float)(dLogps[2 * i + 1] * scale);
            loss += weights[i] * losses[i];
        }
        policy.Backward(dLogps);
        return loss;
    }

    /// <summary>
    /// Full-batch AdamW on <paramref name="accumulate"/> (which adds the objective's gradient) for the schedule's
    /// steps, then the norm of the objective's gradient at the final point.
    /// </summary>
    internal static double Train(TabularPolicy policy, TabularTrainingSchedule schedule, int steps, Action<TabularPolicy> accumulate)
    {
        for (int step = 1; step <= steps; step++)
        {
            policy.ZeroGradients();
            accumulate(policy);
            policy.OptimizerStep(step, schedule.LearningRateAt(step, steps));
        }
        policy.ZeroGradients();
        accumulate(policy);
        double norm = policy.ClipGradients(0);
        policy.ZeroGradients();
        return norm;
    }

    /// <summary>
    /// The n pairs grouped by their count c: <see cref="OfflinePreferenceObjective.Accumulate(IPolicy, IReadOnlyList{PreferencePair}, ReadOnlySpan{float}, IPolicy, ulong, double, int)"/> takes the MEAN over
    /// a group of m distinct pairs, so gradientScale = c·m/n makes the groups add up to the mean over all n pairs.
    /// </summary>
    internal static List<(double Scale, List<PreferencePair> Pairs)> GroupByCount(TabularPairCounts data)
    {
        var byCount = new SortedDictionary<int, List<PreferencePair>>();
        foreach (var (pair, count) in data.Distinct())
        {
            if (!byCount.TryGetValue(count, out var list)) byCount[count] = list = [];
            list.Add(pair.ToTokens());
        }
        return [.. byCount.Select(g => ((double)g.Key * g.Value.Count / data.Total, g.Value))];
    }

    /// <summary>
    /// Every unordered pair {a, b}, a &lt; b, of every context as interleaved sequences (x, a), (x, b): the support of
    /// an on-policy pair distribution (a = b pairs have zero gradient in distillation and REBEL).
    /// </summary>
    internal static (List<PromptResponse> Sequences, List<(int X, int A, int B)> Pairs) AllUnorderedPairs(int contexts, int responses)
    {
        var sequences = new List<PromptResponse>();
        var pairs = new List<(int, int, int)>();
        for (int x = 0; x < contexts; x++)
            for (int a = 0; a < responses; a++)
                for (int b = a + 1; b < responses; b++)
                {
                    sequences.Add(new PromptResponse([x], [a]));
                    sequences.Add(new PromptResponse([x], [b]));
                    pairs.Add((x, a, b));
                }
        return (sequences, pairs);
    }

    /// <summary>
    /// w(x, {a, b}) = 2 π(a|x) π(b|x) / X: the probability that x uniform and a₁, a₂ ~ π(·|x) i.i.d. give the pair {a, b}
    /// (a ≠ b), from the policy's current probabilities (a constant: the sampler is not differentiated).
    /// </summary>
    internal static double[] OnPolicyWeights(TabularPolicy policy, List<(int X, int A, int B)> pairs)
    {
        var probabilities = new double[policy.Contexts][];
        for (int x = 0; x < policy.Contexts; x++) probabilities[x] = policy.Probabilities(x);
        var w = new double[pairs.Count];
        for (int i = 0; i < pairs.Count; i++)
        {
            var (x, a, b) = pairs[i];
            w[i] = 2 * probabilities[x][a] * probabilities[x][b] / policy.Contexts;
        }
        return w;
    }
}

/// <summary>
/// RLHF in closed form: argmax_π E_π[R̂] − β KL(π ‖ π0) over a tabular class is π ∝ π0·exp(R̂/β) (OBJECTIVES.md,
/// "RLHF with PPO", tabular closed form). Exact: no optimisation error.
/// </summary>
public sealed class ClosedFormRlhf : ITabularMethod
{
    public string Name => "RLHF";
    public string ParameterName => "β";
    public IReadOnlyList<double> Grid { get; } = TabularMethods.HalfDecades(-3, 3, withZero: false);
    public string How => "closed form π ∝ π0·exp(R̂/β)";

    public TabularFit Fit(TabularRunInput input, double beta)
    {
        var p = input.Problem;
        var logits = new float[p.Contexts * p.Responses];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)(p.ReferenceLogits[i] + input.Reward.Rewards[i] / beta);
        return new TabularFit(logits, 0, 0);
    }
}

/// <summary>
/// Reverse-KL minimisation in closed form: argmin_π E_π[−R̂] − γ H(π) + β KL(π ‖ π0) is
/// π ∝ π0^(β/(β+γ))·exp(R̂/(β+γ)) (OBJECTIVES.md §3); β = 0 gives exp(R̂/γ).
/// </summary>
public sealed class ClosedFormReverseKl : ITabularMethod
{
    public string Name => "RKL";
    public string ParameterName => "β";
    public IReadOnlyList<double> Grid { get; } = TabularMethods.HalfDecades(-3, 3, withZero: true);
    public string How => "closed form π ∝ π0^(β/(β+γ))·exp(R̂/(β+γ))";

    public TabularFit Fit(TabularRunInput input, double beta)
    {
        var p = input.Problem;
        double gamma = p.Gamma;
        var logits = new float[p.Contexts * p.Responses];
        for (int i = 0; i < logits.Length; i++)
            logits[i] = (float)((beta / (beta + gamma)) * p.ReferenceLogits[i] + input.Reward.Rewards[i] / (beta + gamma));
        return new TabularFit(logits, 0, 0);
    }
}

/// <summary>
/// Preference MLE (OBJECTIVES.md §1): mean over the n pairs of −ln σ(γ[ln π(a⁺|x) − ln π(a⁻|x)]) through
/// <see cref="OfflinePreferenceObjective"/> (distinct pairs grouped by count), plus β·E_x KL(π ‖ π0) computed exactly.
/// </summary>
public sealed class PreferenceMle : ITabularMethod
{
    public string Name => "PMLE";
    public string ParameterName => "β";
    public IReadOnlyList<double> Grid { get; } = TabularMethods.HalfDecades(-3, 3, withZero: true);
    public string How => "AdamW on OfflinePreferenceObjective(Pmle) + exact KL";

    public TabularFit Fit(TabularRunInput input, double beta)
    {
        var p = input.Problem;
        return TabularMethods.FitFromReference(input, reference =>
        {
            var all = TabularMethods.AllSequences(p.Contexts, p.Responses);
            var referenceLogProbs = TabularMethods.LogProbs(reference, all);
            var groups = TabularMethods.GroupByCount(input.Data);
            var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: p.Gamma));
            return pi =>
            {
                foreach (var (scale, pairs) in groups) objective.Accumulate(pi, pairs, [], null, 0, scale);
                if (beta > 0) TabularMethods.AccumulateExactKl(pi, all, referenceLogProbs, p.Responses, beta);
            };
        });
    }
}

/// <summary>
/// DPO (sigmoid): mean over the n pairs of −ln σ(β h), h the log-ratio margin against π0, through
/// <see cref="OfflinePreferenceObjective"/> (distinct pairs grouped by count, ln π0 computed once).
/// </summary>
public sealed class Dpo : ITabularMethod
{
    public string Name => "DPO";
    public string ParameterName => "β";
    public IReadOnlyList<double> Grid { get; } = TabularMethods.HalfDecades(-1, 4, withZero: false);
    public string How => "AdamW on OfflinePreferenceObjective(DpoSigmoid)";

    public TabularFit Fit(TabularRunInput input, double beta)
    {
        return TabularMethods.FitFromReference(input, reference =>
        {
            var groups = TabularMethods.GroupByCount(input.Data)
                .Select(g => (g.Scale, g.Pairs, Reference: OfflinePreferenceObjective.ReferenceLogProbs(reference, g.Pairs))).ToList();
            var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: beta));
            return pi =>
            {
                foreach (var (scale, pairs, referenceLogProbs) in groups) objective.Accumulate(pi, pairs, referenceLogProbs, null, 0, scale);
            };
        });
    }
}

/// <summary>
/// Preference distillation (OBJECTIVES.md §2) with on-policy pairs a₁, a₂ ~ π_t, in expectation: the Bernoulli
/// cross-entropy to the soft label σ(R̂(a₁) − R̂(a₂)) over every pair weighted by its probability under π_t
/// (<see cref="PairwiseLossVariant.Distillation"/> through <see cref="PairwiseBradleyTerryLoss"/>), plus β·KL(π ‖ π0) exactly.
/// </summary>
public sealed class Distillation : ITabularMethod
{
    public string Name => "Distill";
    public string ParameterName => "β";
    public IReadOnlyList<double> Grid { get; } = TabularMethods.HalfDecades(-3, 3, withZero: true);
    public string How => "AdamW on the distillation loss, pairs ~ π_t in expectation, + exact KL";

    public TabularFit Fit(TabularRunInput input, double beta)
    {
        var p = input.Problem;
        return TabularMethods.FitFromReference(input, reference =>
        {
            var all = TabularMethods.AllSequences(p.Contexts, p.Responses);
            var referenceLogProbs = TabularMethods.LogProbs(reference, all);
            var (sequences, pairs) = TabularMethods.AllUnorderedPairs(p.Contexts, p.Responses);
            var labels = new float[pairs.Count];
            for (int i = 0; i < pairs.Count; i++)
            {
                var (x, a, b) = pairs[i];
                labels[i] = (float)TabularProblem.Sigmoid((double)input.Reward[x, a] - input.Reward[x, b]);
            }
            var settings = new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: p.Gamma);
            return pi =>
            {
                var weights = TabularMethods.OnPolicyWeights(pi, pairs);
                TabularMethods.AccumulateWeightedPairs(pi, settings, sequences, weights, default, default, labels);
                if (beta > 0) TabularMethods.AccumulateExactKl(pi, all, referenceLogProbs, p.Responses, beta);
            };
        });
    }
}

/// <summary>
/// REBEL: <see cref="Iterations"/> rounds of the full schedule each; round t fixes the anchor π_t and pairs a₁, a₂ ~ π_t (in expectation, as
/// weights) and regresses [ln π(a₁) − ln π_t(a₁)] − [ln π(a₂) − ln π_t(a₂)] onto η[R̂(a₁) − R̂(a₂)] with fresh AdamW
/// (<see cref="PairwiseLossVariant.Rebel"/>). Solved exactly each round gives π_{t+1} ∝ π_t·exp(η R̂), so after T rounds
/// π ∝ π0·exp(TηR̂): RLHF's family with β = 1/(Tη).
/// </summary>
public sealed class Rebel : ITabularMethod
{
    /// <summary>T, the number of REBEL rounds (each runs the whole schedule with fresh AdamW moments).</summary>
    public const int Iterations = 2;

    public string Name => "REBEL";
    public string ParameterName => "η";
    public IReadOnlyList<double> Grid { get; } = TabularMethods.HalfDecades(-3, 1, withZero: false);
    public string How => $"{Iterations} rounds of AdamW on the REBEL regression, pairs ~ π_t in expectation";

    public TabularFit Fit(TabularRunInput input, double eta)
    {
        var p = input.Problem;
        var (policy, reference) = TabularMethods.StartAtReference(p);
        reference.Dispose();
        var (sequences, pairs) = TabularMethods.AllUnorderedPairs(p.Contexts, p.Responses);
        var rewards = new float[sequences.Count];
        input.Reward.Score(sequences, rewards);
        var settings = new PairwiseLossSettings(PairwiseLossVariant.Rebel, Eta: eta);
        int stepsPerRound = input.Schedule.Steps;
        double norm = 0;
        for (int round = 0; round < Iterations; round++)
        {
            var anchor = TabularMethods.LogProbs(policy, sequences);
            var weights = TabularMethods.OnPolicyWeights(policy, pairs);
            using var previous = policy;
            policy = (TabularPolicy)previous.Snapshot();     // fresh AdamW moments each round
            norm = TabularMethods.Train(policy, input.Schedule, stepsPerRound,
                pi => TabularMethods.AccumulateWeightedPairs(pi, settings, sequences, weights, anchor, rewards, default));
        }
        using var final = policy;
        return new TabularFit(final.Logits.ToArray(), norm, stepsPerRound * Iterations);
    }
}
