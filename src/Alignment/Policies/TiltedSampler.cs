using DistAlign.Engine.Random;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// Exact sampling from a GPT whose next-token logits are shifted by a fixed per-token offset t:
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
    public static Continuation[] Sample(Gpt backbone, ReadOnlySpan<float> tilt, IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed)
    {
        options.Validate();
        if (options.Temperature != 1f || options.TopK != 0 || options.TopP < 1f)
            throw new ArgumentException("exact sampling from a tilted model takes temperature 1 and no top-k/top-p truncation");
        var cfg = backbone.Config;
        if (tilt.Length != cfg.VocabSize) throw new ArgumentException($"the tilt needs one value per token ({cfg.VocabSize}), got {tilt.Length}");
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
            rngs[r] = new PhiloxStream(seed, (ulong)r);
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
                // p_v ∝ exp(l_v + t_v − max)
                double max = double.NegativeInfinity;
                for (int v = 0; v < vocab; v++) max = Math.Max(max, logits[v] + (double)tilt[v]);
                double sum = 0;
                for (int v = 0; v < vocab; v++) sum += weights[v] = Math.Exp(logits[v] + (double)tilt[v] - max);
                double target = rngs[r].NextFloat() * sum, acc = 0;
                int token = vocab - 1;
                for (int v = 0; v < vocab; v++)
                {
                    acc += weights[v];
                    if (acc > target) { token = v; break; }
                }
                generated[r].Add(token);
                logProbs[r].Add((float)(logits[token] + (double)tilt[token] - max - Math.Log(sum)));
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
