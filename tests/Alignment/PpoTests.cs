using DistAlign.Alignment.Objectives;
using DistAlign.Tests.TestSupport;

namespace DistAlign.Tests.Alignment;

public class PpoTests
{
    [Test]
    public void GaeMatchesAHandComputedExample()
    {
        // γ = 1, λ = 0.95; rewards only at the end, as in RLHF (plus per-token KL penalties).
        float[] rewards = [-0.1f, 0.2f, 1.0f];
        float[] values = [0.5f, 0.4f, 0.3f];
        var adv = new float[3];
        var ret = new float[3];
        Ppo.Gae(rewards, values, gamma: 1.0, lambda: 0.95, adv, ret);
        // δ2 = 1.0 + 0 − 0.3 = 0.7;          A2 = 0.7
        // δ1 = 0.2 + 0.3 − 0.4 = 0.1;        A1 = 0.1 + 0.95·0.7 = 0.765
        // δ0 = −0.1 + 0.4 − 0.5 = −0.2;      A0 = −0.2 + 0.95·0.765 = 0.52675
        Assert.That(adv, Is.EqualTo(new[] { 0.52675f, 0.765f, 0.7f }).Within(1e-6f));
        Assert.That(ret, Is.EqualTo(new[] { 1.02675f, 1.165f, 1.0f }).Within(1e-6f));
    }

    [Test]
    public void WhitenedAdvantagesHaveZeroMeanAndUnitStd()
    {
        var a = Numerics.RandomFloats(101, 3, 2.0);
        for (int i = 0; i < a.Length; i++) a[i] += 5;
        Ppo.Whiten(a);
        double mean = a.Average(x => (double)x), std = Math.Sqrt(a.Average(x => (x - mean) * (x - mean)));
        Assert.That(mean, Is.EqualTo(0).Within(1e-6));
        Assert.That(std, Is.EqualTo(1).Within(1e-5));
    }

    [Test]
    public void ClippedLossGradientsMatchFiniteDifferencesAwayFromTheKinks()
    {
        var rng = new Random(2);
        int n = 40;
        var logp = new float[n];
        var old = new float[n];
        var adv = new float[n];
        var values = new float[n];
        var oldValues = new float[n];
        var returns = new float[n];
        for (int i = 0; i < n; i++)
        {
            old[i] = (float)(-rng.NextDouble() * 3);
            logp[i] = old[i] + (float)(rng.NextDouble() * 0.8 - 0.4);   // ratios in [0.67, 1.49]: both sides of the clip
            adv[i] = (float)(rng.NextDouble() * 2 - 1);
            oldValues[i] = (float)(rng.NextDouble() * 2 - 1);
            values[i] = oldValues[i] + (float)(rng.NextDouble() * 0.8 - 0.4);
            returns[i] = (float)(rng.NextDouble() * 2 - 1);
        }
        var dLogp = new float[n];
        var dValues = new float[n];
        var pm = Ppo.ClippedPolicyLoss(logp, old, adv, 0.2, dLogp);
        var vm = Ppo.ClippedValueLoss(values, oldValues, returns, 0.2, dValues);
        Assert.That(pm.ClipFraction, Is.GreaterThan(0).And.LessThan(1), "the example must exercise both branches");
        Assert.That(vm.ClipFraction, Is.GreaterThan(0).And.LessThan(1));

        // Central differences, skipping tokens where the two one-sided slopes disagree (a kink within ±h).
        const float h = 1e-3f;
        int checkedTokens = 0;
        double f0 = pm.Loss, g0 = vm.Loss;
        for (int i = 0; i < n; i++)
        {
            float saved = logp[i];
            logp[i] = saved + h; double up = Ppo.ClippedPolicyLoss(logp, old, adv, 0.2, new float[n]).Loss;
            logp[i] = saved - h; double down = Ppo.ClippedPolicyLoss(logp, old, adv, 0.2, new float[n]).Loss;
            logp[i] = saved;
            if (Math.Abs((up - f0) - (f0 - down)) < 1e-6)
            {
                Assert.That(dLogp[i], Is.EqualTo((up - down) / (2 * h)).Within(2e-4), $"policy token {i}");
                checkedTokens++;
            }

            saved = values[i];
            values[i] = saved + h; up = Ppo.ClippedValueLoss(values, oldValues, returns, 0.2, new float[n]).Loss;
            values[i] = saved - h; down = Ppo.ClippedValueLoss(values, oldValues, returns, 0.2, new float[n]).Loss;
            values[i] = saved;
            if (Math.Abs((up - g0) - (g0 - down)) < 1e-6)
            {
                Assert.That(dValues[i], Is.EqualTo((up - down) / (2 * h)).Within(2e-4), $"value token {i}");
                checkedTokens++;
            }
        }
        Assert.That(checkedTokens, Is.GreaterThan(70), "nearly every token is away from a kink");
    }

    [Test]
    public void AtTheOldPolicyTheRatioIsOneAndNothingIsClipped()
    {
        float[] logp = [-1f, -2f, -0.5f];
        float[] adv = [1f, -1f, 0.3f];
        var d = new float[3];
        var m = Ppo.ClippedPolicyLoss(logp, logp, adv, 0.2, d);
        Assert.That(m.MeanRatio, Is.EqualTo(1.0));
        Assert.That(m.ClipFraction, Is.EqualTo(0));
        Assert.That(m.ApproxKl, Is.EqualTo(0));
        Assert.That(d, Is.EqualTo(new[] { -1f / 3, 1f / 3, -0.1f }).Within(1e-7f));
    }
}
