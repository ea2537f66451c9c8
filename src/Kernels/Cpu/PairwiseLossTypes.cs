namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Which member of the pairwise Bradley–Terry loss family <see cref="PairwiseBradleyTerryLoss"/> computes.
/// The formulas are in OBJECTIVES.md and restated on <see cref="PairwiseBradleyTerryLoss"/>.
/// </summary>
public enum PairwiseLossVariant
{
    /// <summary>DPO: L = −ln σ(z), z = β·h, h = [ln π(a⁺) − ln π0(a⁺)] − [ln π(a⁻) − ln π0(a⁻)].</summary>
    DpoSigmoid,
    /// <summary>Label-smoothed (conservative) DPO: L = −(1−ε) ln σ(z) − ε ln σ(−z), ε ∈ [0, 1].</summary>
    DpoConservative,
    /// <summary>Robust DPO: L = [−(1−ε) ln σ(z) + ε ln σ(−z)] / (1−2ε), ε ∈ [0, 0.5).</summary>
    DpoRobust,
    /// <summary>Hinge DPO (SLiC): L = max(0, 1 − z).</summary>
    DpoHinge,
    /// <summary>IPO: L = (h̄ − 1/(2β))², h̄ = h with per-token mean log-ratios (needs token counts).</summary>
    Ipo,
    /// <summary>Preference MLE: L = −ln σ(z), z = γ[ln π(a⁺) − ln π(a⁻)]; no reference model.</summary>
    Pmle,
    /// <summary>Preference distillation: L = −[p ln σ(z) + (1−p) ln σ(−z)], z = γ[ln π(a₁) − ln π(a₂)], soft label p.</summary>
    Distillation,
    /// <summary>REBEL: L = ([ln π(a₁) − ln π_t(a₁)] − [ln π(a₂) − ln π_t(a₂)] − η[R̂(a₁) − R̂(a₂)])².</summary>
    Rebel,
    /// <summary>Bradley–Terry reward model: L = −ln σ(R⁺ − R⁻ − m) + c·(R⁺ + R⁻)², scores in <c>rewards</c>.</summary>
    RewardModel,
}

/// <summary>The scalars of the pairwise loss family; each variant reads only the ones its formula names.</summary>
/// <param name="Variant">Which loss.</param>
/// <param name="Beta">β: DPO-family and IPO temperature (&gt; 0). Also scales the DPO reward metrics.</param>
/// <param name="Gamma">γ: preference temperature of PMLE and distillation (&gt; 0).</param>
/// <param name="Epsilon">ε: label smoothing (conservative, [0, 1]) or assumed flip rate (robust, [0, 0.5)).</param>
/// <param name="Eta">η: REBEL's reward scale (finite).</param>
/// <param name="Margin">m: reward-model margin (≥ 0).</param>
/// <param name="Centring">c: reward-model centring coefficient (≥ 0).</param>
public readonly record struct PairwiseLossSettings(
    PairwiseLossVariant Variant,
    double Beta = 0.1,
    double Gamma = 1.0,
    double Epsilon = 0.0,
    double Eta = 1.0,
    double Margin = 0.0,
    double Centring = 0.0)
{
    /// <summary>True for the variants that read a reference/anchor log-prob per sequence (DPO family, IPO, REBEL).</summary>
    public bool UsesReference => Variant is PairwiseLossVariant.DpoSigmoid or PairwiseLossVariant.DpoConservative
        or PairwiseLossVariant.DpoRobust or PairwiseLossVariant.DpoHinge or PairwiseLossVariant.Ipo or PairwiseLossVariant.Rebel;

    /// <summary>True for the variants that read per-sequence rewards (REBEL's R̂, the reward model's scores).</summary>
    public bool UsesRewards => Variant is PairwiseLossVariant.Rebel or PairwiseLossVariant.RewardModel;

    /// <summary>True for the variants that read policy log-probs (all but the reward model).</summary>
    public bool UsesLogps => Variant != PairwiseLossVariant.RewardModel;

    /// <summary>True when the gradient flows into the rewards (reward model) rather than into the log-probs.</summary>
    public bool DifferentiatesRewards => Variant == PairwiseLossVariant.RewardModel;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> when a scalar the variant reads is out of its range.</summary>
    public void Validate()
    {
        switch (Variant)
        {
            case PairwiseLossVariant.DpoSigmoid or PairwiseLossVariant.DpoHinge or PairwiseLossVariant.Ipo:
                RequirePositive(Beta, nameof(Beta), "β");
                break;
            case PairwiseLossVariant.DpoConservative:
                RequirePositive(Beta, nameof(Beta), "β");
                if (!(Epsilon >= 0.0 && Epsilon <= 1.0))
                    throw new ArgumentOutOfRangeException(nameof(Epsilon), Epsilon, $"Label smoothing ε = {Epsilon} must lie in [0, 1].");
                break;
            case PairwiseLossVariant.DpoRobust:
                RequirePositive(Beta, nameof(Beta), "β");
                if (!(Epsilon >= 0.0 && Epsilon < 0.5))
                    throw new ArgumentOutOfRangeException(nameof(Epsilon), Epsilon, $"Robust DPO's ε = {Epsilon} must lie in [0, 0.5): it divides by 1 − 2ε.");
                break;
            case PairwiseLossVariant.Pmle or PairwiseLossVariant.Distillation:
                RequirePositive(Gamma, nameof(Gamma), "γ");
                break;
            case PairwiseLossVariant.Rebel:
                if (!double.IsFinite(Eta))
                    throw new ArgumentOutOfRangeException(nameof(Eta), Eta, "REBEL's η must be finite.");
                break;
            case PairwiseLossVariant.RewardModel:
                if (!(Margin >= 0.0 && double.IsFinite(Margin)))
                    throw new ArgumentOutOfRangeException(nameof(Margin), Margin, "The reward-model margin m must be finite and ≥ 0.");
                if (!(Centring >= 0.0 && double.IsFinite(Centring)))
                    throw new ArgumentOutOfRangeException(nameof(Centring), Centring, "The reward-model centring coefficient c must be finite and ≥ 0.");
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(Variant), Variant, "Unknown pairwise loss variant.");
        }
    }

    private static void RequirePositive(double value, string name, string symbol)
    {
        if (!(value > 0.0 && double.IsFinite(value)))
            throw new ArgumentOutOfRangeException(name, value, $"{symbol} = {value} must be finite and > 0.");
    }
}

/// <summary>
/// The metrics of one call of the pairwise loss, each a mean over the P pairs (0 when P = 0), under TRL's
/// names where TRL has one. Only the fields of the variant's group are meaningful; the others are 0.
/// <see cref="Named"/> lists the meaningful ones as (name, value) pairs for logging.
/// </summary>
/// <param name="Variant">The variant that produced them.</param>
/// <param name="Pairs">P.</param>
/// <param name="Loss">The mean loss (fp64 sum of the per-pair fp64 losses, divided by P).</param>
/// <param name="RewardsChosen">DPO family: <c>rewards/chosen</c>, mean β[ln π(a⁺) − ln π0(a⁺)] (sums, also for IPO).</param>
/// <param name="RewardsRejected">DPO family: <c>rewards/rejected</c>, mean β[ln π(a⁻) − ln π0(a⁻)].</param>
/// <param name="RewardsMargins">DPO family: <c>rewards/margins</c>, mean of chosen − rejected reward.</param>
/// <param name="RewardsAccuracies">DPO family: <c>rewards/accuracies</c>, fraction of pairs with chosen reward &gt; rejected reward.</param>
/// <param name="LogpsChosen">DPO family and PMLE: <c>logps/chosen</c>, mean ln π(a⁺).</param>
/// <param name="LogpsRejected">DPO family and PMLE: <c>logps/rejected</c>, mean ln π(a⁻).</param>
/// <param name="Logits">PMLE, distillation: <c>logits</c>, mean z = γ[ln π(a⁺) − ln π(a⁻)].</param>
/// <param name="Accuracy">PMLE: fraction with z &gt; 0. Distillation: fraction with (z &gt; 0) = (p &gt; ½). Reward model: fraction with R⁺ &gt; R⁻.</param>
/// <param name="BernoulliKl">Distillation: <c>bernoulli_kl</c>, mean KL(Bern(p) ‖ Bern(σ(z))) = loss − H(p).</param>
/// <param name="Margin">Reward model: <c>margin</c>, mean R⁺ − R⁻ (without m).</param>
/// <param name="MeanReward">Reward model: <c>mean_reward</c>, mean of (R⁺ + R⁻)/2.</param>
/// <param name="RegressionError">REBEL: <c>regression_error</c>, mean squared residual (equals the loss).</param>
public readonly record struct PairwiseLossMetrics(
    PairwiseLossVariant Variant,
    int Pairs,
    double Loss,
    double RewardsChosen,
    double RewardsRejected,
    double RewardsMargins,
    double RewardsAccuracies,
    double LogpsChosen,
    double LogpsRejected,
    double Logits,
    double Accuracy,
    double BernoulliKl,
    double Margin,
    double MeanReward,
    double RegressionError)
{
    /// <summary>The variant's metrics as (name, value), TRL names where they exist; "loss" first.</summary>
    public IEnumerable<(string Name, double Value)> Named()
    {
        yield return ("loss", Loss);
        switch (Variant)
        {
            case PairwiseLossVariant.DpoSigmoid or PairwiseLossVariant.DpoConservative or PairwiseLossVariant.DpoRobust
                or PairwiseLossVariant.DpoHinge or PairwiseLossVariant.Ipo:
                yield return ("rewards/chosen", RewardsChosen);
                yield return ("rewards/rejected", RewardsRejected);
                yield return ("rewards/margins", RewardsMargins);
                yield return ("rewards/accuracies", RewardsAccuracies);
                yield return ("logps/chosen", LogpsChosen);
                yield return ("logps/rejected", LogpsRejected);
                break;
            case PairwiseLossVariant.Pmle:
                yield return ("logits", Logits);
                yield return ("accuracy", Accuracy);
                yield return ("logps/chosen", LogpsChosen);
                yield return ("logps/rejected", LogpsRejected);
                break;
            case PairwiseLossVariant.Distillation:
                yield return ("logits", Logits);
                yield return ("accuracy", Accuracy);
                yield return ("bernoulli_kl", BernoulliKl);
                break;
            case PairwiseLossVariant.Rebel:
                yield return ("regression_error", RegressionError);
                break;
            case PairwiseLossVariant.RewardModel:
                yield return ("accuracy", Accuracy);
                yield return ("margin", Margin);
                yield return ("mean_reward", MeanReward);
                break;
        }
    }

    /// <summary>Builds the metrics from the fp64 per-pair sums (<see cref="PairwiseLossSlot"/> order) and P.</summary>
    internal static PairwiseLossMetrics FromSums(PairwiseLossVariant variant, int pairs, ReadOnlySpan<double> sums)
    {
        if (pairs == 0) return new PairwiseLossMetrics { Variant = variant };
        double inv = 1.0 / pairs;
        double chosen = sums[PairwiseLossSlot.RewardChosen] * inv, rejected = sums[PairwiseLossSlot.RewardRejected] * inv;
        bool dpo = variant is PairwiseLossVariant.DpoSigmoid or PairwiseLossVariant.DpoConservative or PairwiseLossVariant.DpoRobust
            or PairwiseLossVariant.DpoHinge or PairwiseLossVariant.Ipo;
        return new PairwiseLossMetrics(
            variant, pairs,
            Loss: sums[PairwiseLossSlot.Loss] * inv,
            RewardsChosen: chosen,
            RewardsRejected: rejected,
            RewardsMargins: sums[PairwiseLossSlot.RewardMargin] * inv,
            RewardsAccuracies: dpo ? sums[PairwiseLossSlot.Correct] * inv : 0.0,
            LogpsChosen: sums[PairwiseLossSlot.LogpChosen] * inv,
            LogpsRejected: sums[PairwiseLossSlot.LogpRejected] * inv,
            Logits: sums[PairwiseLossSlot.Logit] * inv,
            Accuracy: dpo ? 0.0 : sums[PairwiseLossSlot.Correct] * inv,
            BernoulliKl: sums[PairwiseLossSlot.BernoulliKl] * inv,
            Margin: sums[PairwiseLossSlot.ScoreMargin] * inv,
            MeanReward: sums[PairwiseLossSlot.MeanReward] * inv,
            RegressionError: sums[PairwiseLossSlot.SquaredResidual] * inv);
    }
}

/// <summary>Indices of the per-pair metric contributions that are summed (in pair order, fp64) into the metrics.</summary>
internal static class PairwiseLossSlot
{
    public const int Loss = 0;
    public const int RewardChosen = 1;
    public const int RewardRejected = 2;
    public const int RewardMargin = 3;
    public const int Correct = 4;
    public const int LogpChosen = 5;
    public const int LogpRejected = 6;
    public const int Logit = 7;
    public const int BernoulliKl = 8;
    public const int ScoreMargin = 9;
    public const int MeanReward = 10;
    public const int SquaredResidual = 11;
    /// <summary>Number of slots.</summary>
    public const int Count = 12;
}
