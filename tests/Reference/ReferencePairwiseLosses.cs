using DistAlign.Kernels.Cpu;

namespace DistAlign.Tests.Reference;

/// <summary>fp64 inputs of the pairwise losses (what the fp32 kernel reads, widened). Unused arrays may be null.</summary>
public sealed record ReferencePairwiseInputs(
    double[] Logps, double[]? RefLogps, int[]? TokenCounts, double[]? Rewards,
    int[] Chosen, int[] Rejected, double[]? Labels);

/// <summary>
/// fp64 reference for the pairwise Bradley–Terry family, written straight from OBJECTIVES.md, one closed form
/// per variant, with no shared code with the kernel. Gradients are taken from these by finite differences.
/// </summary>
public static class ReferencePairwiseLosses
{
    /// <summary>ln σ(z), with the two branches that keep each tail finite.</summary>
    public static double LogSigmoid(double z) => z >= 0 ? -Math.Log(1.0 + Math.Exp(-z)) : z - Math.Log(1.0 + Math.Exp(z));

    public static double Sigmoid(double z) => z >= 0 ? 1.0 / (1.0 + Math.Exp(-z)) : Math.Exp(z) / (1.0 + Math.Exp(z));

    /// <summary>The loss of every pair.</summary>
    public static double[] PairLosses(PairwiseLossSettings s, ReferencePairwiseInputs x)
    {
        var losses = new double[x.Chosen.Length];
        for (int i = 0; i < losses.Length; i++) losses[i] = PairLoss(s, x, i);
        return losses;
    }

    /// <summary>Mean over pairs (0 for no pairs): the scalar whose gradient the kernel accumulates.</summary>
    public static double MeanLoss(PairwiseLossSettings s, ReferencePairwiseInputs x)
    {
        var l = PairLosses(s, x);
        return l.Length == 0 ? 0.0 : l.Sum() / l.Length;
    }

    private static double PairLoss(PairwiseLossSettings s, ReferencePairwiseInputs x, int i)
    {
        int a = x.Chosen[i], b = x.Rejected[i];
        switch (s.Variant)
        {
            case PairwiseLossVariant.DpoSigmoid:
                return -LogSigmoid(DpoZ(s, x, i));
            case PairwiseLossVariant.DpoConservative:
            {
                double z = DpoZ(s, x, i);
                return -(1 - s.Epsilon) * LogSigmoid(z) - s.Epsilon * LogSigmoid(-z);
            }
            case PairwiseLossVariant.DpoRobust:
            {
                double z = DpoZ(s, x, i);
                return (-(1 - s.Epsilon) * LogSigmoid(z) + s.Epsilon * LogSigmoid(-z)) / (1 - 2 * s.Epsilon);
            }
            case PairwiseLossVariant.DpoHinge:
                return Math.Max(0.0, 1.0 - DpoZ(s, x, i));
            case PairwiseLossVariant.Ipo:
            {
                double hbar = (x.Logps[a] - x.RefLogps![a]) / x.TokenCounts![a] - (x.Logps[b] - x.RefLogps[b]) / x.TokenCounts[b];
                double d = hbar - 1.0 / (2.0 * s.Beta);
                return d * d;
            }
            case PairwiseLossVariant.Pmle:
                return -LogSigmoid(s.Gamma * (x.Logps[a] - x.Logps[b]));
            case PairwiseLossVariant.Distillation:
            {
                double z = s.Gamma * (x.Logps[a] - x.Logps[b]);
                double p = x.Labels![i];
                return -(p * LogSigmoid(z) + (1 - p) * LogSigmoid(-z));
            }
            case PairwiseLossVariant.Rebel:
            {
                double r = (x.Logps[a] - x.RefLogps![a]) - (x.Logps[b] - x.RefLogps[b]) - s.Eta * (x.Rewards![a] - x.Rewards[b]);
                return r * r;
            }
            case PairwiseLossVariant.RewardModel:
            {
                double ra = x.Rewards![a], rb = x.Rewards[b];
                return -LogSigmoid(ra - rb - s.Margin) + s.Centring * (ra + rb) * (ra + rb);
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(s));
        }
    }

    private static double DpoZ(PairwiseLossSettings s, ReferencePairwiseInputs x, int i)
    {
        int a = x.Chosen[i], b = x.Rejected[i];
        return s.Beta * ((x.Logps[a] - x.RefLogps![a]) - (x.Logps[b] - x.RefLogps[b]));
    }

    /// <summary>The variant's metrics by name (TRL names), means over pairs; "loss" included.</summary>
    public static Dictionary<string, double> Metrics(PairwiseLossSettings s, ReferencePairwiseInputs x)
    {
        int n = x.Chosen.Length;
        double Mean(Func<int, double> f)
        {
            if (n == 0) return 0.0;
            double sum = 0;
            for (int i = 0; i < n; i++) sum += f(i);
            return sum / n;
        }
        var m = new Dictionary<string, double> { ["loss"] = MeanLoss(s, x) };
        int A(int i) => x.Chosen[i];
        int B(int i) => x.Rejected[i];
        switch (s.Variant)
        {
            case PairwiseLossVariant.DpoSigmoid or PairwiseLossVariant.DpoConservative or PairwiseLossVariant.DpoRobust
                or PairwiseLossVariant.DpoHinge or PairwiseLossVariant.Ipo:
            {
                double Rc(int i) => s.Beta * (x.Logps[A(i)] - x.RefLogps![A(i)]);
                double Rr(int i) => s.Beta * (x.Logps[B(i)] - x.RefLogps![B(i)]);
                m["rewards/chosen"] = Mean(Rc);
                m["rewards/rejected"] = Mean(Rr);
                m["rewards/margins"] = Mean(i => Rc(i) - Rr(i));
                m["rewards/accuracies"] = Mean(i => Rc(i) > Rr(i) ? 1 : 0);
                m["logps/chosen"] = Mean(i => x.Logps[A(i)]);
                m["logps/rejected"] = Mean(i => x.Logps[B(i)]);
                break;
            }
            case PairwiseLossVariant.Pmle:
                m["logits"] = Mean(i => s.Gamma * (x.Logps[A(i)] - x.Logps[B(i)]));
                m["accuracy"] = Mean(i => x.Logps[A(i)] > x.Logps[B(i)] ? 1 : 0);
                m["logps/chosen"] = Mean(i => x.Logps[A(i)]);
                m["logps/rejected"] = Mean(i => x.Logps[B(i)]);
                break;
            case PairwiseLossVariant.Distillation:
            {
                double Z(int i) => s.Gamma * (x.Logps[A(i)] - x.Logps[B(i)]);
                m["logits"] = Mean(Z);
                m["accuracy"] = Mean(i => (Z(i) > 0) == (x.Labels![i] > 0.5) ? 1 : 0);
                // KL(Bern(p) ‖ Bern(σ(z))) = BCE − H(p).
                m["bernoulli_kl"] = Mean(i =>
                {
                    double p = x.Labels![i];
                    double entropy = (p > 0 ? -p * Math.Log(p) : 0) + (p < 1 ? -(1 - p) * Math.Log(1 - p) : 0);
                    return PairLoss(s, x, i) - entropy;
                });
                break;
            }
            case PairwiseLossVariant.Rebel:
                m["regression_error"] = Mean(i => PairLoss(s, x, i));
                break;
            case PairwiseLossVariant.RewardModel:
                m["accuracy"] = Mean(i => x.Rewards![A(i)] > x.Rewards[B(i)] ? 1 : 0);
                m["margin"] = Mean(i => x.Rewards![A(i)] - x.Rewards[B(i)]);
                m["mean_reward"] = Mean(i => 0.5 * (x.Rewards![A(i)] + x.Rewards[B(i)]));
                break;
        }
        return m;
    }
}
