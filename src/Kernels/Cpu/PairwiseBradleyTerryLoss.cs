namespace DistAlign.Kernels.Cpu;

/// <summary>
/// The per-sequence and per-pair inputs of <see cref="PairwiseBradleyTerryLoss"/>. S sequences, P pairs.
/// Spans a variant does not read may be empty (see each member).
/// </summary>
public readonly ref struct PairwiseLossBatch
{
    /// <summary>ln π(y) per sequence [S] (summed over response tokens). Every variant but the reward model; may be empty there.</summary>
    public ReadOnlySpan<float> Logps { get; init; }
    /// <summary>Reference log-probs [S]: ln π0 for the DPO family and IPO, the anchor ln π_t for REBEL; else may be empty.</summary>
    public ReadOnlySpan<float> RefLogps { get; init; }
    /// <summary>Response-token counts [S], each ≥ 1: IPO's per-token means; else may be empty.</summary>
    public ReadOnlySpan<int> TokenCounts { get; init; }
    /// <summary>Rewards [S]: REBEL's R̂ (a constant, no gradient), or the reward model's scores R (differentiated, gradient into dRewards); else may be empty.</summary>
    public ReadOnlySpan<float> Rewards { get; init; }
    /// <summary>Index of each pair's preferred sequence a⁺ [P] (distillation, REBEL: a₁).</summary>
    public ReadOnlySpan<int> Chosen { get; init; }
    /// <summary>Index of each pair's other sequence a⁻ [P] (distillation, REBEL: a₂).</summary>
    public ReadOnlySpan<int> Rejected { get; init; }
    /// <summary>Soft labels p = P(a₁ ≻ a₂) ∈ [0, 1] [P] for distillation; ignored (may be empty) by the hard-label variants.</summary>
    public ReadOnlySpan<float> Labels { get; init; }
}

/// <summary>
/// The pairwise Bradley–Terry loss family (OBJECTIVES.md): DPO (sigmoid, conservative, robust, hinge), IPO,
/// preference MLE, preference distillation, REBEL and the reward-model loss, on per-sequence scores.
/// <code>
/// DPO family: h = [ln π(a⁺) − ln π0(a⁺)] − [ln π(a⁻) − ln π0(a⁻)],  z = β·h,  ∂z/∂ln π(a±) = ±β
///   sigmoid       L = −ln σ(z)                                   dL/dz = −σ(−z)
///   conservative  L = −(1−ε) ln σ(z) − ε ln σ(−z)                dL/dz = −(1−ε)σ(−z) + εσ(z)
///   robust        L = [−(1−ε) ln σ(z) + ε ln σ(−z)]/(1−2ε)       dL/dz = [−(1−ε)σ(−z) − εσ(z)]/(1−2ε)
///   hinge         L = max(0, 1 − z)                              dL/dz = −1[z &lt; 1]
///   IPO           h̄ = [ln π(a⁺) − ln π0(a⁺)]/n⁺ − [ln π(a⁻) − ln π0(a⁻)]/n⁻  (n = token counts)
///                 L = (h̄ − 1/(2β))²                              ∂L/∂ln π(a±) = ±2(h̄ − 1/(2β))/n±
/// PMLE          z = γ[ln π(a⁺) − ln π(a⁻)],  L = −ln σ(z)        dL/dz = −σ(−z) (= σ(z) − 1)
/// distillation  z = γ[ln π(a₁) − ln π(a₂)],  L = −[p ln σ(z) + (1−p) ln σ(−z)]
///                                                                dL/dz = σ(z) − p (as −pσ(−z) + (1−p)σ(z))
///               bernoulli_kl = L − H(p) = KL(Bern(p) ‖ Bern(σ(z)))
/// REBEL         r = [ln π(a₁) − ln π_t(a₁)] − [ln π(a₂) − ln π_t(a₂)] − η[R̂(a₁) − R̂(a₂)],  L = r²
///                                                                ∂L/∂ln π(a₁,₂) = ±2r  (R̂, π_t constants)
/// reward model  u = R⁺ − R⁻ − m, s = R⁺ + R⁻,  L = −ln σ(u) + c·s²
///                                                                ∂L/∂R± = ∓σ(−u) + 2c·s
/// </code>
/// The reward model's scores R are read from <see cref="PairwiseLossBatch.Rewards"/> and its gradient goes to
/// <c>dRewards</c> (its <c>Logps</c> may be empty); every other variant differentiates only <c>Logps</c>
/// (reference log-probs, token counts, REBEL's R̂ and labels are constants).
/// <para>
/// Numerics: every pair is evaluated in fp64 from the fp32 inputs; −ln σ(x) = softplus(−x) =
/// max(−x, 0) + ln(1 + e^(−|x|)) and σ(x) from e^(−|x|), so |z| up to 1e4 (and beyond) gives finite losses
/// and exact saturated gradients (σ(z) − 1 is evaluated as −σ(−z), never by subtraction). With π = π0, h = 0
/// and every DPO reward is exactly 0 and the sigmoid loss is exactly ln 2.
/// </para>
/// <para>
/// Reduction: the loss is the MEAN over the P pairs; the gradient written is that of the mean, i.e. each pair
/// adds (∂L_pair/∂x)/P, rounded to fp32, to dLogps (or dRewards) — ACCUMULATED (+=), pairs in order, the
/// chosen sequence first, so a sequence shared by several pairs gets a deterministic sum. Metrics are fp64
/// sums in pair order divided by P. P = 0 gives mean loss 0, all metrics 0 and no gradient.
/// </para>
/// </summary>
public static class PairwiseBradleyTerryLoss
{
    /// <summary>Per-pair losses and metrics only (evaluation); nothing is differentiated.</summary>
    /// <param name="settings">Variant and scalars.</param>
    /// <param name="batch">Inputs.</param>
    /// <param name="pairLosses">Output [P]: each pair's loss (fp32 of the fp64 value).</param>
    /// <returns>The mean loss and the variant's metrics.</returns>
    public static PairwiseLossMetrics Forward(in PairwiseLossSettings settings, in PairwiseLossBatch batch, Span<float> pairLosses)
        => Run(settings, batch, pairLosses, [], [], withGradient: false);

    /// <summary>Per-pair losses, metrics, and the gradient of the mean loss accumulated into the per-sequence gradients.</summary>
    /// <param name="settings">Variant and scalars.</param>
    /// <param name="batch">Inputs.</param>
    /// <param name="pairLosses">Output [P]: each pair's loss.</param>
    /// <param name="dLogps">Accumulated [S]: += ∂(mean loss)/∂ln π. May be empty for the reward model.</param>
    /// <param name="dRewards">Accumulated [S]: += ∂(mean loss)/∂R, reward model only; may be empty otherwise.</param>
    /// <returns>The mean loss and the variant's metrics.</returns>
    public static PairwiseLossMetrics ForwardBackward(in PairwiseLossSettings settings, in PairwiseLossBatch batch,
                                                      Span<float> pairLosses, Span<float> dLogps, Span<float> dRewards)
        => Run(settings, batch, pairLosses, dLogps, dRewards, withGradient: true);

    private static PairwiseLossMetrics Run(in PairwiseLossSettings settings, in PairwiseLossBatch batch,
                                           Span<float> pairLosses, Span<float> dLogps, Span<float> dRewards, bool withGradient)
    {
        int sequences = ValidateBatch(settings, batch);
        int pairs = batch.Chosen.Length;
        ShapeCheck.Length(pairLosses.Length, pairs, nameof(pairLosses), "[P]");
        Span<float> gradient = default;
        if (withGradient)
        {
            if (settings.DifferentiatesRewards)
            {
                ShapeCheck.Length(dRewards.Length, sequences, nameof(dRewards), "[S], the reward model's gradient");
                gradient = dRewards;
            }
            else
            {
                ShapeCheck.Length(dLogps.Length, sequences, nameof(dLogps), "[S]");
                gradient = dLogps;
            }
        }

        var k = PairwiseLossConstants.From(settings);
        Span<double> sums = stackalloc double[PairwiseLossSlot.Count];
        sums.Clear();
        double invPairs = pairs == 0 ? 0.0 : 1.0 / pairs;
        for (int i = 0; i < pairs; i++)
        {
            var t = EvaluatePair(k, settings, batch, i);
            pairLosses[i] = (float)t.Loss;
            t.AddTo(sums);
            if (withGradient)
            {
                gradient[batch.Chosen[i]] += (float)(t.DChosen * invPairs);
                gradient[batch.Rejected[i]] += (float)(t.DRejected * invPairs);
            }
        }
        return PairwiseLossMetrics.FromSums(settings.Variant, pairs, sums);
    }

    private static PairwiseLossTerms EvaluatePair(in PairwiseLossConstants k, in PairwiseLossSettings s, in PairwiseLossBatch b, int i)
    {
        int c = b.Chosen[i], r = b.Rejected[i];
        double logpC = 0, logpR = 0, refC = 0, refR = 0, nC = 1, nR = 1, rewC = 0, rewR = 0, label = 0;
        if (s.UsesLogps) { logpC = b.Logps[c]; logpR = b.Logps[r]; }
        if (s.UsesReference) { refC = b.RefLogps[c]; refR = b.RefLogps[r]; }
        if (s.Variant == PairwiseLossVariant.Ipo) { nC = b.TokenCounts[c]; nR = b.TokenCounts[r]; }
        if (s.UsesRewards) { rewC = b.Rewards[c]; rewR = b.Rewards[r]; }
        if (s.Variant == PairwiseLossVariant.Distillation) label = b.Labels[i];
        return PairwiseBradleyTerryMath.Evaluate(k, logpC, logpR, refC, refR, nC, nR, rewC, rewR, label);
    }

    /// <summary>Checks settings, shapes, indices, token counts and labels; returns S. Throws before anything is written.</summary>
    internal static int ValidateBatch(in PairwiseLossSettings s, in PairwiseLossBatch b)
    {
        s.Validate();
        int pairs = b.Chosen.Length;
        ShapeCheck.Length(b.Rejected.Length, pairs, "rejected", "[P], one per chosen index");
        int sequences = s.UsesLogps ? b.Logps.Length : b.Rewards.Length;
        if (s.UsesReference)
            ShapeCheck.Length(b.RefLogps.Length, sequences, "refLogps", $"[S] reference log-probs, required by {s.Variant}");
        if (s.UsesRewards)
            ShapeCheck.Length(b.Rewards.Length, sequences, "rewards", $"[S] rewards, required by {s.Variant}");
        if (s.Variant == PairwiseLossVariant.Ipo)
        {
            ShapeCheck.Length(b.TokenCounts.Length, sequences, "tokenCounts", "[S] response-token counts, required by IPO");
            for (int j = 0; j < sequences; j++)
                if (b.TokenCounts[j] < 1)
                    throw new ArgumentOutOfRangeException("tokenCounts", b.TokenCounts[j],
                        $"Sequence {j} has token count {b.TokenCounts[j]}; IPO divides by it, so it must be at least 1.");
        }
        if (s.Variant == PairwiseLossVariant.Distillation)
        {
            ShapeCheck.Length(b.Labels.Length, pairs, "labels", "[P] soft labels, required by distillation");
            for (int i = 0; i < pairs; i++)
                if (!(b.Labels[i] >= 0f && b.Labels[i] <= 1f))
                    throw new ArgumentOutOfRangeException("labels", b.Labels[i], $"Pair {i} has soft label {b.Labels[i]}; a probability must lie in [0, 1].");
        }
        for (int i = 0; i < pairs; i++)
        {
            CheckIndex(b.Chosen[i], sequences, i, "chosen");
            CheckIndex(b.Rejected[i], sequences, i, "rejected");
        }
        return sequences;
    }

    private static void CheckIndex(int index, int sequences, int pair, string name)
    {
        if ((uint)index >= (uint)sequences)
            throw new ArgumentOutOfRangeException(name, index, $"Pair {pair}: {name} index {index} is outside the {sequences} sequences [0, {sequences}).");
    }
}
