using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using DistAlign.Tests.TestSupport;

namespace DistAlign.Tests.Kernels;

/// <summary>
/// The whole chain the preference objectives run, hidden states → fused LM head log-probs → per-sequence
/// sums → pairwise Bradley–Terry loss, against finite differences of the same chain built from the fp64
/// references alone.
/// </summary>
public class PreferenceChainTests
{
    [TestCase(PairwiseLossVariant.DpoSigmoid)]
    [TestCase(PairwiseLossVariant.Ipo)]
    [TestCase(PairwiseLossVariant.Pmle)]
    [TestCase(PairwiseLossVariant.Distillation)]
    public void GradientOfThePairwiseLossReachesTheHiddenStatesAndTheHead(PairwiseLossVariant variant)
    {
        const int c = 5, v = 11;
        // Four sequences of 3, 2, 4 and 2 response tokens, plus one ignored position between them.
        int[] sequence = [0, 0, 0, -1, 1, 1, 2, 2, 2, 2, 3, 3];
        int n = sequence.Length, sequences = 4;
        var rng = new Random(12);
        var targets = sequence.Select(s => s < 0 ? -1 : rng.Next(v)).ToArray();
        var h = Numerics.RandomFloats(n * c, 1);
        var e = Numerics.RandomFloats(v * c, 2);
        var refLogps = new[] { -9.5f, -6.1f, -12.3f, -5.0f };
        int[] chosen = [0, 2, 1], rejected = [1, 3, 3];
        var labels = new[] { 0.8f, 0.3f, 0.55f };
        var settings = new PairwiseLossSettings(variant, Beta: 0.7, Gamma: 0.6);

        // fp32 kernels: forward, then the backward chain.
        var scratch = new float[SequenceLogProbs.ScratchLength(n, v)];
        var lp = new float[n];
        var lse = new float[n];
        SequenceLogProbs.Forward(h, e, targets, c, v, scratch, lp, lse, default);
        var sums = new float[sequences];
        var counts = new int[sequences];
        SequenceLogProbs.SumBySequence(lp, sequence, targets, sums, counts);
        var dSums = new float[sequences];
        PairwiseBradleyTerryLoss.ForwardBackward(settings, new PairwiseLossBatch
        {
            Logps = sums, RefLogps = refLogps, TokenCounts = counts, Chosen = chosen, Rejected = rejected, Labels = labels,
        }, new float[chosen.Length], dSums, default);
        var dTokens = new float[n];
        SequenceLogProbs.ScatterBySequence(dSums, default, counts, sequence, targets, dTokens);
        var dh = new float[n * c];
        var de = new float[v * c];
        SequenceLogProbs.Backward(h, e, targets, c, v, lse, default, dTokens, default, scratch, dh, de);

        // fp64 references only.
        var hd = Numerics.ToDouble(h);
        var ed = Numerics.ToDouble(e);
        double Loss()
        {
            var (tokenLp, _) = ReferenceSequenceLogProbs.Forward(hd, ed, targets, c, v);
            var s = new double[sequences];
            for (int i = 0; i < n; i++) if (sequence[i] >= 0) s[sequence[i]] += tokenLp[i];
            return ReferencePairwiseLosses.MeanLoss(settings, new ReferencePairwiseInputs(
                s, Numerics.ToDouble(refLogps), counts, null, chosen, rejected, Numerics.ToDouble(labels)));
        }
        Numerics.AssertClose(dh, Numerics.FiniteDifferenceGradient(Loss, hd), 2e-5, 1e-4, "d hidden");
        Numerics.AssertClose(de, Numerics.FiniteDifferenceGradient(Loss, ed), 2e-5, 1e-4, "d lm head");
    }
}
