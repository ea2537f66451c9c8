namespace DistAlign.Kernels.Cpu;

/// <summary>
/// The scalars of <see cref="PairwiseLossSettings"/> in the flat form the per-pair math (and the ILGPU kernel,
/// which cannot take a record with members it does not compile) reads, with the derived constants precomputed.
/// </summary>
internal struct PairwiseLossConstants
{
    public int Variant;
    public double Beta;
    public double Gamma;
    public double Epsilon;
    public double Eta;
    public double Margin;
    public double Centring;
    /// <summary>1/(1 − 2ε), robust DPO's normaliser.</summary>
    public double RobustScale;
    /// <summary>1/(2β), IPO's target for h̄.</summary>
    public double IpoTarget;

    public static PairwiseLossConstants From(in PairwiseLossSettings s) => new()
    {
        Variant = (int)s.Variant,
        Beta = s.Beta,
        Gamma = s.Gamma,
        Epsilon = s.Epsilon,
        Eta = s.Eta,
        Margin = s.Margin,
        Centring = s.Centring,
        RobustScale = 1.0 / (1.0 - 2.0 * s.Epsilon),
        IpoTarget = 1.0 / (2.0 * s.Beta),
    };
}

/// <summary>
/// One pair's loss, its gradient with respect to the two per-sequence inputs (not yet divided by P), and its
/// contribution to each metric sum (<see cref="PairwiseLossSlot"/>).
/// </summary>
internal struct PairwiseLossTerms
{
    public double Loss;
    /// <summary>∂L/∂(chosen sequence's input): ln π(a⁺) for the log-prob variants, R⁺ for the reward model.</summary>
    public double DChosen;
    /// <summary>∂L/∂(rejected sequence's input).</summary>
    public double DRejected;
    public double RewardChosen;
    public double RewardRejected;
    public double RewardMargin;
    public double Correct;
    public double LogpChosen;
    public double LogpRejected;
    public double Logit;
    public double BernoulliKl;
    public double ScoreMargin;
    public double MeanReward;
    public double SquaredResidual;

    /// <summary>Adds this pair's metric contributions to the sums, in slot order.</summary>
    public readonly void AddTo(Span<double> sums)
    {
        sums[PairwiseLossSlot.Loss] += Loss;
        sums[PairwiseLossSlot.RewardChosen] += RewardChosen;
        sums[PairwiseLossSlot.RewardRejected] += RewardRejected;
        sums[PairwiseLossSlot.RewardMargin] += RewardMargin;
        sums[PairwiseLossSlot.Correct] += Correct;
        sums[PairwiseLossSlot.LogpChosen] += LogpChosen;
        sums[PairwiseLossSlot.LogpRejected] += LogpRejected;
        sums[PairwiseLossSlot.Logit] += Logit;
        sums[PairwiseLossSlot.BernoulliKl] += BernoulliKl;
        sums[PairwiseLossSlot.ScoreMargin] += ScoreMargin;
        sums[PairwiseLossSlot.MeanReward] += MeanReward;
        sums[PairwiseLossSlot.SquaredResidual] += SquaredResidual;
    }
}

/// <summary>The four logistic quantities of one z that the pairwise losses need (<see cref="PairwiseBradleyTerryMath.LogisticAt"/>).</summary>
internal struct Logistic
{
    /// <summary>softplus(−z) = −ln σ(z).</summary>
    public double SoftplusOfMinusZ;
    /// <summary>softplus(z) = −ln σ(−z).</summary>
    public double SoftplusOfZ;
    /// <summary>σ(z).</summary>
    public double SigmoidOfZ;
    /// <summary>σ(−z).</summary>
    public double SigmoidOfMinusZ;
}

/// <summary>
/// The per-pair fp64 math of the pairwise Bradley–Terry family, shared by the CPU kernel and the ILGPU kernel
/// (so both evaluate the same expressions). Uses only Math.Exp/Log/Abs/Max and arithmetic — what ILGPU compiles.
/// </summary>
internal static class PairwiseBradleyTerryMath
{
    /// <summary>ln(1 + u) for u ∈ [0, 1] without losing u when it is tiny: with w = 1 + u rounded,
    /// ln(w)·u/(w − 1) corrects the rounding of w (exact when w = 1, and ln 2 exactly at u = 1).</summary>
    public static double Log1p(double u)
    {
        double w = 1.0 + u;
        return w == 1.0 ? u : Math.Log(w) * u / (w - 1.0);
    }

    /// <summary>softplus(x) = ln(1 + eˣ) = max(x, 0) + ln(1 + e^(−|x|)) = −ln σ(−x); finite for every finite x.</summary>
    public static double Softplus(double x) => Math.Max(x, 0.0) + Log1p(Math.Exp(-Math.Abs(x)));

    /// <summary>σ(x) = 1/(1 + e^(−x)) from e^(−|x|), so neither tail overflows or cancels.</summary>
    public static double Sigmoid(double x)
    {
        double e = Math.Exp(-Math.Abs(x));
        return x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
    }

    /// <summary>
    /// softplus(±z) and σ(±z) at one z from a single e^(−|z|) and a single ln(1 + ·): the same expressions, bit for
    /// bit, as <see cref="Softplus"/> and <see cref="Sigmoid"/> at ±z (each of which would compute that exp again).
    /// </summary>
    public static Logistic LogisticAt(double z)
    {
        double e = Math.Exp(-Math.Abs(z));
        double log1p = Log1p(e);
        double big = 1.0 / (1.0 + e), small = e / (1.0 + e);   // σ(|z|), σ(−|z|)
        return new Logistic
        {
            SoftplusOfMinusZ = Math.Max(-z, 0.0) + log1p,
            SoftplusOfZ = Math.Max(z, 0.0) + log1p,
            SigmoidOfZ = z >= 0.0 ? big : small,
            SigmoidOfMinusZ = -z >= 0.0 ? big : small,
        };
    }

    /// <summary>
    /// Evaluates one pair. <paramref name="logpChosen"/>/<paramref name="logpRejected"/>: ln π of the two
    /// sequences; <paramref name="refChosen"/>/<paramref name="refRejected"/>: reference (or anchor) log-probs;
    /// <paramref name="tokensChosen"/>/<paramref name="tokensRejected"/>: token counts (IPO);
    /// <paramref name="rewardChosen"/>/<paramref name="rewardRejected"/>: rewards (REBEL's R̂, or the reward
    /// model's scores); <paramref name="label"/>: soft label p (distillation). Unused inputs are ignored.
    /// </summary>
    public static PairwiseLossTerms Evaluate(in PairwiseLossConstants k,
                                             double logpChosen, double logpRejected,
                                             double refChosen, double refRejected,
                                             double tokensChosen, double tokensRejected,
                                             double rewardChosen, double rewardRejected,
                                             double label)
    {
        var t = default(PairwiseLossTerms);
        switch (k.Variant)
        {
            case (int)PairwiseLossVariant.DpoSigmoid:
            case (int)PairwiseLossVariant.DpoConservative:
            case (int)PairwiseLossVariant.DpoRobust:
            case (int)PairwiseLossVariant.DpoHinge:
            case (int)PairwiseLossVariant.Ipo:
            {
                double ratioChosen = logpChosen - refChosen, ratioRejected = logpRejected - refRejected;
                t.RewardChosen = k.Beta * ratioChosen;
                t.RewardRejected = k.Beta * ratioRejected;
                t.RewardMargin = t.RewardChosen - t.RewardRejected;
                t.Correct = t.RewardChosen > t.RewardRejected ? 1.0 : 0.0;
                t.LogpChosen = logpChosen;
                t.LogpRejected = logpRejected;
                if (k.Variant == (int)PairwiseLossVariant.Ipo)
                {
                    // h̄ = ratio⁺/n⁺ − ratio⁻/n⁻;  L = (h̄ − 1/(2β))²;  ∂L/∂ln π(a±) = ±2(h̄ − 1/(2β))/n±.
                    double residual = ratioChosen / tokensChosen - ratioRejected / tokensRejected - k.IpoTarget;
                    t.Loss = residual * residual;
                    t.DChosen = 2.0 * residual / tokensChosen;
                    t.DRejected = -2.0 * residual / tokensRejected;
                    break;
                }
                double z = k.Beta * (ratioChosen - ratioRejected);
                double dz = DpoLossAndSlope(k, z, out double loss);
                t.Loss = loss;
                t.DChosen = k.Beta * dz;
                t.DRejected = -k.Beta * dz;
                break;
            }
            case (int)PairwiseLossVariant.Pmle:
            {
                // z = γ(ln π(a⁺) − ln π(a⁻));  L = −ln σ(z) = softplus(−z);  dL/dz = σ(z) − 1 = −σ(−z).
                double z = k.Gamma * (logpChosen - logpRejected);
                var l = LogisticAt(z);
                t.Loss = l.SoftplusOfMinusZ;
                double dz = -l.SigmoidOfMinusZ;
                t.DChosen = k.Gamma * dz;
                t.DRejected = -k.Gamma * dz;
                t.Logit = z;
                t.Correct = z > 0.0 ? 1.0 : 0.0;
                t.LogpChosen = logpChosen;
                t.LogpRejected = logpRejected;
                break;
            }
            case (int)PairwiseLossVariant.Distillation:
            {
                // z = γ(ln π(a₁) − ln π(a₂));  L = p·softplus(−z) + (1−p)·softplus(z);
                // dL/dz = σ(z) − p, evaluated as −p·σ(−z) + (1−p)·σ(z) (no cancellation at p ∈ {0, 1}).
                double z = k.Gamma * (logpChosen - logpRejected);
                double p = label, q = 1.0 - label;
                var l = LogisticAt(z);
                double spNeg = l.SoftplusOfMinusZ, spPos = l.SoftplusOfZ;
                t.Loss = p * spNeg + q * spPos;
                double dz = -p * l.SigmoidOfMinusZ + q * l.SigmoidOfZ;
                t.DChosen = k.Gamma * dz;
                t.DRejected = -k.Gamma * dz;
                t.Logit = z;
                t.Correct = (z > 0.0) == (p > 0.5) ? 1.0 : 0.0;
                // KL(Bern(p) ‖ Bern(σ(z))) = p(ln p − ln σ(z)) + (1−p)(ln(1−p) − ln σ(−z)), 0·ln 0 = 0.
                double kl = 0.0;
                if (p > 0.0) kl += p * (Math.Log(p) + spNeg);
                if (q > 0.0) kl += q * (Math.Log(q) + spPos);
                t.BernoulliKl = kl;
                break;
            }
            case (int)PairwiseLossVariant.Rebel:
            {
                // r = [ln π(a₁) − ln π_t(a₁)] − [ln π(a₂) − ln π_t(a₂)] − η(R̂₁ − R̂₂);  L = r²;  ∂L/∂ln π(a₁,₂) = ±2r.
                double residual = (logpChosen - refChosen) - (logpRejected - refRejected) - k.Eta * (rewardChosen - rewardRejected);
                t.Loss = residual * residual;
                t.DChosen = 2.0 * residual;
                t.DRejected = -2.0 * residual;
                t.SquaredResidual = t.Loss;
                break;
            }
            case (int)PairwiseLossVariant.RewardModel:
            {
                // u = R⁺ − R⁻ − m, s = R⁺ + R⁻;  L = softplus(−u) + c·s²;  ∂L/∂R± = ∓σ(−u) + 2cs.
                double delta = rewardChosen - rewardRejected;
                double u = delta - k.Margin;
                double s = rewardChosen + rewardRejected;
                var l = LogisticAt(u);
                t.Loss = l.SoftplusOfMinusZ + k.Centring * s * s;
                double sigNeg = l.SigmoidOfMinusZ, centre = 2.0 * k.Centring * s;
                t.DChosen = -sigNeg + centre;
                t.DRejected = sigNeg + centre;
                t.Correct = rewardChosen > rewardRejected ? 1.0 : 0.0;
                t.ScoreMargin = delta;
                t.MeanReward = 0.5 * s;
                break;
            }
        }
        return t;
    }

    /// <summary>The DPO-family loss at z (written to <paramref name="loss"/>) and dL/dz (returned).</summary>
    private static double DpoLossAndSlope(in PairwiseLossConstants k, double z, out double loss)
    {
        switch (k.Variant)
        {
            case (int)PairwiseLossVariant.DpoConservative:
            {
                // L = (1−ε)·softplus(−z) + ε·softplus(z);  dL/dz = −(1−ε)σ(−z) + εσ(z).
                double e = k.Epsilon;
                var l = LogisticAt(z);
                loss = (1.0 - e) * l.SoftplusOfMinusZ + e * l.SoftplusOfZ;
                return -(1.0 - e) * l.SigmoidOfMinusZ + e * l.SigmoidOfZ;
            }
            case (int)PairwiseLossVariant.DpoRobust:
            {
                // L = [(1−ε)·softplus(−z) − ε·softplus(z)]/(1−2ε);  dL/dz = [−(1−ε)σ(−z) − εσ(z)]/(1−2ε).
                double e = k.Epsilon;
                var l = LogisticAt(z);
                loss = ((1.0 - e) * l.SoftplusOfMinusZ - e * l.SoftplusOfZ) * k.RobustScale;
                return (-(1.0 - e) * l.SigmoidOfMinusZ - e * l.SigmoidOfZ) * k.RobustScale;
            }
            case (int)PairwiseLossVariant.DpoHinge:
                // L = max(0, 1 − z);  dL/dz = −1[z < 1].
                loss = Math.Max(0.0, 1.0 - z);
                return z < 1.0 ? -1.0 : 0.0;
            default:
            {
                // Sigmoid: L = −ln σ(z) = softplus(−z);  dL/dz = −σ(−z).
                var l = LogisticAt(z);
                loss = l.SoftplusOfMinusZ;
                return -l.SigmoidOfMinusZ;
            }
        }
    }
}
