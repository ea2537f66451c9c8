using System.Diagnostics;
using DistAlign.Engine.Random;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Benchmarks;

/// <summary>What <see cref="DecodeBenchmark.Run"/> measured.</summary>
public sealed record DecodeMeasurement(GptConfig Config, int Rows, int Length, double CachedMilliseconds, double RecomputeMilliseconds, double MaxLogitDifference,
                                       double CachedLastStepsMilliseconds, double RecomputeLastStepsMilliseconds)
{
    /// <summary>
    /// Per new token at full context: the mean of the last 8 cached steps (positions L−8 … L−1) against the mean
    /// of the last 8 full forwards (prefixes of L−7 … L tokens).
    /// </summary>
    public double SpeedupAtFullContext => RecomputeLastStepsMilliseconds / CachedLastStepsMilliseconds;

    /// <summary>Generated tokens per second with the KV cache (all rows).</summary>
    public double CachedTokensPerSecond => Rows * Length / (CachedMilliseconds / 1000);
    public double RecomputeTokensPerSecond => Rows * Length / (RecomputeMilliseconds / 1000);
    /// <summary>How many times faster per token the cached decode is.</summary>
    public double Speedup => RecomputeMilliseconds / CachedMilliseconds;
}

/// <summary>
/// Decoding L positions for B rows two ways: the KV-cache decoder (one position per
/// step) and re-running the full forward over the whole prefix for every new position, as a decoder without a
/// cache must. Both score the same token sequence, and the logits of the last position are compared.
/// </summary>
public static class DecodeBenchmark
{
    public static DecodeMeasurement Run(GptConfig config, int rows, int length, ulong seed = 1)
    {
        if (length > config.MaxSequenceLength) throw new ArgumentException($"length {length} exceeds the context of {config.MaxSequenceLength}");
        using var model = new Gpt(config);
        model.InitializeGpt2(seed);
        var rng = new PhiloxStream(seed, 5);
        var tokens = new int[rows * length];
        for (int i = 0; i < tokens.Length; i++) tokens[i] = (int)(rng.NextUInt() % (uint)config.VocabSize);

        var decoder = new GptDecoder(model, rows, length);
        var feed = new int[rows];
        int tail = Math.Min(8, length);
        var watch = Stopwatch.StartNew();
        double cachedTail = 0;
        for (int t = 0; t < length; t++)
        {
            for (int r = 0; r < rows; r++) feed[r] = tokens[r * length + t];
            long start = Stopwatch.GetTimestamp();
            decoder.Step(feed);
            if (t >= length - tail) cachedTail += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        double cached = watch.Elapsed.TotalMilliseconds;

        // Without a cache: for every position t, a full forward over the prefix 0…t (log-prob of every row's
        // last token under one target, which costs the same as reading the logits).
        watch.Restart();
        float[] lastLogProbs = [];
        double recomputeTail = 0;
        for (int t = 0; t < length; t++)
        {
            long start = Stopwatch.GetTimestamp();
            var batch = new GptBatch(rows, t + 1);
            for (int r = 0; r < rows; r++)
                for (int s = 0; s <= t; s++) batch.Tokens[r * (t + 1) + s] = tokens[r * length + s];
            for (int r = 0; r < rows; r++) batch.Targets[r * (t + 1) + t] = 0;
            lastLogProbs = new float[batch.TokenCount];
            model.Forward(batch, lastLogProbs);
            if (t >= length - tail) recomputeTail += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        double recompute = watch.Elapsed.TotalMilliseconds;

        // Same distribution at the last position: compare ln softmax(logits)[0] from both paths.
        double worst = 0;
        for (int r = 0; r < rows; r++)
        {
            float cachedLogProb = Sampler.LogSoftmaxAt(decoder.Logits.AsSpan(r * config.VocabSize, config.VocabSize), 0);
            worst = Math.Max(worst, Math.Abs(cachedLogProb - lastLogProbs[r * length + length - 1]));
        }
        return new DecodeMeasurement(config, rows, length, cached, recompute, worst, cachedTail / tail, recomputeTail / tail);
    }
}
