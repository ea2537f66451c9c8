using DistAlign.Alignment.Training;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Experiments;

/// <summary>
/// RLHF or reverse KL trained by <see cref="PpoTrainer"/> on the tabular policy (its value table as the critic), against
/// R̂: the same trainer as the GPT's. Sampled rollouts make each fit noisy and ~100× dearer than the closed forms, so
/// these are not in the default method set; <see cref="TabularExperimentOptions.PpoCheck"/> runs them at the β the
/// closed form was tuned to, to show how close PPO gets to the optimum it is meant to find.
/// </summary>
/// <param name="objective">RLHF, or reverse KL with γ = the preference temperature</param>
/// <param name="iterations">PPO iterations</param>
public sealed class TabularPpo(PpoObjective objective, int iterations = 200) : ITabularMethod
{
    /// <summary>Prompts (contexts, drawn in epochs over all X) sampled per PPO iteration.</summary>
    public const int PromptsPerIteration = 512;

    public string Name => objective == PpoObjective.Rlhf ? "RLHF-PPO" : "RKL-PPO";
    public string ParameterName => "β";
    public IReadOnlyList<double> Grid { get; } = TabularMethods.HalfDecades(-3, 3, withZero: objective == PpoObjective.ReverseKl);
    public string How => $"PpoTrainer, {iterations} iterations × {PromptsPerIteration} rollouts, 4 epochs × 4 minibatches, lr 0.05 → 0.001";

    public TabularFit Fit(TabularRunInput input, double beta)
    {
        var p = input.Problem;
        var (policy, reference) = TabularMethods.StartAtReference(p);
        using var _p = policy;
        using var _r = reference;
        var prompts = Enumerable.Range(0, p.Contexts).Select(x => new[] { x }).ToList();
        var options = new PpoOptions
        {
            Objective = objective,
            Beta = beta,
            Gamma = objective == PpoObjective.ReverseKl ? p.Gamma : 0,
            Steps = iterations,
            PromptsPerIteration = PromptsPerIteration,
            Epochs = 4,
            Minibatches = 4,
            Sampling = new SamplingOptions(1),
            LearningRate = 0.05f,
            MinLearningRateFraction = 0.02f,
            GradientClip = 0,
            Seed = p.Seed,
        };
        var trainer = new PpoTrainer(policy, reference, input.Reward, prompts, options);
        AlignmentStepReport? last = null;
        while (trainer.Step < options.Steps) last = trainer.TrainStep();
        return new TabularFit(policy.Logits.ToArray(), last?["grad_norm"] ?? 0, iterations);
    }
}
