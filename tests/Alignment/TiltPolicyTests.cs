using DistAlign.Alignment.Experiments;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Alignment.Experiments;
using DistAlign.Tests.Reference;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment;

/// <summary>
/// π_b ∝ π0·exp(b) over a frozen backbone: scores and entropies against an fp64 GPT, the gradient of b against finite
/// differences of that fp64 reference, b = w/τ is the known target exactly, b = 0 is π0, the feature cache, and
/// preference MLE in this class moving π_b toward π*.
/// </summary>
public class TiltPolicyTests
{
    private static readonly GptConfig Tiny = KnownTargetModelTests.Tiny;

    // Odd lengths and a length-1 response (an empty response is refused, as GptPolicy refuses it).
    private static readonly List<PromptResponse> Batch =
    [
        new([16, 3, 4], [5, 6]),
        new([16], [7, 8, 9, 10, 2]),
        new([16, 1, 2, 3, 4, 5], [11, 12, 13]),
        new([16, 2], [1]),
    ];

    private static float[] RandomOffset(int seed) => Numerics.RandomFloats(Tiny.VocabSize, seed, 1.0);

    private static ReferenceGpt ReferenceOf(Gpt model)
    {
        var reference = new ReferenceGpt(Tiny.Layers, Tiny.Heads, Tiny.Channels, Tiny.VocabSize, Tiny.MaxSequenceLength);
        foreach (var t in model.Layout.Tensors)
        {
            var dst = reference.Parameters[t.Name];
            for (int i = 0; i < dst.Length; i++) dst[i] = model.Parameters[(int)t.Offset + i];
        }
        return reference;
    }

    /// <summary>fp64 rows of π0's logits at every response token of the batch (the reference GPT's own forward).</summary>
    private static List<(double[] Logits, int Target)> ReferenceRows(ReferenceGpt reference, IReadOnlyList<PromptResponse> batch)
    {
        var rows = new List<(double[], int)>();
        foreach (var (prompt, response) in batch)
        {
            if (response.Length == 0) continue;
            int[] seq = [.. prompt, .. response];
            int len = seq.Length - 1;
            var logits = reference.Logits(seq[..len], Enumerable.Range(0, len).ToArray(), new int[len], 1, len);
            for (int i = 0; i < response.Length; i++)
            {
                int pos = prompt.Length - 1 + i, v = Tiny.VocabSize;
                rows.Add((logits.AsSpan(pos * v, v).ToArray(), response[i]));
            }
        }
        return rows;
    }

    /// <summary>ln π_b(y_t) and H_t in fp64 from fp64 logits.</summary>
    private static (double LogProb, double Entropy) Tilted(double[] logits, int target, ReadOnlySpan<double> b)
    {
        var z = new double[logits.Length];
        for (int v = 0; v < z.Length; v++) z[v] = logits[v] + b[v];
        double max = z.Max(), lse = max + Math.Log(z.Sum(x => Math.Exp(x - max)));
        double entropy = -z.Sum(x => Math.Exp(x - lse) * (x - lse));
        return (z[target] - lse, entropy);
    }

    [Test]
    public void ScoresAndEntropiesMatchTheFp64Reference()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var offset = RandomOffset(3);
        var policy = new TiltPolicy(new FrozenFeatureCache(model), new AdamWSettings(), offset);
        int tokens = PolicyScores.TokenCount(Batch);
        var lp = new float[tokens];
        var h = new float[tokens];
        policy.Score(Batch, lp, h);
        var rows = ReferenceRows(ReferenceOf(model), Batch);
        var b = offset.Select(x => (double)x).ToArray();
        var expected = rows.Select(r => Tilted(r.Logits, r.Target, b)).ToArray();
        Numerics.AssertClose(lp, [.. expected.Select(e => e.LogProb)], 1e-4, 1e-4, "ln π_b");
        Numerics.AssertClose(h, [.. expected.Select(e => e.Entropy)], 1e-4, 1e-4, "H(π_b)");
    }

    [Test]
    public void GradientOfTheOffsetMatchesFiniteDifferencesOfTheFp64Reference()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var offset = RandomOffset(4);
        var policy = new TiltPolicy(new FrozenFeatureCache(model), new AdamWSettings(), offset);
        int tokens = PolicyScores.TokenCount(Batch);
        var dLogProbs = Numerics.RandomFloats(tokens, 11, 1.0);
        var dEntropies = Numerics.RandomFloats(tokens, 12, 1.0);
        policy.ZeroGradients();
        policy.Score(Batch, new float[tokens], new float[tokens]);
        policy.Backward(dLogProbs, dEntropies);
        var analytic = policy.OffsetGradient.ToArray();

        // L(b) = Σ_t d_t ln π_b(y_t) + e_t H_t, differentiated by central differences in fp64
        var rows = ReferenceRows(ReferenceOf(model), Batch);
        double Loss(double[] b)
        {
            double sum = 0;
            for (int t = 0; t < rows.Count; t++)
            {
                var (logProb, entropy) = Tilted(rows[t].Logits, rows[t].Target, b);
                sum += dLogProbs[t] * logProb + dEntropies[t] * entropy;
            }
            return sum;
        }
        var b0 = offset.Select(x => (double)x).ToArray();
        var numeric = Numerics.FiniteDifferenceGradient(() => Loss(b0), b0, 1e-5);
        double scale = numeric.Max(Math.Abs);
        Numerics.AssertClose(analytic, numeric, 2e-5 * scale, 1e-4, "∂L/∂b");
    }

    /// <summary>fp64 rows of π0's logits and final features at every response token (the reference GPT's own forward).</summary>
    private static List<(double[] Logits, double[] Features, int Target)> ReferenceRowsWithFeatures(ReferenceGpt reference, IReadOnlyList<PromptResponse> batch)
    {
        var rows = new List<(double[], double[], int)>();
        int v = Tiny.VocabSize, c = Tiny.Channels;
        foreach (var (prompt, response) in batch)
        {
            int[] seq = [.. prompt, .. response];
            int len = seq.Length - 1;
            int[] positions = [.. Enumerable.Range(0, len)];
            var logits = reference.Logits(seq[..len], positions, new int[len], 1, len);
            var features = reference.Features(seq[..len], positions, new int[len], 1, len);
            for (int i = 0; i < response.Length; i++)
            {
                int pos = prompt.Length - 1 + i;
                rows.Add((logits.AsSpan(pos * v, v).ToArray(), features.AsSpan(pos * c, c).ToArray(), response[i]));
            }
        }
        return rows;
    }

    /// <summary>ln π(y_t) and H_t in fp64 for θ = [b; A; B]: logits + b + (h·A)·Bᵀ.</summary>
    private static (double LogProb, double Entropy) Adapted(double[] logits, double[] h, int target, double[] theta, int rank)
    {
        int vocab = logits.Length, c = h.Length;
        var hA = new double[rank];
        for (int k = 0; k < rank; k++)
            for (int j = 0; j < c; j++) hA[k] += h[j] * theta[vocab + j * rank + k];
        var shifted = new double[vocab];
        for (int w = 0; w < vocab; w++)
        {
            double extra = 0;
            for (int k = 0; k < rank; k++) extra += hA[k] * theta[vocab + c * rank + w * rank + k];
            shifted[w] = extra;
        }
        return Tilted(logits, target, shifted.Select((x, w) => x + theta[w]).ToArray());
    }

    [Test]
    public void TheHeadAdapterMatchesTheFp64ReferenceAndItsGradientMatchesFiniteDifferences()
    {
        using var model = KnownTargetModelTests.TinyModel();
        const int rank = 3;
        var policy = new TiltPolicy(new FrozenFeatureCache(model), new AdamWSettings(), RandomOffset(5), adapterRank: rank, adapterSeed: 6);
        Assert.That(policy.AdapterB.ToArray(), Is.All.EqualTo(0f), "B starts at 0, so the class starts at π_b");
        Assert.That(policy.AdapterA.ToArray().Count(a => a != 0), Is.EqualTo(Tiny.Channels * rank));
        Numerics.RandomFloats(policy.AdapterB.Length, 7, 0.5).CopyTo(policy.AdapterB);   // every term live

        int tokens = PolicyScores.TokenCount(Batch);
        var lp = new float[tokens];
        var entropy = new float[tokens];
        policy.Score(Batch, lp, entropy);
        var rows = ReferenceRowsWithFeatures(ReferenceOf(model), Batch);
        var theta = policy.Parameters.ToArray().Select(x => (double)x).ToArray();
        var expected = rows.Select(r => Adapted(r.Logits, r.Features, r.Target, theta, rank)).ToArray();
        Numerics.AssertClose(lp, [.. expected.Select(e => e.LogProb)], 1e-4, 1e-4, "ln π");
        Numerics.AssertClose(entropy, [.. expected.Select(e => e.Entropy)], 1e-4, 1e-4, "H(π)");

        var dLogProbs = Numerics.RandomFloats(tokens, 13, 1.0);
        var dEntropies = Numerics.RandomFloats(tokens, 14, 1.0);
        policy.ZeroGradients();
        policy.Score(Batch, new float[tokens], new float[tokens]);
        policy.Backward(dLogProbs, dEntropies);
        var analytic = policy.ParameterGradient.ToArray();
        double Loss(double[] t)
        {
            double sum = 0;
            for (int i = 0; i < rows.Count; i++)
            {
                var (logProb, h) = Adapted(rows[i].Logits, rows[i].Features, rows[i].Target, t, rank);
                sum += dLogProbs[i] * logProb + dEntropies[i] * h;
            }
            return sum;
        }
        var numeric = Numerics.FiniteDifferenceGradient(() => Loss(theta), theta, 1e-5);
        double scale = numeric.Max(Math.Abs);
        Numerics.AssertClose(analytic, numeric, 2e-5 * scale, 1e-4, "∂L/∂θ = [∂L/∂b; ∂L/∂A; ∂L/∂B]");
        Assert.That(analytic.Skip(Tiny.VocabSize).Count(g => g != 0), Is.GreaterThan(0), "the adapter gets a gradient");
    }

    [Test]
    public void TheSamplerDrawsFromTheAdaptedHeadThatScoresThem()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var policy = new TiltPolicy(new FrozenFeatureCache(model), new AdamWSettings(), RandomOffset(8), adapterRank: 2, adapterSeed: 9);
        Numerics.RandomFloats(policy.AdapterB.Length, 10, 2.0).CopyTo(policy.AdapterB);
        var prompts = new List<int[]> { new[] { 16, 1 }, new[] { 16 }, new[] { 3, 3, 3 }, new[] { 16, 5, 7, 9 } };
        var drawn = policy.Sample(prompts, new SamplingOptions(6, EndOfText: 16), seed: 11);
        var sequences = prompts.Zip(drawn, (p, d) => new PromptResponse(p, d.Tokens)).Where(s => s.Response.Length > 0).ToList();
        var scored = new float[PolicyScores.TokenCount(sequences)];
        policy.Score(sequences, scored);
        var sampled = drawn.Where(d => d.Tokens.Length > 0).SelectMany(d => d.LogProbs).ToArray();
        Numerics.AssertClose(sampled, Numerics.ToDouble(scored), 2e-5, 2e-5, "the sampler's ln π vs the policy's score");

        // without the adapter's change the same seed draws π_b's responses, and those log-probs differ
        var tiltOnly = TiltedSampler.Sample(model, policy.Offset, prompts, new SamplingOptions(6, EndOfText: 16), 11);
        Assert.That(tiltOnly.SelectMany(d => d.LogProbs), Is.Not.EqualTo(drawn.SelectMany(d => d.LogProbs)));
    }

    [Test]
    public void AdapterTensorsHaveTheirNamesAndShapesAndTheHashSeesEveryParameter()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var cache = new FrozenFeatureCache(model);
        var policy = new TiltPolicy(cache, new AdamWSettings(), RandomOffset(12), adapterRank: 2, adapterSeed: 13);
        Numerics.RandomFloats(policy.AdapterB.Length, 14, 1.0).CopyTo(policy.AdapterB);
        var tensors = policy.ModelTensors();
        Assert.That(tensors.Select(t => t.Name), Is.EqualTo(new[] { "logit_offset", "lm_head_adapter.a", "lm_head_adapter.b" }));
        Assert.That(tensors[1].Shape, Is.EqualTo(new long[] { Tiny.Channels, 2 }));
        Assert.That(tensors[2].Shape, Is.EqualTo(new long[] { Tiny.VocabSize, 2 }));

        string before = ModelHash.Of(policy);
        policy.AdapterB[5] = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(policy.AdapterB[5]) + 1);   // one ulp
        Assert.That(ModelHash.Of(policy), Is.Not.EqualTo(before));
        var tilt = new TiltPolicy(cache, new AdamWSettings(), policy.Offset);
        Assert.That(ModelHash.Of(tilt), Is.Not.EqualTo(ModelHash.Of(policy)), "same b, with and without an adapter");
    }

    [Test]
    public void TheTargetTiltIsTheKnownTargetAndZeroIsPi0()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var weights = KnownTargetModelTests.TinyWeights();
        const double tau = 0.8;
        var target = new TiltedTarget(model, weights, tau);
        var cache = new FrozenFeatureCache(model);
        var atTarget = new TiltPolicy(cache, new AdamWSettings(), target.Tilt);
        var atZero = new TiltPolicy(cache, new AdamWSettings());
        int tokens = PolicyScores.TokenCount(Batch);
        var lp = new float[tokens];
        var lpTarget = new float[tokens];
        var lp0 = new float[tokens];
        var lpZero = new float[tokens];
        atTarget.Score(Batch, lp);
        target.Score(Batch, lpTarget, lp0, default);
        atZero.Score(Batch, lpZero);
        Numerics.AssertClose(lp, Numerics.ToDouble(lpTarget), 2e-6, 2e-6, "π_b at b = w/τ vs π*");
        Numerics.AssertClose(lpZero, Numerics.ToDouble(lp0), 2e-6, 2e-6, "π_b at b = 0 vs π0");

        var prompts = new List<int[]> { new[] { 16, 1 }, new[] { 16 }, new[] { 3, 3, 3 } };
        var options = new SamplingOptions(5, EndOfText: 16);
        var a = atTarget.Sample(prompts, options, seed: 4);
        var b = target.Sample(prompts, options, seed: 4);
        for (int r = 0; r < prompts.Count; r++)
        {
            Assert.That(a[r].Tokens, Is.EqualTo(b[r].Tokens), "same draws as π*");
            Assert.That(a[r].LogProbs, Is.EqualTo(b[r].LogProbs));
        }
    }

    [Test]
    public void TheCacheRunsTheBackboneOncePerDistinctSequence()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var cache = new FrozenFeatureCache(model);
        var policy = new TiltPolicy(cache, new AdamWSettings(), RandomOffset(6));
        int tokens = PolicyScores.TokenCount(Batch);
        var first = new float[tokens];
        policy.Score(Batch, first);
        Assert.That(cache.Misses, Is.EqualTo(Batch.Count));
        Assert.That(cache.Count, Is.EqualTo(Batch.Count));

        // The same sequences in new arrays, reordered, in a batch with one new sequence: only that one is computed,
        // and every score is the same as before (features do not depend on the batch they were computed in).
        var reordered = Batch.Select(s => new PromptResponse([.. s.Prompt], [.. s.Response])).Reverse().ToList();
        reordered.Insert(2, new PromptResponse([16, 9], [4, 4, 4]));
        var second = new float[PolicyScores.TokenCount(reordered)];
        policy.Score(reordered, second);
        Assert.That(cache.Misses, Is.EqualTo(Batch.Count + 1));
        Assert.That(cache.Hits, Is.EqualTo(Batch.Count));
        var alone = new float[3];
        new TiltPolicy(new FrozenFeatureCache(model), new AdamWSettings(), RandomOffset(6)).Score([reordered[2]], alone);
        Assert.That(second.AsSpan(Offsets(reordered, 2), 3).ToArray(), Is.EqualTo(alone), "a sequence computed in a batch = alone");

        // A cache with no room computes every time and keeps nothing.
        var full = new FrozenFeatureCache(model, maxFloats: 0, recentFloats: 0);
        new TiltPolicy(full, new AdamWSettings()).Score(Batch, new float[tokens]);
        Assert.That(full.Count, Is.Zero);
    }

    [Test]
    public void PinnedSequencesStayAndTheRecentPoolIsBounded()
    {
        using var model = KnownTargetModelTests.TinyModel();
        int c = Tiny.Channels;
        // room for 6 response tokens of sequences that are not pinned
        var cache = new FrozenFeatureCache(model, recentFloats: 6 * c);
        cache.Add([Batch[0]]);   // pinned (2 tokens)
        var policy = new TiltPolicy(cache, new AdamWSettings());
        foreach (var s in Batch.Skip(1)) policy.Score([s], new float[s.Response.Length]);   // 5, 3, 1 tokens
        Assert.That(cache.Bytes, Is.LessThanOrEqualTo((2 + 6) * c * sizeof(float)));
        long misses = cache.Misses;
        policy.Score([Batch[0]], new float[2]);
        policy.Score([Batch[3]], new float[1]);
        Assert.That(cache.Misses, Is.EqualTo(misses), "the pinned sequence and the newest one are held");
        policy.Score([Batch[1]], new float[5]);
        Assert.That(cache.Misses, Is.EqualTo(misses + 1), "the oldest sequence that was not pinned was evicted");
        cache.Add([Batch[1]]);   // pinning a sequence that sits in the recent pool keeps it where it is
        Assert.That(cache.Misses, Is.EqualTo(misses + 1));
    }

    private static int Offsets(IReadOnlyList<PromptResponse> batch, int index) => batch.Take(index).Sum(s => s.Response.Length);

    [Test]
    public void SnapshotCopyAndOptimizerStepTouchOnlyTheOffset()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var before = model.Parameters.ToArray();
        var policy = new TiltPolicy(new FrozenFeatureCache(model), new AdamWSettings(WeightDecay: 0));
        int tokens = PolicyScores.TokenCount(Batch);
        policy.Score(Batch, new float[tokens]);
        policy.Backward(Enumerable.Repeat(-1f, tokens).ToArray());   // L = −Σ_t ln π_b(y_t)
        double norm = policy.ClipGradients(0);
        Assert.That(norm, Is.GreaterThan(0));
        Assert.That(policy.ClipGradients(0.5f * (float)norm), Is.EqualTo(norm).Within(1e-6 * norm));
        Assert.That(policy.ClipGradients(0), Is.EqualTo(0.5 * norm).Within(1e-5 * norm), "clipped to half");
        var snapshot = policy.Snapshot();
        policy.OptimizerStep(1, 0.1f);
        Assert.That(model.Parameters.ToArray(), Is.EqualTo(before), "the backbone is frozen");
        Assert.That(policy.Offset.ToArray().Any(x => x != 0), Is.True);
        // descending −Σ ln π_b(y_t) raises the offset of a token that occurs
        Assert.That(policy.Offset[5], Is.GreaterThan(0));
        var lpSnapshot = new float[tokens];
        snapshot.Score(Batch, lpSnapshot);
        var lpZero = new float[tokens];
        new TiltPolicy(policy.Cache, new AdamWSettings()).Score(Batch, lpZero);
        Assert.That(lpSnapshot, Is.EqualTo(lpZero), "the snapshot kept b = 0");
        snapshot.CopyWeightsFrom(policy);
        Assert.That(((TiltPolicy)snapshot).Offset.ToArray(), Is.EqualTo(policy.Offset.ToArray()));
        Assert.Throws<InvalidOperationException>(() => policy.Backward(new float[tokens]), "one Backward per Score");
        Assert.Throws<ArgumentException>(() => new TiltPolicy(policy.Cache, new AdamWSettings(), new float[3]));
        var empty = Assert.Throws<ArgumentException>(() => policy.Score([new PromptResponse([16], [])], new float[0]));
        Assert.That(empty!.Message, Does.Contain("response is empty"));
        policy.Score([], []);   // an empty batch scores nothing
        policy.Backward([]);
    }

    [Test]
    public void TheValueHeadIsALinearHeadOnTheSameFrozenFeatures()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var cache = new FrozenFeatureCache(model);
        var policy = new TiltPolicy(cache, new AdamWSettings(), RandomOffset(8), withValueHead: true);
        var head = policy.ValueHead!;
        Numerics.RandomFloats(head.Parameters.Length, 9, 0.5).CopyTo(head.Parameters, 0);
        int tokens = PolicyScores.TokenCount(Batch), c = Tiny.Channels;
        var lp = new float[tokens];
        var values = new float[tokens];
        policy.ScoreWithValues(Batch, lp, values);
        var lpAlone = new float[tokens];
        new TiltPolicy(cache, new AdamWSettings(), RandomOffset(8)).Score(Batch, lpAlone);
        Assert.That(lp, Is.EqualTo(lpAlone), "the value head leaves the log-probs alone");
        var features = new float[tokens * c];
        cache.Gather(Batch, features);
        for (int t = 0; t < tokens; t++)
        {
            double expected = head.Parameters[c];
            for (int k = 0; k < c; k++) expected += (double)head.Parameters[k] * features[t * c + k];
            Assert.That(values[t], Is.EqualTo(expected).Within(1e-5), $"V(s_{t})");
        }
        var dValues = Numerics.RandomFloats(tokens, 10, 1.0);
        policy.ZeroGradients();
        policy.BackwardWithValues(new float[tokens], dValues);
        Assert.That(head.Gradients[c], Is.EqualTo(dValues.Sum(x => (double)x)).Within(1e-5), "∂L/∂c = Σ_t ∂L/∂V_t");
        Assert.That(policy.OffsetGradient.ToArray().All(g => g == 0), Is.True, "a value-only loss leaves b's gradient at 0");
        var snapshot = (TiltPolicy)policy.Snapshot();
        Assert.That(snapshot.ValueHead!.Parameters, Is.EqualTo(head.Parameters));
    }

    [Test]
    public void LabelsAgainstPi0AreTheOnesTheTiltDecided()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var prompts = Enumerable.Range(0, 8).Select(i => new[] { 16, i + 1 }).ToList();
        KnownTargetPairs Draw(double tau) =>
            new KnownTargetTask(new TiltedTarget(model, KnownTargetModelTests.TinyWeights(), tau), new KnownTargetSettings { ResponseTokens = 3, Gamma = 4 },
                prompts, prompts, endOfText: -1).DrawPairs(512, seed: 3);
        var untilted = Draw(double.PositiveInfinity);   // π* = π0: a label goes against ln π0 exactly when it goes against ln π*
        Assert.That(untilted.AgainstReference, Is.EqualTo(1 - untilted.AgreementWithTarget).Within(1e-12));
        var tilted = Draw(0.5);
        TestContext.Out.WriteLine($"τ = 0.5: {tilted.AgainstReference:P1} of labels against ln π0, {tilted.AgreementWithTarget:P1} with ln π*");
        Assert.That(tilted.AgainstReference, Is.GreaterThan(1 - tilted.AgreementWithTarget + 0.05), "the tilt decides some labels");
    }

    /// <summary>
    /// A likelihood reward γ·ln π_r is placed token by token in PPO's rollouts: the sequence scores PPO reports are the same
    /// sums either way; with one-token responses the two placements are the same rollout (bit-identical update), and with
    /// longer ones they differ (a token's return no longer carries the rewards of the tokens before it).
    /// </summary>
    [Test]
    public void PpoPlacesALikelihoodRewardTokenByToken()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var cache = new FrozenFeatureCache(model);
        var rewardPolicy = new TiltPolicy(cache, new AdamWSettings(), RandomOffset(13));
        var reward = new DistAlign.Alignment.Reward.LogLikelihoodReward(rewardPolicy, 1.0);
        var prompts = Enumerable.Range(0, 8).Select(i => new[] { 16, i + 1 }).ToList();
        (float[] Offset, double Score) OneIteration(bool tokenRewards, int tokens)
        {
            var policy = new TiltPolicy(cache, new AdamWSettings(WeightDecay: 0), withValueHead: true);
            var trainer = new PpoTrainer(policy, new TiltPolicy(cache, new AdamWSettings()), reward, prompts, new PpoOptions
            {
                Objective = PpoObjective.ReverseKl, Beta = 0, Gamma = 1, Steps = 1, PromptsPerIteration = 8, Epochs = 1, Minibatches = 1,
                Sampling = new SamplingOptions(tokens), LearningRate = 0.01f, TokenRewards = tokenRewards, Seed = 5,
            });
            var report = trainer.TrainStep();
            return (policy.Offset.ToArray(), report["objective/scores"]);
        }
        var (denseOne, scoreDenseOne) = OneIteration(true, 1);
        var (sparseOne, scoreSparseOne) = OneIteration(false, 1);
        Assert.That(denseOne, Is.EqualTo(sparseOne), "one token: the same rollout");
        Assert.That(scoreDenseOne, Is.EqualTo(scoreSparseOne));
        var (dense, scoreDense) = OneIteration(true, 4);
        var (sparse, scoreSparse) = OneIteration(false, 4);
        Assert.That(scoreDense, Is.EqualTo(scoreSparse).Within(1e-5 * Math.Abs(scoreSparse)), "the same sequence scores");
        Assert.That(dense, Is.Not.EqualTo(sparse), "four tokens: the placement changes the advantages");
    }

    [Test]
    public void PreferenceMleInTheTiltClassMovesTowardTheTarget()
    {
        using var model = KnownTargetModelTests.TinyModel();
        var target = new TiltedTarget(model, KnownTargetModelTests.TinyWeights(), temperature: 1.0);
        var cache = new FrozenFeatureCache(model);
        var pi0 = new TiltPolicy(cache, new AdamWSettings());
        var prompts = Enumerable.Range(0, 16).Select(i => new[] { 16, i % 15 + 1 }).ToList();
        var task = new KnownTargetTask(target, new KnownTargetSettings { ResponseTokens = 3, Gamma = 1 }, prompts, prompts, endOfText: -1);
        var pairs = task.DrawPairs(4096, seed: 2).Pairs;

        // KL(π* ‖ π) per response on fresh π* samples
        var evalPrompts = Enumerable.Repeat(prompts, 32).SelectMany(p => p).ToList();
        var evalSamples = task.SampleAll(target, evalPrompts, seed: 77);
        var evalSequences = evalPrompts.Select((p, i) => new PromptResponse(p, evalSamples[i].Tokens)).ToList();
        var targetScores = KnownTargetTask.ScoreAll(target, evalSequences);
        double Kl(IPolicy p) => targetScores.Zip(KnownTargetTask.ScoreAll(new PolicyResponseModel(p), evalSequences), (t, q) => t - q).Average();
        double start = Kl(pi0);

        var policy = new TiltPolicy(cache, new AdamWSettings(WeightDecay: 0));
        var trainer = new AlignmentTrainer(policy, pi0, pairs, null, new AlignmentTrainingOptions
        {
            Objective = AlignmentObjective.Preference, Loss = new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: 1),
            Steps = 400, BatchPairs = 64, LearningRate = 0.05f, WarmupSteps = 10, EvalFraction = 0, EvaluateEvery = 0, Seed = 1,
        });
        while (trainer.Step < 400) trainer.TrainStep();
        double end = Kl(policy);
        TestContext.Out.WriteLine($"KL(π*‖π0) = {start:F4}, KL(π*‖π_b̂) = {end:F4} after PMLE on 4,096 pairs");
        Assert.That(end, Is.LessThan(0.25 * start));
    }
}
