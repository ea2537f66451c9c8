using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment;

/// <summary>
/// SFT, L = −(1/T) Σ ln π(y_t | ·): its value and gradient against closed forms on the tabular policy and finite
/// differences on a tiny GPT, and convergence to the empirical response frequencies per context.
/// </summary>
public class SftObjectiveTests
{
    private const int Contexts = 3, Responses = 4;

    private static TabularPolicy Table()
    {
        var policy = new TabularPolicy(Contexts, Responses);
        Numerics.RandomFloats(policy.Logits.Length, 21).CopyTo(policy.Logits);
        return policy;
    }

    private static readonly List<PromptResponse> TableBatch =
        [new([0], [1]), new([2], [3]), new([0], [1]), new([0], [2]), new([1], [0])];

    [Test]
    public void TabularLossAndGradientMatchTheClosedForm()
    {
        using var policy = Table();
        policy.ZeroGradients();
        var m = new SftObjective().Accumulate(policy, TableBatch);
        int t = TableBatch.Count;

        double loss = 0;
        var expected = new double[Contexts * Responses];
        foreach (var (prompt, response) in TableBatch)
        {
            int x = prompt[0], y = response[0];
            var p = policy.Probabilities(x);
            loss -= Math.Log(p[y]) / t;
            // ∂L/∂α[x,k] = −(1[k = y] − p_k)/T per example
            for (int k = 0; k < Responses; k++) expected[x * Responses + k] -= ((k == y ? 1 : 0) - p[k]) / t;
        }
        Assert.That(m.Tokens, Is.EqualTo(t));
        Assert.That(m.Sequences, Is.EqualTo(t));
        Assert.That(m.Loss, Is.EqualTo(loss).Within(1e-6));
        Assert.That(m.MeanTokenLogProb, Is.EqualTo(-m.Loss));
        Assert.That(m.MeanSequenceLogProb, Is.EqualTo(-m.Loss).Within(1e-12), "one token per response");
        Numerics.AssertClose(policy.GradientsForTests, expected, 1e-6, 1e-5, "∂L/∂α");
    }

    [Test]
    public void TabularGradientMatchesFiniteDifferences()
    {
        using var policy = Table();
        policy.ZeroGradients();
        new SftObjective().Accumulate(policy, TableBatch);
        var analytic = policy.GradientsForTests.ToArray();

        double Loss()
        {
            double l = 0;
            foreach (var (prompt, response) in TableBatch) l -= Math.Log(policy.Probabilities(prompt[0])[response[0]]);
            return l / TableBatch.Count;
        }
        var logits = policy.Logits;
        for (int i = 0; i < logits.Length; i++)
        {
            float saved = logits[i];
            logits[i] = saved + 1e-2f;
            double up = Loss();
            logits[i] = saved - 1e-2f;
            double down = Loss();
            logits[i] = saved;
            double fd = (up - down) / ((double)(saved + 1e-2f) - (saved - 1e-2f));
            Assert.That(analytic[i], Is.EqualTo(fd).Within(1e-4), $"logit {i}");
        }
    }

    private static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 8, VocabSize: 17, MaxSequenceLength: 12);

    private static readonly List<PromptResponse> GptBatch =
    [
        new([16, 3, 4], [5, 6]),
        new([16], [7, 8, 9, 10]),
        new([16, 1, 2, 3, 4, 5], [11, 12, 13]),
        new([16, 2], [1]),
    ];

    [Test]
    public void GptGradientMatchesFiniteDifferences()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(5);
        var p = model.Parameters;
        var noise = Numerics.RandomFloats(p.Length, 6, 0.3);
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        using var policy = new GptPolicy(model, new AdamWSettings(WeightDecay: 0), ownsModel: true);

        policy.ZeroGradients();
        var m = new SftObjective().Accumulate(policy, GptBatch);
        var analytic = model.Gradients.ToArray();
        Assert.That(m.Tokens, Is.EqualTo(10));

        var tokens = new float[m.Tokens];
        double Loss()
        {
            policy.Score(GptBatch, tokens);
            double sum = 0;
            foreach (float lp in tokens) sum += lp;
            return -sum / tokens.Length;
        }
        Assert.That(Loss(), Is.EqualTo(m.Loss).Within(1e-12), "the metric is the loss");
        Assert.That(m.MeanSequenceLogProb, Is.EqualTo(-m.Loss * 10 / 4).Within(1e-9));

        // fp32 model: central differences with a step that dwarfs rounding, on a spread of parameters.
        Numerics.AssertSampledGradient(p, analytic, Loss, samples: 40, seed: 8);
    }

    [Test]
    public void TabularSftConvergesToTheEmpiricalFrequencies()
    {
        int[,] counts = { { 5, 1, 2, 2 }, { 1, 1, 1, 7 }, { 3, 3, 2, 2 } };
        var data = new List<PromptResponse>();
        for (int x = 0; x < Contexts; x++)
            for (int y = 0; y < Responses; y++)
                for (int c = 0; c < counts[x, y]; c++) data.Add(new([x], [y]));
        // Interleave contexts so no minibatch order matters (full batch anyway).
        data = [.. data.OrderBy(s => (s.Response[0] * 7 + s.Prompt[0] * 3) % 11)];

        double minimum = 0;   // −(1/T) Σ n_xy ln(n_xy / n_x): the loss at the empirical conditionals
        for (int x = 0; x < Contexts; x++)
        {
            int nx = 0;
            for (int y = 0; y < Responses; y++) nx += counts[x, y];
            for (int y = 0; y < Responses; y++) minimum -= counts[x, y] * Math.Log((double)counts[x, y] / nx) / data.Count;
        }

        using var policy = Table();
        var objective = new SftObjective();
        SftMetrics last = null!;
        for (int step = 1; step <= 1500; step++)
        {
            policy.ZeroGradients();
            last = objective.Accumulate(policy, data);
            policy.OptimizerStep(step, step <= 1000 ? 0.05f : 0.005f);
        }

        Assert.That(last.Loss, Is.EqualTo(minimum).Within(1e-5), "the minimum of the mean NLL");
        for (int x = 0; x < Contexts; x++)
        {
            int nx = 0;
            for (int y = 0; y < Responses; y++) nx += counts[x, y];
            var expected = new double[Responses];
            for (int y = 0; y < Responses; y++) expected[y] = (double)counts[x, y] / nx;
            Numerics.AssertClose(policy.Probabilities(x), expected, 2e-3, 0, $"π(· | {x})");
        }
    }

    [Test]
    public void ChosenSequencesAreThePromptsWithTheirChosenResponses()
    {
        var pairs = new List<PreferencePair> { new([1], [2, 3], [4]), new([5, 6], [7], [8, 9]) };
        var s = SftObjective.ChosenSequences(pairs);
        Assert.That(s.Select(q => (q.Prompt, q.Response)), Is.EqualTo(new[] { (new[] { 1 }, new[] { 2, 3 }), (new[] { 5, 6 }, new[] { 7 }) }));
    }

    [Test]
    public void AnEmptyBatchIsRejected()
    {
        using var policy = Table();
        Assert.Throws<ArgumentException>(() => new SftObjective().Accumulate(policy, []));
    }
}
