using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// The final hidden states h = ln_f(x) of a frozen GPT backbone at the positions that predict each response token,
/// computed once per distinct (prompt, response) and kept: what a policy or reward head over a frozen backbone
/// (<see cref="TiltPolicy"/>) needs instead of a transformer pass per step.
/// </summary>
/// <remarks>
/// Sequences are keyed by content (prompt and response tokens), so the same pair drawn again, or scored by two
/// policies that share the cache, hits. The backbone must not change while the cache lives (the cache lives in
/// memory only, so it never outlives the weights it was computed from). Every entry is C floats per response token
/// (C = channels): 2¹⁶ pairs of two 16-token responses at C = 128 take 1 GiB.
/// Two kinds of entries: <b>pinned</b> ones (<see cref="Add"/>: a dataset, evaluation samples) stay for the cache's life;
/// any other sequence scored (an on-policy rollout, seen a few times and then never again) goes to a bounded first-in,
/// first-out pool of <see cref="RecentFloats"/> floats, so memory does not grow with the number of steps. Missing sequences are computed <see cref="ChunkSequences"/> at a time through
/// <see cref="Gpt.ForwardFeatures"/>, in the order given, so entries are the same for any batch composition
/// (packing puts each sequence in its own segment; attention never crosses segments).
/// </remarks>
public sealed class FrozenFeatureCache
{
    /// <summary>Sequences per backbone forward when filling the cache.</summary>
    public const int ChunkSequences = 64;

    private readonly Dictionary<PromptResponse, float[]> entries = new(SequenceContent.Comparer);
    private readonly Queue<PromptResponse> recent = new();
    private long floats, recentFloats;

    /// <param name="backbone">the frozen GPT (never written)</param>
    /// <param name="maxFloats">the most floats pinned entries may hold; past it, further sequences are computed and not kept</param>
    /// <param name="recentFloats">the size of the first-in, first-out pool of sequences that are not pinned (default 2²⁴ floats = 64 MiB)</param>
    public FrozenFeatureCache(Gpt backbone, long maxFloats = long.MaxValue, long recentFloats = 1L << 24)
    {
        ArgumentNullException.ThrowIfNull(backbone);
        ArgumentOutOfRangeException.ThrowIfNegative(maxFloats);
        ArgumentOutOfRangeException.ThrowIfNegative(recentFloats);
        Backbone = backbone;
        MaxFloats = maxFloats;
        RecentFloats = recentFloats;
    }

    /// <summary>The frozen backbone (shared; never written).</summary>
    public Gpt Backbone { get; }
    /// <summary>Channels C: floats per response token.</summary>
    public int Channels => Backbone.Config.Channels;
    /// <summary>Largest number of floats pinned entries hold; past it, features are computed for the call and not kept.</summary>
    public long MaxFloats { get; }
    /// <summary>Floats the pool of entries that are not pinned holds at most (oldest out first).</summary>
    public long RecentFloats { get; }
    /// <summary>Distinct sequences held (pinned and recent).</summary>
    public int Count => entries.Count;
    /// <summary>Bytes held by the entries (pinned and recent).</summary>
    public long Bytes => (floats + recentFloats) * sizeof(float);
    /// <summary>Sequences found in the cache / computed by the backbone, over the cache's life.</summary>
    public long Hits { get; private set; }
    public long Misses { get; private set; }

    /// <summary>
    /// Writes the features of every response token of <paramref name="sequences"/> (flattened in order, [tokens × C])
    /// into <paramref name="features"/>, running the backbone on the sequences it has not seen.
    /// </summary>
    public void Gather(IReadOnlyList<PromptResponse> sequences, Span<float> features)
    {
        int c = Channels;
        int tokens = PolicyScores.TokenCount(sequences);
        if (features.Length != tokens * c) throw new ArgumentException($"features must be [tokens × C] = [{tokens} × {c}], got {features.Length}");
        var found = Find(sequences, pin: false);
        int at = 0;
        for (int s = 0; s < sequences.Count; s++)
        {
            found[s].CopyTo(features.Slice(at, found[s].Length));
            at += found[s].Length;
        }
    }

    /// <summary>Each sequence's entry, running the backbone <see cref="ChunkSequences"/> at a time on those not held.</summary>
    private float[][] Find(IReadOnlyList<PromptResponse> sequences, bool pin)
    {
        var found = new float[sequences.Count][];
        var missing = new List<int>();
        for (int s = 0; s < sequences.Count; s++)
        {
            if (entries.TryGetValue(sequences[s], out var entry)) { found[s] = entry; Hits++; }
            else missing.Add(s);
        }
        for (int start = 0; start < missing.Count; start += ChunkSequences)
        {
            var chunk = missing.GetRange(start, Math.Min(ChunkSequences, missing.Count - start));
            var computed = Compute([.. chunk.Select(s => sequences[s])]);
            for (int i = 0; i < chunk.Count; i++)
            {
                int s = chunk[i];
                Misses++;
                found[s] = computed[i];
                Keep(sequences[s], computed[i], pin);
            }
        }
        return found;
    }

    /// <summary>
    /// Pins <paramref name="sequences"/> (a dataset, evaluation samples): computes those not held, and keeps them for the
    /// cache's life (up to <see cref="MaxFloats"/>). A sequence already in the recent pool is pinned where it is.
    /// </summary>
    public void Add(IReadOnlyList<PromptResponse> sequences)
    {
        foreach (var sequence in sequences)
            if (entries.TryGetValue(sequence, out var entry) && !pinned.Contains(sequence) && floats + entry.Length <= MaxFloats)
            {
                pinned.Add(sequence);
                floats += entry.Length;
                recentFloats -= entry.Length;   // its slot in the recent queue is skipped when it comes up
            }
        Find(sequences, pin: true);
    }

    private readonly HashSet<PromptResponse> pinned = new(SequenceContent.Comparer);

    /// <summary>Drops every entry, pinned or not (a dataset that is done with); the counters keep counting.</summary>
    public void Clear()
    {
        entries.Clear();
        pinned.Clear();
        recent.Clear();
        floats = recentFloats = 0;
    }

    private void Keep(PromptResponse sequence, float[] entry, bool pin)
    {
        if (entries.ContainsKey(sequence)) return;   // the same sequence twice in one call
        if (pin)
        {
            if (floats + entry.Length > MaxFloats) return;
            entries.Add(sequence, entry);
            pinned.Add(sequence);
            floats += entry.Length;
            return;
        }
        if (entry.Length > RecentFloats) return;
        while (recentFloats + entry.Length > RecentFloats && recent.TryDequeue(out var oldest))
            if (!pinned.Contains(oldest) && entries.Remove(oldest, out var evicted)) recentFloats -= evicted.Length;
        entries.Add(sequence, entry);
        recent.Enqueue(sequence);
        recentFloats += entry.Length;
    }

    /// <summary>h at the positions that predict each response token, one array [|response| × C] per sequence.</summary>
    private float[][] Compute(IReadOnlyList<PromptResponse> sequences)
    {
        int c = Channels;
        int tokens = PolicyScores.TokenCount(sequences);
        var result = new float[sequences.Count][];
        if (tokens == 0)
        {
            for (int s = 0; s < result.Length; s++) result[s] = [];
            return result;
        }
        var tokenPosition = new int[tokens];
        var batch = GptPolicy.PackSequences(sequences, Backbone.Config.MaxSequenceLength, null, includeLastResponseToken: false, tokenPosition, default);
        var hidden = Backbone.ForwardFeatures(batch);
        int at = 0;
        for (int s = 0; s < sequences.Count; s++)
        {
            int len = sequences[s].Response.Length;
            var rows = new float[len * c];
            for (int i = 0; i < len; i++) hidden.Slice(tokenPosition[at + i] * c, c).CopyTo(rows.AsSpan(i * c, c));
            result[s] = rows;
            at += len;
        }
        return result;
    }
}

/// <summary>Equality of (prompt, response) by the tokens they hold, not by the arrays' identity.</summary>
internal sealed class SequenceContent : IEqualityComparer<PromptResponse>
{
    public static SequenceContent Comparer { get; } = new();

    public bool Equals(PromptResponse x, PromptResponse y) =>
        x.Prompt.AsSpan().SequenceEqual(y.Prompt) && x.Response.AsSpan().SequenceEqual(y.Response);

    public int GetHashCode(PromptResponse sequence)
    {
        var hash = new HashCode();
        hash.Add(sequence.Prompt.Length);
        foreach (int t in sequence.Prompt) hash.Add(t);
        hash.Add(sequence.Response.Length);
        foreach (int t in sequence.Response) hash.Add(t);
        return hash.ToHashCode();
    }
}
