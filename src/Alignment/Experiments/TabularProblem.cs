using DistAlign.Alignment.Data;
using DistAlign.Engine.Random;

namespace DistAlign.Alignment.Experiments;

/// <summary>Where the two responses of a tabular preference pair are drawn from (μ in OBJECTIVES.md).</summary>
public enum TabularSampler
{
    /// <summary>μ = π0, the reference policy (the default).</summary>
    Pi0,
    /// <summary>μ = uniform over the responses.</summary>
    Uniform,
}

/// <summary>
/// The known-target tabular problem of OBJECTIVES.md, "Known-target evaluation A" (the paper's Figure 1):
/// per context x, logits α*[x,·], α0[x,·] ~ N(0, σ²) i.i.d.; π* = softmax(α*), π0 = softmax(α0); preferences
/// P(a ≻ b | x) = σ(γ [ln π*(a|x) − ln π*(b|x)]) on pairs a, b ~ μ(·|x) with x uniform.
/// </summary>
/// <remarks>
/// Everything is a pure function of the seed: α* is the first X·Y normals of Philox stream 0 of the seed,
/// α0 the next X·Y (each normal scaled by σ, in fp64 after the float draw). Pairs come from stream 1
/// (<see cref="DrawPairs"/>), so the first n pairs of a seed are the same for every n (nested data sets).
/// </remarks>
public sealed class TabularProblem
{
    /// <summary>Philox stream of the logits α*, α0.</summary>
    public const ulong LogitStream = 0;
    /// <summary>Philox stream of the preference pairs.</summary>
    public const ulong PairStream = 1;

    private readonly double[] targetLogProbs, referenceLogProbs, samplerCdf;

    public int Contexts { get; }
    public int Responses { get; }
    /// <summary>γ, the preference temperature.</summary>
    public double Gamma { get; }
    public TabularSampler Sampler { get; }
    public ulong Seed { get; }

    /// <summary>α* [X·Y], row-major.</summary>
    public double[] TargetLogits { get; }
    /// <summary>α0 [X·Y], row-major.</summary>
    public double[] ReferenceLogits { get; }

    private TabularProblem(ulong seed, int contexts, int responses, double gamma, TabularSampler sampler, double[] target, double[] reference)
    {
        Seed = seed;
        Contexts = contexts;
        Responses = responses;
        Gamma = gamma;
        Sampler = sampler;
        TargetLogits = target;
        ReferenceLogits = reference;
        targetLogProbs = LogSoftmaxRows(target, responses);
        referenceLogProbs = LogSoftmaxRows(reference, responses);
        samplerCdf = new double[contexts * responses];
        for (int x = 0; x < contexts; x++)
        {
            double acc = 0;
            for (int y = 0; y < responses; y++)
            {
                acc += sampler == TabularSampler.Uniform ? 1.0 / responses : Math.Exp(referenceLogProbs[x * responses + y]);
                samplerCdf[x * responses + y] = acc;
            }
        }
    }

    /// <summary>Draws α*, α0 ~ N(0, <paramref name="logitStd"/>²) from the seed.</summary>
    public static TabularProblem Create(ulong seed, int contexts = 10, int responses = 10, double logitStd = 0.1, double gamma = 0.5,
                                        TabularSampler sampler = TabularSampler.Pi0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(contexts, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(responses, 2);
        if (!(logitStd >= 0 && double.IsFinite(logitStd))) throw new ArgumentOutOfRangeException(nameof(logitStd), logitStd, "the logit standard deviation must be finite and ≥ 0");
        if (!(gamma > 0 && double.IsFinite(gamma))) throw new ArgumentOutOfRangeException(nameof(gamma), gamma, "γ must be finite and > 0");
        var stream = new PhiloxStream(seed, LogitStream);
        var target = new double[contexts * responses];
        var reference = new double[contexts * responses];
        for (int i = 0; i < target.Length; i++) target[i] = logitStd * stream.NextNormal();
        for (int i = 0; i < reference.Length; i++) reference[i] = logitStd * stream.NextNormal();
        return new TabularProblem(seed, contexts, responses, gamma, sampler, target, reference);
    }

    /// <summary>ln π*(y | x).</summary>
    public double TargetLogProb(int x, int y) => targetLogProbs[x * Responses + y];

    /// <summary>ln π0(y | x).</summary>
    public double ReferenceLogProb(int x, int y) => referenceLogProbs[x * Responses + y];

    /// <summary>P(a ≻ b | x) = σ(γ [ln π*(a|x) − ln π*(b|x)]).</summary>
    public double PreferenceProbability(int x, int a, int b) => Sigmoid(Gamma * (TargetLogProb(x, a) - TargetLogProb(x, b)));

    /// <summary>μ(y | x).</summary>
    public double SamplerProbability(int x, int y) =>
        samplerCdf[x * Responses + y] - (y == 0 ? 0 : samplerCdf[x * Responses + y - 1]);

    /// <summary>
    /// The first <paramref name="count"/> pairs of this seed: x uniform, a, b ~ μ(·|x) independently, and the
    /// label ~ Bernoulli(P(a ≻ b | x)); the preferred response is written first. Four Philox words per pair
    /// (x, a, b, label), by inverse CDF on 24-bit uniforms.
    /// </summary>
    public TabularPair[] DrawPairs(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var stream = new PhiloxStream(Seed, PairStream);
        var pairs = new TabularPair[count];
        for (int i = 0; i < count; i++)
        {
            int x = Math.Min((int)(stream.NextFloat() * Contexts), Contexts - 1);
            int a = DrawResponse(x, stream.NextFloat());
            int b = DrawResponse(x, stream.NextFloat());
            bool aWins = stream.NextFloat() < PreferenceProbability(x, a, b);
            pairs[i] = aWins ? new TabularPair(x, a, b) : new TabularPair(x, b, a);
        }
        return pairs;
    }

    private int DrawResponse(int x, float u)
    {
        var cdf = samplerCdf.AsSpan(x * Responses, Responses);
        for (int y = 0; y < Responses - 1; y++) if (u < cdf[y]) return y;
        return Responses - 1;
    }

    /// <summary>
    /// The paper's metric, E_x KL(π*(·|x) ‖ π̂(·|x)) with x uniform, for a policy given by its logits [X·Y]:
    /// (1/X) Σ_x Σ_y π*(y|x) (ln π*(y|x) − ln π̂(y|x)), ln π̂ by a max-shifted log-softmax in fp64.
    /// </summary>
    public double ForwardKl(ReadOnlySpan<float> logits)
    {
        var asDouble = new double[logits.Length];
        for (int i = 0; i < logits.Length; i++) asDouble[i] = logits[i];
        return ForwardKl(asDouble);
    }

    /// <inheritdoc cref="ForwardKl(ReadOnlySpan{float})"/>
    public double ForwardKl(ReadOnlySpan<double> logits)
    {
        if (logits.Length != Contexts * Responses) throw new ArgumentException($"expected {Contexts}×{Responses} logits, got {logits.Length}");
        var logProbs = LogSoftmaxRows(logits, Responses);
        double total = 0;
        for (int x = 0; x < Contexts; x++)
        {
            double kl = 0;
            for (int y = 0; y < Responses; y++)
            {
                int i = x * Responses + y;
                kl += Math.Exp(targetLogProbs[i]) * (targetLogProbs[i] - logProbs[i]);
            }
            total += kl;
        }
        return total / Contexts;
    }

    /// <summary>ln softmax of each row of Y entries (fp64, max-shifted).</summary>
    public static double[] LogSoftmaxRows(ReadOnlySpan<double> logits, int responses)
    {
        var result = new double[logits.Length];
        for (int row = 0; row < logits.Length / responses; row++)
        {
            var l = logits.Slice(row * responses, responses);
            double max = double.NegativeInfinity, z = 0;
            foreach (double v in l) max = Math.Max(max, v);
            foreach (double v in l) z += Math.Exp(v - max);
            double logZ = max + Math.Log(z);
            for (int y = 0; y < responses; y++) result[row * responses + y] = l[y] - logZ;
        }
        return result;
    }

    internal static double Sigmoid(double z) => z >= 0 ? 1 / (1 + Math.Exp(-z)) : Math.Exp(z) / (1 + Math.Exp(z));
}

/// <summary>One tabular preference: in context <paramref name="Context"/>, <paramref name="Chosen"/> ≻ <paramref name="Rejected"/>.</summary>
public readonly record struct TabularPair(int Context, int Chosen, int Rejected)
{
    /// <summary>As token ids: prompt [x], responses [a⁺] and [a⁻].</summary>
    public PreferencePair ToTokens() => new([Context], [Chosen], [Rejected]);
}

/// <summary>
/// A data set of n tabular pairs as counts per distinct (x, a⁺, a⁻): a full-batch gradient over the n pairs
/// is the count-weighted sum over the distinct ones, so it costs O(distinct) instead of O(n).
/// </summary>
public sealed class TabularPairCounts
{
    private readonly int[] counts;

    public int Contexts { get; }
    public int Responses { get; }
    /// <summary>n, the number of pairs (including a = b pairs).</summary>
    public int Total { get; }

    public TabularPairCounts(int contexts, int responses, ReadOnlySpan<TabularPair> pairs)
    {
        Contexts = contexts;
        Responses = responses;
        counts = new int[contexts * responses * responses];
        foreach (var p in pairs) counts[(p.Context * responses + p.Chosen) * responses + p.Rejected]++;
        Total = pairs.Length;
    }

    /// <summary>How many of the n pairs are (x, a⁺, a⁻).</summary>
    public int this[int x, int chosen, int rejected] => counts[(x * Responses + chosen) * Responses + rejected];

    /// <summary>
    /// The distinct informative pairs (a⁺ ≠ a⁻) with their counts, in (x, a⁺, a⁻) order. Pairs with a⁺ = a⁻
    /// have z = 0 whatever the policy, so their gradient is exactly zero; they still count in n.
    /// </summary>
    public IEnumerable<(TabularPair Pair, int Count)> Distinct()
    {
        for (int x = 0; x < Contexts; x++)
            for (int c = 0; c < Responses; c++)
                for (int r = 0; r < Responses; r++)
                {
                    int k = this[x, c, r];
                    if (k > 0 && c != r) yield return (new TabularPair(x, c, r), k);
                }
    }
}
