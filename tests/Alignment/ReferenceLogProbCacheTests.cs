using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment;

/// <summary>
/// The persisted reference log-prob cache: a second call hits and returns the same bits without scoring; a change of
/// model or data misses; a bad file is recomputed with a warning, never an exception.
/// </summary>
public class ReferenceLogProbCacheTests
{
    /// <summary>Forwards to a policy and counts how often it is asked to score.</summary>
    private sealed class CountingPolicy(IPolicy inner) : IPolicy
    {
        public int ScoreCalls { get; private set; }

        public void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default)
        {
            ScoreCalls++;
            inner.Score(batch, tokenLogProbs, tokenEntropies);
        }

        public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default) => inner.Backward(dTokenLogProbs, dTokenEntropies);
        public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) => inner.Sample(prompts, options, seed);
        public void ZeroGradients() => inner.ZeroGradients();
        public double ClipGradients(float maxNorm) => inner.ClipGradients(maxNorm);
        public void OptimizerStep(int step, float learningRate) => inner.OptimizerStep(step, learningRate);
        public IPolicy Snapshot() => inner.Snapshot();
        public void CopyWeightsFrom(IPolicy other) => inner.CopyWeightsFrom(other);
        public void Dispose() => inner.Dispose();
    }

    private string directory = null!;

    [SetUp]
    public void CreateDirectory()
    {
        directory = Path.Combine(Path.GetTempPath(), "distalign-refcache-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
    }

    [TearDown]
    public void RemoveDirectory()
    {
        if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true);
    }

    private static TabularPolicy Table()
    {
        var policy = new TabularPolicy(3, 5);
        var noise = Numerics.RandomFloats(policy.Logits.Length, 11);
        noise.CopyTo(policy.Logits);
        return policy;
    }

    private static List<PreferencePair> TablePairs() =>
    [
        new([0], [1], [2]), new([1], [4], [0]), new([2], [3], [3]), new([0], [0], [4]), new([2], [2], [1]),
    ];

    private static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 8, VocabSize: 17, MaxSequenceLength: 12);

    private static GptPolicy Gpt()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(5);
        var p = model.Parameters;
        var noise = Numerics.RandomFloats(p.Length, 6, 0.3);
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        return new GptPolicy(model, new AdamWSettings(WeightDecay: 0), ownsModel: true);
    }

    private static List<PreferencePair> GptPairs() =>
    [
        new([16, 3], [5, 6, 7], [8, 9]),
        new([16, 4, 4], [1, 2], [3]),
        new([16], [10, 11], [12, 13, 14]),
        new([16, 1, 2, 3, 4, 5], [11, 12, 13], [2]),
    ];

    private static bool SameBits(float[] a, float[] b) =>
        a.Length == b.Length && a.Zip(b).All(t => BitConverter.SingleToInt32Bits(t.First) == BitConverter.SingleToInt32Bits(t.Second));

    [Test]
    public void SecondCallHitsWithTheSameBitsWithoutScoring()
    {
        var log = new List<string>();
        var cache = new ReferenceLogProbCache(directory, log.Add);
        using var policy = new CountingPolicy(Table());
        var pairs = TablePairs();
        string model = ModelHash.Of(Table()), data = DatasetHash.Of(pairs);

        var first = cache.GetOrCompute(policy, model, pairs, data, out bool hit1);
        Assert.That(hit1, Is.False);
        Assert.That(policy.ScoreCalls, Is.EqualTo(1));
        Assert.That(File.Exists(cache.PathFor(model, data)));
        Assert.That(Path.GetFileName(cache.PathFor(model, data)), Is.EqualTo($"refs-{model[..12]}-{data[..12]}.safetensors"));

        // A fresh cache object on the same folder: the entry is on disk, not in memory.
        var second = new ReferenceLogProbCache(directory, log.Add).GetOrCompute(policy, model, pairs, data, out bool hit2);
        Assert.That(hit2, Is.True);
        Assert.That(policy.ScoreCalls, Is.EqualTo(1), "a hit must not call the policy");
        Assert.That(SameBits(first, second), "a hit returns the stored bits");
        Assert.That(log, Is.Empty);
    }

    [Test]
    public void ValuesEqualReferenceLogProbsExactlyOnTheGpt()
    {
        using var policy = Gpt();
        var pairs = GptPairs();
        var expected = OfflinePreferenceObjective.ReferenceLogProbs(policy, pairs);
        var cache = new ReferenceLogProbCache(directory);
        var miss = cache.GetOrCompute(policy, pairs, out bool hit1);
        var hit = cache.GetOrCompute(policy, pairs, out bool hit2);
        Assert.That((hit1, hit2), Is.EqualTo((false, true)));
        Assert.That(miss, Has.Length.EqualTo(2 * pairs.Count));
        Assert.That(SameBits(miss, expected), "computed: the same kernel as ReferenceLogProbs");
        Assert.That(SameBits(hit, expected), "loaded: bit-identical");
    }

    [Test]
    public void CachedReferenceGivesLn2AtStepZeroForDpo()
    {
        using var policy = Gpt();
        using var reference = policy.Snapshot();
        var pairs = GptPairs();
        var cache = new ReferenceLogProbCache(directory);
        cache.GetOrCompute(reference, pairs, out _);
        var refLogps = cache.GetOrCompute(reference, pairs, out bool hit);
        Assert.That(hit);
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.5));
        policy.ZeroGradients();
        var m = objective.Accumulate(policy, pairs, refLogps, null, 1);
        Assert.That((float)m.Pairwise.Loss, Is.EqualTo((float)Math.Log(2)));
    }

    [Test]
    public void ChangingOneWeightMisses()
    {
        var cache = new ReferenceLogProbCache(directory);
        using var gpt = Gpt();
        var pairs = GptPairs();
        string before = ModelHash.Of(gpt.Model);
        cache.GetOrCompute(gpt, pairs, out _);
        gpt.Model.Parameters[123] = MathF.BitIncrement(gpt.Model.Parameters[123]);
        string after = ModelHash.Of(gpt.Model);
        Assert.That(after, Is.Not.EqualTo(before), "one ulp of one weight changes the model hash");
        var changed = cache.GetOrCompute(gpt, pairs, out bool hit);
        Assert.That(hit, Is.False);
        Assert.That(SameBits(changed, OfflinePreferenceObjective.ReferenceLogProbs(gpt, pairs)));
        Assert.That(Directory.GetFiles(directory, "refs-*.safetensors"), Has.Length.EqualTo(2));

        using var table = Table();
        var tablePairs = TablePairs();
        cache.GetOrCompute(table, tablePairs, out _);
        table.Logits[7] += 1e-3f;
        cache.GetOrCompute(table, tablePairs, out bool tableHit);
        Assert.That(tableHit, Is.False);
    }

    [Test]
    public void ChangingOneTokenMisses()
    {
        var cache = new ReferenceLogProbCache(directory);
        using var table = Table();
        var pairs = TablePairs();
        cache.GetOrCompute(table, pairs, out _);
        var edited = TablePairs();
        edited[3] = edited[3] with { Rejected = [3] };
        Assert.That(DatasetHash.Of(edited), Is.Not.EqualTo(DatasetHash.Of(pairs)));
        var values = cache.GetOrCompute(table, edited, out bool hit);
        Assert.That(hit, Is.False);
        Assert.That(SameBits(values, OfflinePreferenceObjective.ReferenceLogProbs(table, edited)));
        cache.GetOrCompute(table, pairs, out bool original);
        Assert.That(original, Is.True, "the first entry is still there");
    }

    [TestCase("truncate")]
    [TestCase("garbage")]
    [TestCase("flip-value")]
    [TestCase("empty")]
    public void ABadFileIsRecomputedAndLogged(string damage)
    {
        var log = new List<string>();
        var cache = new ReferenceLogProbCache(directory, log.Add);
        using var policy = new CountingPolicy(Table());
        var pairs = TablePairs();
        string model = ModelHash.Of(Table()), data = DatasetHash.Of(pairs);
        var good = cache.GetOrCompute(policy, model, pairs, data, out _);
        string path = Directory.GetFiles(directory).Single();
        byte[] bytes = File.ReadAllBytes(path);
        switch (damage)
        {
            case "truncate": File.WriteAllBytes(path, bytes[..^5]); break;
            case "garbage": File.WriteAllBytes(path, [.. Enumerable.Range(0, 64).Select(i => (byte)(i * 37))]); break;
            case "flip-value": bytes[^3] ^= 0x10; File.WriteAllBytes(path, bytes); break;
            case "empty": File.WriteAllBytes(path, []); break;
        }

        var again = cache.GetOrCompute(policy, model, pairs, data, out bool hit);
        Assert.That(hit, Is.False);
        Assert.That(policy.ScoreCalls, Is.EqualTo(2));
        Assert.That(SameBits(again, good));
        Assert.That(log, Has.Count.EqualTo(1));
        Assert.That(log[0], Does.Contain(Path.GetFileName(path)).And.Contain("recomputing"));

        cache.GetOrCompute(policy, model, pairs, data, out bool healed);
        Assert.That(healed, Is.True, "the recomputed entry replaced the bad file");
        Assert.That(log, Has.Count.EqualTo(1));
    }

    [Test]
    public void AnEntryForAnotherKeyUnderTheSameNameIsAMiss()
    {
        // Simulates two keys whose 12-digit prefixes collide: the full hashes in the metadata decide.
        var log = new List<string>();
        var cache = new ReferenceLogProbCache(directory, log.Add);
        using var policy = new CountingPolicy(Table());
        var pairs = TablePairs();
        string model = ModelHash.Of(Table()), data = DatasetHash.Of(pairs);
        string otherData = data[..12] + new string('0', data.Length - 12);
        cache.GetOrCompute(policy, model, pairs, otherData, out _);
        Assert.That(cache.PathFor(model, otherData), Is.EqualTo(cache.PathFor(model, data)));

        cache.GetOrCompute(policy, model, pairs, data, out bool hit);
        Assert.That(hit, Is.False);
        Assert.That(log.Single(), Does.Contain("data_hash"));
    }

    [Test]
    public void AWrongLengthIsAMiss()
    {
        var log = new List<string>();
        var cache = new ReferenceLogProbCache(directory, log.Add);
        using var policy = Table();
        var pairs = TablePairs();
        string model = ModelHash.Of(policy), data = DatasetHash.Of(pairs);
        // A well-formed file with the right key but 2·pairs − 2 values (and a pair count that agrees with them).
        cache.GetOrCompute(policy, model, pairs.Take(pairs.Count - 1).ToList(), data, out _);
        cache.GetOrCompute(policy, model, pairs, data, out bool hit);
        Assert.That(hit, Is.False);
        Assert.That(log.Single(), Does.Contain("pairs"));
        var values = cache.GetOrCompute(policy, model, pairs, data, out bool now);
        Assert.That(now, Is.True);
        Assert.That(values, Has.Length.EqualTo(2 * pairs.Count));
    }

    [Test]
    public void AnUnwritableDirectoryOnlyWarns()
    {
        string notADirectory = Path.Combine(directory, "file");
        File.WriteAllText(notADirectory, "x");
        var log = new List<string>();
        var cache = new ReferenceLogProbCache(notADirectory, log.Add);
        using var policy = Table();
        var values = cache.GetOrCompute(policy, TablePairs(), out bool hit);
        Assert.That(hit, Is.False);
        Assert.That(SameBits(values, OfflinePreferenceObjective.ReferenceLogProbs(policy, TablePairs())));
        Assert.That(log.Single(), Does.Contain("could not write"));
    }

    [Test]
    public void HashesMustBeHex()
    {
        var cache = new ReferenceLogProbCache(directory);
        using var policy = Table();
        string good = new('a', 64);
        Assert.Throws<ArgumentException>(() => cache.GetOrCompute(policy, "../../etc", TablePairs(), good, out _));
        Assert.Throws<ArgumentException>(() => cache.GetOrCompute(policy, good, TablePairs(), "abc", out _));
        Assert.Throws<ArgumentException>(() => cache.GetOrCompute(policy, good.ToUpperInvariant(), TablePairs(), good, out _));
    }

    [Test]
    public void ModelHashesAreStableAndSensitive()
    {
        using var gpt = Gpt();
        using var copy = (GptPolicy)gpt.Snapshot();
        Assert.That(ModelHash.Of(copy.Model), Is.EqualTo(ModelHash.Of(gpt.Model)), "same config and weights");
        Assert.That(ModelHash.Of((IPolicy)gpt), Is.EqualTo(ModelHash.Of(gpt.Model)));
        Assert.That(ModelHash.Of(gpt.Model), Has.Length.EqualTo(64));

        using var zeros = new Gpt(Config);
        using var wider = new Gpt(Config with { MaxSequenceLength = 13 });
        zeros.Parameters.Clear();
        wider.Parameters.Clear();
        Assert.That(ModelHash.Of(wider), Is.Not.EqualTo(ModelHash.Of(zeros)), "the config counts");

        using var a = new TabularPolicy(2, 6);
        using var b = new TabularPolicy(3, 4);
        Assert.That(ModelHash.Of(a), Is.Not.EqualTo(ModelHash.Of(b)), "same 12 zeros, other shape");
        Assert.That(ModelHash.Of((IPolicy)a), Is.EqualTo(ModelHash.Of(a)));
        using var other = new CountingPolicy(new TabularPolicy(1, 1));
        Assert.Throws<NotSupportedException>(() => ModelHash.Of(other));
    }

    [Test]
    public void PairHashMatchesTheTokenizedHashAndIsOrderAndBoundarySensitive()
    {
        var pairs = new List<PreferencePair> { new([1, 2], [3], [4, 5]), new([6], [7, 8], [9]) };
        var tokenized = pairs.Select((p, i) => new TokenizedPreference(p.Prompt, p.Chosen, p.Rejected, i + 1)).ToList();
        string hash = DatasetHash.Of(pairs);
        Assert.That(hash, Is.EqualTo(DatasetHash.Of(tokenized)), "the same ids hash alike in either form");
        Assert.That(DatasetHash.Of([pairs[1], pairs[0]]), Is.Not.EqualTo(hash), "order matters");
        Assert.That(DatasetHash.Of([new PreferencePair([1], [2, 3], [4, 5]), pairs[1]]), Is.Not.EqualTo(hash), "a token moved between prompt and response");
        Assert.That(DatasetHash.Of([new PreferencePair([1, 2], [3, 4], [5]), pairs[1]]), Is.Not.EqualTo(hash), "a token moved between chosen and rejected");
    }
}
