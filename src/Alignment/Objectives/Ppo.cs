namespace DistAlign.Alignment.Objectives;

/// <summary>What the clipped policy loss measured (TRL names in comments).</summary>
public readonly record struct PolicyLossMetrics(double Loss, double ClipFraction, double ApproxKl, double MeanRatio);

/// <summary>What the clipped value loss measured.</summary>
public readonly record struct ValueLossMetrics(double Loss, double ClipFraction);

/// <summary>
/// The PPO math that RLHF and reverse-KL minimisation share, per response token (OBJECTIVES.md, "RLHF with PPO"):
/// generalised advantage estimation, advantage whitening, the clipped policy loss and the clipped value loss,
/// each returning its gradient. All means are over the tokens given.
/// </summary>
public static class Ppo
{
    /// <summary>
    /// GAE over one sequence of T tokens: δ_t = r_t + γ·V_{t+1} − V_t (V_T = 0 past the last token),
    /// A_t = δ_t + γλ·A_{t+1}, returns_t = A_t + V_t.
    /// </summary>
    public static void Gae(ReadOnlySpan<float> rewards, ReadOnlySpan<float> values, double gamma, double lambda,
                           Span<float> advantages, Span<float> returns)
    {
        int t = rewards.Length;
        if (values.Length != t || advantages.Length != t || returns.Length != t)
            throw new ArgumentException($"rewards, values, advantages and returns must all have {t} entries");
        double next = 0, nextValue = 0;
        for (int i = t - 1; i >= 0; i--)
        {
            double delta = rewards[i] + gamma * nextValue - values[i];
            next = delta + gamma * lambda * next;
            advantages[i] = (float)next;
            returns[i] = (float)(next + values[i]);
            nextValue = values[i];
        }
    }

    /// <summary>
    /// In place: a ← (a − mean) / (std + 1e-8), population std over the span (fp64 sums); with
    /// <paramref name="scale"/> = false only a ← a − mean (a baseline that keeps the advantages' units, for when
    /// another loss term must keep its weight relative to them).
    /// </summary>
    public static void Whiten(Span<float> advantages, bool scale = true)
    {
        int n = advantages.Length;
        if (n == 0) return;
        double mean = 0;
        foreach (float a in advantages) mean += a;
        mean /= n;
        double variance = 0;
        foreach (float a in advantages) variance += (a - mean) * (a - mean);
        double factor = scale ? 1.0 / (Math.Sqrt(variance / n) + 1e-8) : 1.0;
        for (int i = 0; i < n; i++) advantages[i] = (float)((advantages[i] - mean) * factor);
    }

    /// <summary>
    /// L = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1−ε, 1+ε)), ρ_t = exp(ln π − ln π_old). Writes ∂L/∂ln π into
    /// <paramref name="dLogProbs"/> (overwrites): −A·ρ/n where the unclipped term is the max or ρ is inside the
    /// clip range, else 0. Metrics: `policy/clipfrac_avg` (fraction where the clipped term is strictly larger),
    /// `policy/approxkl_avg` = mean ½(ln π − ln π_old)², `val/ratio` = mean ρ.
    /// </summary>
    public static PolicyLossMetrics ClippedPolicyLoss(ReadOnlySpan<float> logProbs, ReadOnlySpan<float> oldLogProbs, ReadOnlySpan<float> advantages,
                                                      double clip, Span<float> dLogProbs)
    {
        int n = logProbs.Length;
        if (oldLogProbs.Length != n || advantages.Length != n || dLogProbs.Length != n)
            throw new ArgumentException($"log-probs, old log-probs, advantages and their gradient must all have {n} entries");
        if (!(clip > 0)) throw new ArgumentException($"the clip range must be > 0 (got {clip})");
        if (n == 0) return default;
        double loss = 0, clipped = 0, approxKl = 0, ratios = 0;
        for (int i = 0; i < n; i++)
        {
            double diff = (double)logProbs[i] - oldLogProbs[i];
            double ratio = Math.Exp(diff), a = advantages[i];
            double unclippedLoss = -a * ratio;
            double clippedRatio = Math.Clamp(ratio, 1 - clip, 1 + clip);
            double clippedLoss = -a * clippedRatio;
            bool clippedWins = clippedLoss > unclippedLoss;
            loss += clippedWins ? clippedLoss : unclippedLoss;
            if (clippedWins) clipped++;
            bool gradientFlows = !clippedWins || clippedRatio == ratio;
            dLogProbs[i] = gradientFlows ? (float)(-a * ratio / n) : 0f;
            approxKl += 0.5 * diff * diff;
            ratios += ratio;
        }
        return new PolicyLossMetrics(loss / n, clipped / n, approxKl / n, ratios / n);
    }

    /// <summary>
    /// L = ½·mean_t max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε, ε) − R_t)²). Writes ∂L/∂V (overwrites).
    /// Metric: `val/clipfrac_avg` (fraction where the clipped term is strictly larger).
    /// </summary>
    public static ValueLossMetrics ClippedValueLoss(ReadOnlySpan<float> values, ReadOnlySpan<float> oldValues, ReadOnlySpan<float> returns,
                                                    double clip, Span<float> dValues)
    {
        int n = values.Length;
        if (oldValues.Length != n || returns.Length != n || dValues.Length != n)
            throw new ArgumentException($"values, old values, returns and their gradient must all have {n} entries");
        if (!(clip > 0)) throw new ArgumentException($"the clip range must be > 0 (got {clip})");
        if (n == 0) return default;
        double loss = 0, clipped = 0;
        for (int i = 0; i < n; i++)
        {
            double v = values[i], old = oldValues[i], r = returns[i];
            double step = v - old;
            double clippedStep = Math.Clamp(step, -clip, clip);
            double unclippedError = v - r, clippedError = old + clippedStep - r;
            bool clippedWins = clippedError * clippedError > unclippedError * unclippedError;
            loss += 0.5 * (clippedWins ? clippedError * clippedError : unclippedError * unclippedError);
            if (clippedWins) clipped++;
            double gradient = clippedWins ? (clippedStep == step ? clippedError : 0) : unclippedError;
            dValues[i] = (float)(gradient / n);
        }
        return new ValueLossMetrics(loss / n, clipped / n);
    }
}
