using DistAlign.Engine.Random;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// A rank-r update of a GPT's LM head over its final features h: the logits gain (h·A)·Bᵀ, A [C × r] and B [V × r] row-major
/// (<see cref="TiltPolicy"/>'s head-LoRA class). The default (rank 0) adds nothing.
/// </summary>
public readonly ref struct HeadAdapter(int rank, ReadOnlySpan<float> a, ReadOnlySpan<float> b)
{
    public int Rank { get; } = rank;
    public ReadOnlySpan<float> A { get; } = a;
    public ReadOnlySpan<float> B { get; } = b;
}

/// <summary>
/// Exact sampling from a GPT whose next-token logits are shifted by a fixed per-token offset t (and, with a
/// <see cref="HeadAdapter"/>, by (h·A)·Bᵀ of the step's features):
/// p(v | ctx) ∝ π0(v | ctx)·exp(t_v). It is how the known target π* and every <see cref="TiltPolicy"/> draw.
/// </summary>
public static class TiltedSampler
{
    /// <summary>
    /// One response per prompt: KV-cache decoding of <paramref name="backbone"/> with <paramref name="tilt"/> added to every
    /// step's logits, inverse-CDF draws in fp64 from row r's Philox stream (seed, r) — the same stream layout as
    /// <see cref="Sampler"/>, so results do not depend on the batch's other rows or the thread count.
    /// Only <see cref="SamplingOptions.MaxNewTokens"/> and <see cref="SamplingOptions.EndOfText"/> are used;
    /// temperature must be 1 and there is no truncation (anything else would not be the tilted model).
    /// </summary>
    public static Continuation[] Sample(Gpt backbone, ReadOnlySpan<float> tilt, IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed,
                                        HeadAdapter adapter = default)
    {
        options.Validate();
        if (options.Temperature != 1f || options.TopK != 0 || options.TopP < 1f)
            throw new ArgumentException("exact sampling from a tilted model takes temperature 1 and no top-k/top-p truncation");
        var cfg = backbone.Config;
        if (tilt.Length != cfg.VocabSize) throw new ArgumentException($"the tilt needs one value per token ({cfg.VocabSize}), got {tilt.Length}");
        int rank = adapter.Rank, c = cfg.Channels;
        if (rank > 0 && (adapter.A.Length != c * rank || adapter.B.Length != cfg.VocabSize * rank))
            throw new ArgumentException($"a rank-{rank} head adapter needs A [{c} × {rank}] and B [{cfg.VocabSize} × {rank}], got {adapter.A.Length} and {adapter.B.Length} floats");
        var hA = new double[rank];
        var extra = new double[rank > 0 ? cfg.VocabSize : 0];
        int rows = prompts.Count;
        if (rows == 0) return [];
        int longest = 0;
        for (int r = 0; r < rows; r++)
        {
            if (prompts[r].Length == 0) throw new ArgumentException($"prompt {r} is empty: it needs at least one token");
            longest = Math.Max(longest, prompts[r].Length);
        }
        if (longest > cfg.MaxSequenceLength) throw new ArgumentException($"a prompt of {longest} tokens does not fit the model's context of {cfg.MaxSequenceLength}");
        int total = Math.Min(cfg.MaxSequenceLength, longest + options.MaxNewTokens);
        var decoder = new GptDecoder(backbone, rows, total);
        var rngs = new PhiloxStream[rows];
        var generated = new List<int>[rows];
        var logProbs = new List<float>[rows];
        var done = new bool[rows];
        var feed = new int[rows];
        var weights = new double[cfg.VocabSize];
        for (int r = 0; r < rows; r++)
        {
            rngs[r] = new PhiloxStream(seed, (ulong)(options.FirstStream + r));
            generated[r] = [];
            logProbs[r] = [];
            feed[r] = prompts[r][0];
        }
        int vocab = cfg.VocabSize;
        for (int t = 0; t < total; t++)
        {
            decoder.Step(feed);
            bool active = false;
            for (int r = 0; r < rows; r++)
            {
                if (t + 1 < prompts[r].Length) { feed[r] = prompts[r][t + 1]; active = true; continue; }
                if (done[r] || generated[r].Count >= options.MaxNewTokens) { done[r] = true; continue; }
                var logits = decoder.Logits.AsSpan(r * vocab, vocab);
                if (rank > 0)
                {
                    // extra_v = Σ_k (h·A)_k B[v, k]
                    var h = decoder.Features.Slice(r * c, c);
                    for (int k = 0; k < rank; k++)
                    {
                        double sumK = 0;
                        for (int j = 0; j < c; j++) sumK += h[j] * (double)adapter.A[j * rank + k];
                        hA[k] = sumK;
                    }
                    for (int v = 0; v < vocab; v++)
                    {
                        double e = 0;
                        for (int k = 0; k < rank; k++) e += hA[k] * adapter.B[v * rank + k];
                        extra[v] = e;
                    }
                }
                // p_v ∝ exp(s_v − max), s_v = l_v + t_v (+ extra_v); weights holds s, then the unnormalised p
                double max = double.NegativeInfinity;
                for (int v = 0; v < vocab; v++) max = Math.Max(max, weights[v] = logits[v] + (double)tilt[v] + (rank > 0 ? extra[v] : 0));
                double sum = 0;
                for (int v = 0; v < vocab; v++) sum += weights[v] = Math.Exp(weights[v] - max);
                double target = rngs[r].NextFloat() * sum, acc = 0;
                int token = vocab - 1;
                for (int v = 0; v < vocab; v++)
                {
                    acc += weights[v];
                    if (acc > target) { token = v; break; }
                }
                generated[r].Add(token);
                double shifted = logits[token] + (double)tilt[token] + (rank > 0 ? extra[token] : 0);
                logProbs[r].Add((float)(shifted - max - Math.Log(sum)));
                feed[r] = token;
                if (token == options.EndOfText || generated[r].Count >= options.MaxNewTokens) done[r] = true;
                else active = true;
            }
            if (!active) break;
        }
        var result = new Continuation[rows];
        for (int r = 0; r < rows; r++)
        {
            var tokens = generated[r].ToArray();
            result[r] = new Continuation(tokens, logProbs[r].ToArray(), tokens.Length > 0 && tokens[^1] == options.EndOfText);
        }
        return result;
    }
}
