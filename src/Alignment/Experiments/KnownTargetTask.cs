using System.Text.RegularExpressions;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Policies;
using DistAlign.Engine.Random;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Alignment.Experiments;

/// <summary>The knobs of the language-model known-target task (OBJECTIVES.md "Known-target evaluation B").</summary>
public sealed record KnownTargetSettings
{
    /// <summary>τ of the tilt π* ∝ π0·exp(w/τ).</summary>
    public double Temperature { get; init; } = 1.25;
    /// <summary>γ of the preference model P*(a ≻ b) = σ(γ[ln π*(a) − ln π*(b)]).</summary>
    public double Gamma { get; init; } = 1.0;
    /// <summary>L: response length (a response also stops at &lt;|endoftext|&gt;).</summary>
    public int ResponseTokens { get; init; } = 16;
    /// <summary>Words of a corpus sentence that make a prompt.</summary>
    public int PromptWords { get; init; } = 4;
    /// <summary>Prompts longer than this many tokens are cut to their first tokens.</summary>
    public int MaxPromptTokens { get; init; } = 8;
    /// <summary>Distinct training prompts (pairs cycle through them; the online methods sample on them).</summary>
    public int TrainPrompts { get; init; } = 256;
    /// <summary>Distinct held-out prompts for the evaluation (disjoint from the training prompts).</summary>
    public int EvalPrompts { get; init; } = 64;

    public KnownTargetSettings Validate()
    {
        if (!(Temperature > 0)) throw new ArgumentException($"τ must be > 0 (got {Temperature})");
        if (!(Gamma > 0) || double.IsInfinity(Gamma)) throw new ArgumentException($"γ must be a positive number (got {Gamma})");
        if (ResponseTokens < 1) throw new ArgumentException($"responses need at least 1 token (got {ResponseTokens})");
        if (PromptWords < 1 || MaxPromptTokens < 1) throw new ArgumentException("prompts need at least one word and one token");
        if (TrainPrompts < 1 || EvalPrompts < 1) throw new ArgumentException("the task needs at least one training and one evaluation prompt");
        return this;
    }
}

/// <summary>n preference pairs drawn from π0 and labelled by the true preference model, with what describes their difficulty.</summary>
/// <param name="Pairs">preferred response first</param>
/// <param name="MeanLabelMargin">mean |P*(a ≻ b) − ½| over the pairs (0: coin flips, ½: certain labels)</param>
/// <param name="AgreementWithTarget">share of pairs whose preferred response has the higher ln π* (the label's expected value is ½ + the margin)</param>
public sealed record KnownTargetPairs(IReadOnlyList<PreferencePair> Pairs, double MeanLabelMargin, double AgreementWithTarget)
{
    /// <summary>
    /// Share of pairs whose preferred response is the one π0 alone finds less likely: the labels that carry information
    /// π0 does not already have (ln π* − ln π0 is the tilt, so these are the pairs the tilt decided).
    /// </summary>
    public double AgainstReference { get; init; }
}

/// <summary>
/// The language-model known-target task: prompts from held-out corpus sentences, the target π*, preference pairs
/// a, b ~ π0 with labels ~ Bernoulli(σ(γ[ln π*(a) − ln π*(b)])), and KL(π* ‖ π0).
/// </summary>
public sealed class KnownTargetTask
{
    /// <summary>Sequences per sampling or scoring call (bounds the packed batch's activations).</summary>
    public const int ChunkSequences = 64;

    public TiltedTarget Target { get; }
    public Gpt Reference => Target.Reference;
    public KnownTargetSettings Settings { get; }
    public IReadOnlyList<int[]> TrainPrompts { get; }
    public IReadOnlyList<int[]> EvalPrompts { get; }
    public int EndOfText { get; }
    /// <summary>How every response of the task is drawn: L tokens at most, stopping at &lt;|endoftext|&gt;, temperature 1.</summary>
    public SamplingOptions Sampling => new(Settings.ResponseTokens, EndOfText: EndOfText);

    public KnownTargetTask(TiltedTarget target, KnownTargetSettings settings, IReadOnlyList<int[]> trainPrompts, IReadOnlyList<int[]> evalPrompts, int endOfText)
    {
        Target = target;
        Settings = settings.Validate();
        if (trainPrompts.Count == 0 || evalPrompts.Count == 0) throw new ArgumentException("the task needs training and evaluation prompts");
        int context = target.Reference.Config.MaxSequenceLength;
        foreach (var p in trainPrompts.Concat(evalPrompts))
            if (p.Length == 0 || p.Length + settings.ResponseTokens > context)
                throw new ArgumentException($"a prompt of {p.Length} tokens plus {settings.ResponseTokens} response tokens does not fit the context of {context}");
        TrainPrompts = trainPrompts;
        EvalPrompts = evalPrompts;
        EndOfText = endOfText;
    }

    /// <summary>
    /// Prompts from <paramref name="text"/> (the held-out part of the corpus): sentences (split after . ! ? and
    /// white space, line breaks folded) with at least PromptWords + 2 words, shuffled by Philox (seed, 0), the first
    /// PromptWords words of each tokenized and cut to MaxPromptTokens; duplicates dropped; the first TrainPrompts
    /// go to training, the next EvalPrompts to evaluation.
    /// </summary>
    public static (List<int[]> Train, List<int[]> Eval) PromptsFrom(string text, Gpt2Tokenizer tokenizer, KnownTargetSettings settings, ulong seed)
    {
        settings.Validate();
        var sentences = Regex.Split(Regex.Replace(text, @"\s+", " "), @"(?<=[.!?])\s+")
            .Select(s => s.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(words => words.Length >= settings.PromptWords + 2 && char.IsLetter(words[0][0]))
            .Select(words => string.Join(' ', words.Take(settings.PromptWords)))
            .Distinct(StringComparer.Ordinal)
            .ToList();
        int need = settings.TrainPrompts + settings.EvalPrompts;
        if (sentences.Count < need)
            throw new ArgumentException($"the text has {sentences.Count} usable sentences; {need} prompts were asked for");
        var order = new PhiloxStream(seed, 0).Permutation(sentences.Count);
        var prompts = new List<int[]>(need);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (int i in order)
        {
            var ids = tokenizer.Encode(sentences[i]);
            if (ids.Length > settings.MaxPromptTokens) ids = ids[..settings.MaxPromptTokens];
            if (!seen.Add(string.Join(',', ids))) continue;
            prompts.Add(ids);
            if (prompts.Count == need) break;
        }
        if (prompts.Count < need) throw new ArgumentException($"only {prompts.Count} distinct prompts in the text; {need} were asked for");
        return (prompts[..settings.TrainPrompts], prompts[settings.TrainPrompts..]);
    }

    /// <summary>Samples one response per prompt from <paramref name="model"/>, <see cref="ChunkSequences"/> at a time (chunk k uses seed (seed, k)).</summary>
    public Continuation[] SampleAll(IResponseModel model, IReadOnlyList<int[]> prompts, ulong seed)
    {
        var all = new Continuation[prompts.Count];
        for (int start = 0, k = 0; start < prompts.Count; start += ChunkSequences, k++)
        {
            int m = Math.Min(ChunkSequences, prompts.Count - start);
            var chunk = model.Sample(Slice(prompts, start, m), Sampling, Mix(seed, (ulong)k));
            Array.Copy(chunk, 0, all, start, m);
        }
        return all;
    }

    /// <summary>Per-sequence sums of <see cref="IResponseModel.Score"/> (and mean entropies when asked), in chunks.</summary>
    public static double[] ScoreAll(IResponseModel model, IReadOnlyList<PromptResponse> sequences, double[]? entropySums = null)
    {
        var sums = new double[sequences.Count];
        for (int start = 0; start < sequences.Count; start += ChunkSequences)
        {
            var chunk = Slice(sequences, start, Math.Min(ChunkSequences, sequences.Count - start));
            var lp = new float[PolicyScores.TokenCount(chunk)];
            var h = entropySums is null ? [] : new float[lp.Length];
            model.Score(chunk, lp, h);
            int at = 0;
            for (int s = 0; s < chunk.Count; s++)
            {
                double total = 0, entropy = 0;
                for (int i = 0; i < chunk[s].Response.Length; i++, at++)
                {
                    total += lp[at];
                    if (entropySums is not null) entropy += h[at];
                }
                sums[start + s] = total;
                if (entropySums is not null) entropySums[start + s] = entropy;
            }
        }
        return sums;
    }

    /// <summary>ln π*(y | x) and ln π0(y | x) of every sequence (one pass over π0's logits), in chunks.</summary>
    public (double[] Target, double[] Reference) TargetAndReferenceLogProbs(IReadOnlyList<PromptResponse> sequences)
    {
        var target = new double[sequences.Count];
        var reference = new double[sequences.Count];
        for (int start = 0; start < sequences.Count; start += ChunkSequences)
        {
            var chunk = Slice(sequences, start, Math.Min(ChunkSequences, sequences.Count - start));
            var lp = new float[PolicyScores.TokenCount(chunk)];
            var lp0 = new float[lp.Length];
            Target.Score(chunk, lp, lp0, default);
            int at = 0;
            for (int s = 0; s < chunk.Count; s++)
            {
                double a = 0, b = 0;
                for (int i = 0; i < chunk[s].Response.Length; i++, at++) { a += lp[at]; b += lp0[at]; }
                target[start + s] = a;
                reference[start + s] = b;
            }
        }
        return (target, reference);
    }

    /// <summary>
    /// n pairs: pair i's prompt is training prompt i mod |prompts|; a, b ~ π0 (seed, streams per chunk); the label
    /// a ≻ b with probability P* = σ(γ[ln π*(a) − ln π*(b)]) from Philox (seed, 2⁴⁰ + i) — the preferred response goes first.
    /// </summary>
    public KnownTargetPairs DrawPairs(int n, ulong seed)
    {
        if (n < 1) throw new ArgumentException($"n must be ≥ 1 (got {n})");
        var prompts = new List<int[]>(2 * n);
        for (int i = 0; i < n; i++)
        {
            var p = TrainPrompts[i % TrainPrompts.Count];
            prompts.Add(p);
            prompts.Add(p);
        }
        Continuation[] responses;
        using (var pi0 = new GptPolicy(Reference, new()))
            responses = SampleAll(new PolicyResponseModel(pi0), prompts, seed);
        var sequences = prompts.Select((p, i) => new PromptResponse(p, responses[i].Tokens)).ToList();
        var (lnTarget, lnReference) = TargetAndReferenceLogProbs(sequences);
        var pairs = new List<PreferencePair>(n);
        double margin = 0;
        int agree = 0, againstReference = 0;
        for (int i = 0; i < n; i++)
        {
            double delta = lnTarget[2 * i] - lnTarget[2 * i + 1];
            double p = Sigmoid(Settings.Gamma * delta);
            margin += Math.Abs(p - 0.5);
            bool aWins = new PhiloxStream(seed, (1UL << 40) + (ulong)i).NextFloat() < p;
            var (a, b) = (sequences[2 * i].Response, sequences[2 * i + 1].Response);
            pairs.Add(aWins ? new PreferencePair(prompts[2 * i], a, b) : new PreferencePair(prompts[2 * i], b, a));
            if ((aWins && delta >= 0) || (!aWins && delta <= 0)) agree++;
            double delta0 = lnReference[2 * i] - lnReference[2 * i + 1];
            if ((aWins && delta0 < 0) || (!aWins && delta0 > 0)) againstReference++;
        }
        return new KnownTargetPairs(pairs, margin / n, (double)agree / n) { AgainstReference = (double)againstReference / n };
    }

    /// <summary>
    /// KL(π* ‖ π0) per response by Monte Carlo on the evaluation prompts: mean of ln π*(y) − ln π0(y), y ~ π*,
    /// <paramref name="samplesPerPrompt"/> per prompt, with its standard error; also π*'s mean response length.
    /// </summary>
    public (Estimate Kl, double MeanLength) TargetKl(int samplesPerPrompt, ulong seed)
    {
        var prompts = Repeat(EvalPrompts, samplesPerPrompt);
        var samples = SampleAll(Target, prompts, seed);
        var sequences = prompts.Select((p, i) => new PromptResponse(p, samples[i].Tokens)).ToList();
        var (lnTarget, lnReference) = TargetAndReferenceLogProbs(sequences);
        return (Estimate.Of(lnTarget.Select((t, i) => t - lnReference[i])), samples.Average(s => s.Tokens.Length));
    }

    /// <summary>Every prompt <paramref name="times"/> times, in order (prompt 0 × k, prompt 1 × k, …).</summary>
    public static List<int[]> Repeat(IReadOnlyList<int[]> prompts, int times)
    {
        var list = new List<int[]>(prompts.Count * times);
        foreach (var p in prompts) for (int k = 0; k < times; k++) list.Add(p);
        return list;
    }

    internal static double Sigmoid(double z) => z >= 0 ? 1 / (1 + Math.Exp(-z)) : Math.Exp(z) / (1 + Math.Exp(z));

    private static List<T> Slice<T>(IReadOnlyList<T> list, int start, int count)
    {
        var s = new List<T>(count);
        for (int i = 0; i < count; i++) s.Add(list[start + i]);
        return s;
    }

    /// <summary>SplitMix64 of (seed, k): distinct, well-spread seeds per chunk.</summary>
    internal static ulong Mix(ulong seed, ulong k)
    {
        ulong z = seed + 0x9E3779B97F4A7C15UL * (k + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>A Monte Carlo mean with its standard error s/√m.</summary>
public readonly record struct Estimate(double Mean, double StandardError, int Count)
{
    public static Estimate Of(IEnumerable<double> values)
    {
        var v = values.ToArray();
        if (v.Length == 0) return new(double.NaN, double.NaN, 0);
        double mean = v.Average();
        if (v.Length == 1) return new(mean, double.NaN, 1);
        double var = v.Sum(x => (x - mean) * (x - mean)) / (v.Length - 1);
        return new(mean, Math.Sqrt(var / v.Length), v.Length);
    }

    public override string ToString() => $"{Mean:F3} ± {StandardError:F3}";
}
