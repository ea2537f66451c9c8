using DistAlign.Engine.Random;

namespace DistAlign.Transformer.Model;

/// <summary>How to draw continuations.</summary>
/// <param name="MaxNewTokens">tokens to generate per prompt at most</param>
/// <param name="Temperature">logits are divided by it; 0 means greedy (arg-max)</param>
/// <param name="TopK">keep only the k most likely tokens (0 = all)</param>
/// <param name="TopP">keep the smallest set of most likely tokens whose mass reaches p (1 = all)</param>
/// <param name="EndOfText">stop a row when it samples this id (−1: never stop early)</param>
public sealed record SamplingOptions(int MaxNewTokens, float Temperature = 1f, int TopK = 0, float TopP = 1f, int EndOfText = -1)
{
    /// <summary>
    /// Row r of a batch draws from the Philox stream (seed, FirstStream + r). A data-parallel rank that samples rows
    /// [s, s + n) of a batch sets s, so that it draws what one process sampling the whole batch draws. Not part of a run's identity.
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public int FirstStream { get; init; }

    public SamplingOptions Validate()
    {
        if (MaxNewTokens < 0) throw new ArgumentException($"max new tokens must be ≥ 0 (got {MaxNewTokens})");
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new ArgumentException($"temperature must be a finite number ≥ 0 (got {Temperature})");
        if (TopK < 0) throw new ArgumentException($"top-k must be ≥ 0 (got {TopK})");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1] (got {TopP})");
        return this;
    }
}

/// <summary>
/// One sampled continuation: its tokens and, for each, ln π(token | prefix) under the model's own
/// distribution (temperature 1, no truncation) — what the on-policy objectives need — and whether it
/// ended with the end-of-text token.
/// </summary>
public sealed record Continuation(int[] Tokens, float[] LogProbs, bool Ended);

/// <summary>
/// Batched sampling with a KV cache. Rows advance in lockstep: while a row is still inside its prompt
/// the prompt's next token is fed (and nothing is drawn); after that its samples are fed back. Row r draws
/// its uniforms from the Philox stream (seed, r), so results do not depend on the thread count or on
/// which other rows are in the batch.
/// </summary>
public static class Sampler
{
    /// <summary>Samples on <paramref name="engine"/>'s KV-cache decoder (<see cref="IGptEngine.CreateDecoder"/>): the CPU's or a device's.</summary>
    public static Continuation[] Generate(IGptEngine engine, IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) =>
        GenerateOn(engine.CreateDecoder, engine.Config.VocabSize, engine.Config.MaxSequenceLength, prompts, options, seed);

    /// <summary>
    /// Samples on the decoder <paramref name="createDecoder"/>(rows, maxLength) returns, for a model of vocabulary
    /// <paramref name="vocabSize"/> and context <paramref name="contextLength"/>. It is called once, with one row per prompt
    /// and maxLength = min(context, longest prompt + max new tokens); the sampler owns what it returns (disposed at the end
    /// when it is <see cref="IDisposable"/>). The draws depend only on the logits: two decoders that give the same logits give
    /// the same continuations. (Named apart from <c>Generate</c> so that existing <c>cref</c>s to it stay unambiguous.)
    /// </summary>
    public static Continuation[] GenerateOn(Func<int, int, IIncrementalDecoder> createDecoder, int vocabSize, int contextLength,
                                            IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(createDecoder);
        options.Validate();
        int rows = prompts.Count;
        if (rows == 0) return [];
        int longestPrompt = 0;
        for (int r = 0; r < rows; r++)
        {
            if (prompts[r].Length == 0) throw new ArgumentException($"prompt {r} is empty: it needs at least one token (e.g. <|endoftext|>)");
            foreach (int id in prompts[r])
                if ((uint)id >= (uint)vocabSize)
                    throw new ArgumentException($"prompt {r}: token id {id} is outside the vocabulary [0, {vocabSize})");
            longestPrompt = Math.Max(longestPrompt, prompts[r].Length);
        }
        int totalLength = Math.Min(contextLength, longestPrompt + options.MaxNewTokens);
        if (longestPrompt > contextLength)
            throw new ArgumentException($"a prompt of {longestPrompt} tokens does not fit the model's context of {contextLength}");

        var decoder = createDecoder(rows, totalLength);
        try
        {
            if (decoder.Rows != rows || decoder.MaxLength < totalLength)
                throw new ArgumentException($"the decoder factory returned a decoder of {decoder.Rows} rows × {decoder.MaxLength} positions; {rows} × {totalLength} were asked for");
            decoder.Reset();
            return Run(decoder, vocabSize, prompts, options, seed, totalLength);
        }
        finally
        {
            (decoder as IDisposable)?.Dispose();
        }
    }

    private static Continuation[] Run(IIncrementalDecoder decoder, int v, IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed, int totalLength)
    {
        int rows = prompts.Count;
        var rngs = new PhiloxStream[rows];
        var generated = new List<int>[rows];
        var logProbs = new List<float>[rows];
        var done = new bool[rows];
        var feed = new int[rows];
        var scratch = new SamplingScratch(v);
        for (int r = 0; r < rows; r++)
        {
            rngs[r] = new PhiloxStream(seed, (ulong)(options.FirstStream + r));
            generated[r] = [];
            logProbs[r] = [];
            feed[r] = prompts[r][0];
        }

        for (int t = 0; t < totalLength; t++)
        {
            decoder.Step(feed);
            bool anyActive = false;
            for (int r = 0; r < rows; r++)
            {
                if (t + 1 < prompts[r].Length) { feed[r] = prompts[r][t + 1]; anyActive = true; continue; }
                if (done[r] || generated[r].Count >= options.MaxNewTokens) { done[r] = true; continue; }
                var logits = decoder.Logits.Slice(r * v, v);
                int token = Draw(logits, options, rngs[r], scratch);
                generated[r].Add(token);
                logProbs[r].Add(LogSoftmaxAt(logits, token));
                feed[r] = token;
                if (token == options.EndOfText || generated[r].Count >= options.MaxNewTokens) done[r] = true;
                else anyActive = true;
            }
            if (!anyActive) break;
        }
        var result = new Continuation[rows];
        for (int r = 0; r < rows; r++)
        {
            var tokens = generated[r].ToArray();
            result[r] = new Continuation(tokens, logProbs[r].ToArray(), tokens.Length > 0 && tokens[^1] == options.EndOfText);
        }
        return result;
    }

    /// <summary>ln softmax(logits)[token], computed stably.</summary>
    public static float LogSoftmaxAt(ReadOnlySpan<float> logits, int token)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float l in logits) sum += Math.Exp(l - max);
        return (float)(logits[token] - max - Math.Log(sum));
    }

    private sealed class SamplingScratch(int vocab)
    {
        public readonly float[] Probabilities = new float[vocab];
        public readonly int[] Order = new int[vocab];
        public readonly float[] Keys = new float[vocab];
    }

    private static int Draw(ReadOnlySpan<float> logits, SamplingOptions o, PhiloxStream rng, SamplingScratch s)
    {
        int v = logits.Length;
        if (o.Temperature == 0) return System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);
        // p_i ∝ exp((l_i − max) / T)
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        var p = s.Probabilities;
        for (int i = 0; i < v; i++) p[i] = MathF.Exp((logits[i] - max) / o.Temperature);
        float u = rng.NextFloat();
        var order = s.Order;
        for (int i = 0; i < v; i++) order[i] = i;
        if (o.TopK == 0 && o.TopP >= 1f) return DrawFrom(p, order, u);

        // Most likely first (Array.Sort is deterministic for equal input, so ties resolve the same way every run).
        for (int i = 0; i < v; i++) s.Keys[i] = -p[i];
        Array.Sort(s.Keys, order);
        int keep = o.TopK == 0 ? v : Math.Min(o.TopK, v);
        if (o.TopP < 1f)
        {
            double total = 0;
            for (int i = 0; i < keep; i++) total += p[order[i]];
            double mass = 0;
            for (int i = 0; i < keep; i++)
            {
                mass += p[order[i]];
                if (mass >= o.TopP * total) { keep = i + 1; break; }
            }
        }
        return DrawFrom(p, order.AsSpan(0, keep), u);
    }

    /// <summary>Inverse-CDF draw among <paramref name="candidates"/> with unnormalised weights.</summary>
    private static int DrawFrom(float[] weights, ReadOnlySpan<int> candidates, float u)
    {
        double total = 0;
        foreach (int i in candidates) total += weights[i];
        double target = u * total, acc = 0;
        foreach (int i in candidates)
        {
            acc += weights[i];
            if (acc > target) return i;
        }
        return candidates[^1];
    }
}
