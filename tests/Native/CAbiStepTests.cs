using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Native;
using DistAlign.Tests.Alignment;
using DistAlign.Transformer.Model;
using static DistAlign.Tests.Native.CAbiCalls;

namespace DistAlign.Tests.Native;

/// <summary>
/// The training steps of the C ABI — distalign_sft_step, distalign_pmle_step, distalign_distill_step (and
/// distalign_dpo_step's weights) — against the same steps taken in managed code (the objective's Accumulate, clipping,
/// AdamW): the same loss, KL estimate and weights after every step, bit for bit. Bad arguments get their own status and a
/// message that names the argument, and leave the weights as they were.
/// </summary>
public unsafe class CAbiStepTests
{
    private const int Eot = 2256;
    private string folder = "";
    private string path = "";

    [SetUp]
    public void MakeModel()
    {
        folder = Directory.CreateTempSubdirectory("distalign-cabi-steps-").FullName;
        path = Path.Combine(folder, "pi0.safetensors");
        TinyAlignmentSetup.WriteModel(path);
    }

    [TearDown]
    public void RemoveFolder() => Directory.Delete(folder, recursive: true);

    // Two pairs (prompts [EOT, 17, 300] and [EOT, 5]) with responses of different lengths, as flat arrays with offsets.
    private static readonly int[] Prompts = [Eot, 17, 300, Eot, 5], PromptOffsets = [0, 3, 5];
    private static readonly int[] Chosen = [42, 7, 1999, 8], ChosenOffsets = [0, 3, 4];
    private static readonly int[] Rejected = [3, 99, 100, 101], RejectedOffsets = [0, 1, 4];
    private static readonly List<PreferencePair> Data = [new([Eot, 17, 300], [42, 7, 1999], [3]), new([Eot, 5], [8], [99, 100, 101])];
    private static readonly float[] Labels = [0.8f, 0.25f];

    private sealed class ManagedModels : IDisposable
    {
        public readonly Gpt Gpt;
        public readonly GptPolicy Policy, Reference;

        public ManagedModels(string path)
        {
            var (gpt, _) = GptCheckpoint.LoadModel(path);
            var (gpt0, _) = GptCheckpoint.LoadModel(path);
            Gpt = gpt;
            Policy = new GptPolicy(gpt, new AdamWSettings(), ownsModel: true);
            Reference = new GptPolicy(gpt0, new AdamWSettings(), ownsModel: true);
        }

        public void Dispose()
        {
            Policy.Dispose();
            Reference.Dispose();
        }
    }

    // What a managed trainer does per step, around the objective's Accumulate (which returns the loss and KL estimate).
    private static (double Loss, double Kl) ManagedStep(GptPolicy policy, int step, float learningRate, float clip, Func<(double, double)> accumulate)
    {
        policy.ZeroGradients();
        var result = accumulate();
        policy.ClipGradients(clip);
        policy.OptimizerStep(step, learningRate);
        return result;
    }

    // Runs `steps` steps through the C ABI and in managed code from the same checkpoint; asserts the same loss and KL
    // estimate at every step and the same weights at the end (the ABI's model saved and read back); returns the losses.
    private float[] AssertStepsAreTheManagedSteps(int steps, Func<ulong, ulong, int, (int Status, float Loss, float Kl)> viaAbi,
                                                  Func<ManagedModels, int, (double Loss, double Kl)> managedStep)
    {
        Assert.That(Load(path, out ulong policy), Is.EqualTo(Ok));
        Assert.That(Load(path, out ulong reference), Is.EqualTo(Ok));
        using var managed = new ManagedModels(path);
        var losses = new float[steps];
        for (int step = 1; step <= steps; step++)
        {
            var (status, loss, kl) = viaAbi(policy, reference, step);
            Assert.That(status, Is.EqualTo(Ok), LastError());
            Assert.That(LastError(), Is.Empty);
            var expected = managedStep(managed, step);
            Assert.That(loss, Is.EqualTo((float)expected.Loss), $"step {step}: the same loss");
            Assert.That(kl, Is.EqualTo((float)expected.Kl), $"step {step}: the same KL estimate");
            losses[step - 1] = loss;
        }
        string saved = Path.Combine(folder, "after.safetensors");
        Assert.That(Save(policy, saved), Is.EqualTo(Ok), LastError());
        var (gpt, _) = GptCheckpoint.LoadModel(saved);
        using (gpt)
        {
            float[] viaAbiWeights = gpt.Parameters.ToArray(), managedWeights = managed.Gpt.Parameters.ToArray();
            int differing = viaAbiWeights.Zip(managedWeights).Count(w => BitConverter.SingleToInt32Bits(w.First) != BitConverter.SingleToInt32Bits(w.Second));
            Assert.That(differing, Is.Zero, $"the weights after {steps} steps are the managed run's, bit for bit ({differing} of {managedWeights.Length} differ)");
            using var pi0 = GptCheckpoint.LoadModel(path).Model;
            Assert.That(managedWeights.SequenceEqual(pi0.Parameters.ToArray()), Is.False, "the steps did move the weights");
        }
        Assert.That(Free(policy), Is.EqualTo(Ok));
        Assert.That(Free(reference), Is.EqualTo(Ok));
        return losses;
    }

    // ln π(response | prompt) of each (prompt, response), in double, from the scorer on π0.
    private double[] LogProbs(params PromptResponse[] sequences)
    {
        var (gpt, _) = GptCheckpoint.LoadModel(path);
        using var policy = new GptPolicy(gpt, new AdamWSettings(), ownsModel: true);
        return SequenceScorer.Score(policy, sequences).Select(s => (double)s.LogProb).ToArray();
    }

    private static double LogSigmoid(double x) => -(Math.Max(-x, 0) + Math.Log(1 + Math.Exp(-Math.Abs(x))));

    [Test]
    public void SftStepsAreTheManagedStepsToTheBit()
    {
        int[] responses = [42, 7, 1999, 8, 9], responseOffsets = [0, 3, 5];
        List<PromptResponse> batch = [new([Eot, 17, 300], [42, 7, 1999]), new([Eot, 5], [8, 9])];
        var sft = new SftObjective();
        var losses = AssertStepsAreTheManagedSteps(3,
            (policy, _, step) => (SftStep(policy, 2, Prompts, PromptOffsets, responses, responseOffsets, 1e-2f, 1f, step, out float loss), loss, 0f),
            (m, step) => ManagedStep(m.Policy, step, 1e-2f, 1f, () => (sft.Accumulate(m.Policy, batch).Loss, 0)));

        // step 1's loss is the mean NLL over the 5 response tokens (a token-weighted mean, not a mean over sequences)
        var (gpt, _) = GptCheckpoint.LoadModel(path);
        using var pi0 = new GptPolicy(gpt, new AdamWSettings(), ownsModel: true);
        var scores = SequenceScorer.Score(pi0, batch);
        double nll = -scores.Sum(s => s.TokenLogProbs.Sum(x => (double)x)) / 5;
        Assert.That(losses[0], Is.EqualTo(nll).Within(1e-5 * Math.Abs(nll)));
        Assert.That(losses[2], Is.LessThan(losses[0]), "the steps lower the loss on their own sequences");
    }

    [Test]
    public void DpoStepsLeaveTheManagedWeights()
    {
        var dpo = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.5));
        var losses = AssertStepsAreTheManagedSteps(2,
            (policy, reference, step) => (DpoStep(policy, reference, 2, Prompts, PromptOffsets, Chosen, ChosenOffsets, Rejected, RejectedOffsets,
                                                  0.5f, 1e-2f, 1f, step, out float loss), loss, 0f),
            (m, step) => ManagedStep(m.Policy, step, 1e-2f, 1f, () =>
            {
                var refs = OfflinePreferenceObjective.ReferenceLogProbs(m.Reference, Data);
                return (dpo.Accumulate(m.Policy, Data, refs, null, (ulong)step).Loss, 0);
            }));
        Assert.That(losses[0], Is.EqualTo(MathF.Log(2)).Within(1e-6));
    }

    [Test]
    public void PmleStepsAreTheManagedStepsToTheBit()
    {
        var pmle = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: 0.5));
        // reference 0: no KL term, no reference model needed
        var losses = AssertStepsAreTheManagedSteps(3,
            (policy, _, step) => (PmleStep(policy, 0, 2, Prompts, PromptOffsets, Chosen, ChosenOffsets, Rejected, RejectedOffsets, 0.5f, Kl.None,
                                           1e-2f, 1f, step, out float loss, out float kl), loss, kl),
            (m, step) => ManagedStep(m.Policy, step, 1e-2f, 1f, () =>
            {
                var r = pmle.Accumulate(m.Policy, Data, default, null, 0);
                return (r.Loss, r.KlEstimate);
            }));
        var lp = LogProbs(new([Eot, 17, 300], [42, 7, 1999]), new([Eot, 17, 300], [3]), new([Eot, 5], [8]), new([Eot, 5], [99, 100, 101]));
        double expected = -(LogSigmoid(0.5 * (lp[0] - lp[1])) + LogSigmoid(0.5 * (lp[2] - lp[3]))) / 2;
        Assert.That(losses[0], Is.EqualTo(expected).Within(1e-5), "step 1: the mean of −ln σ(γ Δ ln π) over the pairs");
        Assert.That(losses[2], Is.LessThan(losses[0]));
    }

    [Test]
    public void PmleStepsWithTheKlTermAreTheManagedStepsToTheBit()
    {
        var kl = new Kl(0.25f, 3, 4, 11);
        var pmle = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: 0.5),
                                                  new KlRegularizer(0.25, 3, 4, Eot));
        AssertStepsAreTheManagedSteps(3,
            (policy, reference, step) => (PmleStep(policy, reference, 2, Prompts, PromptOffsets, Chosen, ChosenOffsets, Rejected, RejectedOffsets, 0.5f,
                                                   kl with { Seed = kl.Seed + (ulong)step }, 1e-2f, 1f, step, out float loss, out float estimate), loss, estimate),
            (m, step) => ManagedStep(m.Policy, step, 1e-2f, 1f, () =>
            {
                var r = pmle.Accumulate(m.Policy, Data, default, m.Reference, kl.Seed + (ulong)step);
                Assert.That(step == 1 ? r.KlEstimate == 0 : r.KlEstimate != 0, $"step {step}: KL(π ‖ π0) is 0 only while π = π0");
                return (r.Loss, r.KlEstimate);
            }));
    }

    [Test]
    public void DistillStepsAreTheManagedStepsToTheBit()
    {
        var distill = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: 2));
        var losses = AssertStepsAreTheManagedSteps(3,
            (policy, _, step) => (DistillStep(policy, 0, 2, Prompts, PromptOffsets, Chosen, ChosenOffsets, Rejected, RejectedOffsets, Labels, 2f, Kl.None,
                                              1e-2f, 1f, step, out float loss, out float kl), loss, kl),
            (m, step) => ManagedStep(m.Policy, step, 1e-2f, 1f, () =>
            {
                var r = distill.Accumulate(m.Policy, Data, default, null, 0, Labels);
                return (r.Loss, r.KlEstimate);
            }));
        var lp = LogProbs(new([Eot, 17, 300], [42, 7, 1999]), new([Eot, 17, 300], [3]), new([Eot, 5], [8]), new([Eot, 5], [99, 100, 101]));
        double Pair(double p, double z) => -(p * LogSigmoid(z) + (1 - p) * LogSigmoid(-z));
        double expected = (Pair(0.8f, 2 * (lp[0] - lp[1])) + Pair(0.25f, 2 * (lp[2] - lp[3]))) / 2;
        Assert.That(losses[0], Is.EqualTo(expected).Within(1e-5), "step 1: the mean of −[p ln σ(z) + (1−p) ln σ(−z)] over the pairs");
        Assert.That(losses[2], Is.LessThan(losses[0]));
    }

    [Test]
    public void DistillStepsWithTheKlTermAreTheManagedStepsToTheBit()
    {
        var kl = new Kl(0.5f, 2, 6, 99);
        var distill = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: 2),
                                                     new KlRegularizer(0.5, 2, 6, Eot));
        AssertStepsAreTheManagedSteps(2,
            (policy, reference, step) => (DistillStep(policy, reference, 2, Prompts, PromptOffsets, Chosen, ChosenOffsets, Rejected, RejectedOffsets, Labels,
                                                      2f, kl, 1e-2f, 0f, step, out float loss, out float estimate), loss, estimate),
            (m, step) => ManagedStep(m.Policy, step, 1e-2f, 0f, () =>
            {
                var r = distill.Accumulate(m.Policy, Data, default, m.Reference, kl.Seed, Labels);
                return (r.Loss, r.KlEstimate);
            }));
    }

    [Test]
    public void BadStepArgumentsGetTheirStatusAMessageAndLeaveTheWeights()
    {
        Assert.That(Load(path, out ulong policy), Is.EqualTo(Ok));
        Assert.That(Load(path, out ulong reference), Is.EqualTo(Ok));
        Assert.That(Load(path, out ulong freed), Is.EqualTo(Ok));
        Assert.That(Free(freed), Is.EqualTo(Ok));
        int[] prompt = [Eot, 17, 300], response = [42, 7];
        Assert.That(Score(policy, prompt, 3, response, 2, true, null, null, out float before), Is.EqualTo(Ok));
        var kl = new Kl(0.1f, 2, 4, 5);
        int failures = 0;

        void Expect(int status, int expected, string message)
        {
            Assert.That(status, Is.EqualTo(expected), $"status for \"{message}\": {LastError()}");
            Assert.That(LastError(), Does.Contain(message));
            failures++;
        }
        int Sft(ulong model = 0, int n = 2, int[]? p = null, int[]? po = null, int[]? r = null, int[]? ro = null, float lr = 1e-2f, float clip = 1f,
                int step = 1, bool withLoss = true) =>
            SftStep(model == 0 ? policy : model, n, p ?? Prompts, po ?? PromptOffsets, r ?? Chosen, ro ?? ChosenOffsets, lr, clip, step, out _, withLoss);
        int Pmle(ulong model = 0, ulong refModel = 0, int n = 2, int[]? po = null, int[]? c = null, int[]? co = null, float gamma = 1f, Kl? k = null,
                 int step = 1, bool withLoss = true) =>
            PmleStep(model == 0 ? policy : model, refModel, n, Prompts, po ?? PromptOffsets, c ?? Chosen, co ?? ChosenOffsets, Rejected, RejectedOffsets,
                     gamma, k ?? Kl.None, 1e-2f, 1f, step, out _, out _, withLoss);
        int Distill(ulong model = 0, ulong refModel = 0, int n = 2, float[]? labels = null, bool nullLabels = false, int[]? so = null, float gamma = 1f,
                    Kl? k = null, bool withLoss = true) =>
            DistillStep(model == 0 ? policy : model, refModel, n, Prompts, PromptOffsets, Chosen, ChosenOffsets, Rejected, so ?? RejectedOffsets,
                        nullLabels ? null : labels ?? Labels, gamma, k ?? Kl.None, 1e-2f, 1f, 1, out _, out _, withLoss);

        // handles: freed, never loaded, the same model twice
        Expect(Sft(model: freed), HandleError, $"model handle {freed} is not a live model");
        Expect(Sft(model: 0xdead_beef), HandleError, "model handle 3735928559 is not a live model");
        Expect(Pmle(refModel: freed), HandleError, $"model handle {freed} is not a live model");
        Expect(Distill(model: freed, refModel: reference), HandleError, $"model handle {freed} is not a live model");
        Expect(Pmle(refModel: policy), ArgumentError, "policy and reference are the same model");
        Expect(DpoStep(policy, 0, 2, Prompts, PromptOffsets, Chosen, ChosenOffsets, Rejected, RejectedOffsets, 0.5f, 1e-2f, 1f, 1, out _),
               HandleError, "model handle 0 is not a live model");

        // NULL pointers, each named
        Expect(Sft(withLoss: false), ArgumentError, "loss is NULL");
        Expect(SftStep(policy, 2, null, PromptOffsets, Chosen, ChosenOffsets, 1e-2f, 1f, 1, out _), ArgumentError, "prompts is NULL");
        Expect(SftStep(policy, 2, Prompts, null, Chosen, ChosenOffsets, 1e-2f, 1f, 1, out _), ArgumentError, "prompt_offsets is NULL");
        Expect(SftStep(policy, 2, Prompts, PromptOffsets, null, ChosenOffsets, 1e-2f, 1f, 1, out _), ArgumentError, "responses is NULL");
        Expect(SftStep(policy, 2, Prompts, PromptOffsets, Chosen, null, 1e-2f, 1f, 1, out _), ArgumentError, "response_offsets is NULL");
        Expect(PmleStep(policy, 0, 2, Prompts, PromptOffsets, Chosen, ChosenOffsets, null, RejectedOffsets, 1f, Kl.None, 1e-2f, 1f, 1, out _, out _),
               ArgumentError, "rejected is NULL");
        Expect(Pmle(withLoss: false), ArgumentError, "loss is NULL");
        Expect(Distill(nullLabels: true), ArgumentError, "labels is NULL");
        Expect(DistillStep(policy, 0, 2, Prompts, PromptOffsets, Chosen, null, Rejected, RejectedOffsets, Labels, 1f, Kl.None, 1e-2f, 1f, 1, out _, out _),
               ArgumentError, "first_offsets is NULL");

        // counts and scalars
        Expect(Sft(n: 0), ArgumentError, "sequences is 0; a step needs at least one sequence");
        Expect(Pmle(n: -3), ArgumentError, "pairs is -3; a step needs at least one pair");
        Expect(Distill(n: -1), ArgumentError, "pairs is -1");
        Expect(Sft(lr: float.NaN), ArgumentError, "learning_rate is NaN");
        Expect(Sft(clip: -1), ArgumentError, "max_grad_norm is -1");
        Expect(Sft(step: 0), ArgumentError, "step is 0; steps count from 1");
        Expect(Pmle(gamma: 0), ArgumentError, "gamma is 0; it must be a positive number");
        Expect(Distill(gamma: float.PositiveInfinity), ArgumentError, "; it must be a positive number");
        Expect(Pmle(k: kl), ArgumentError, "reference is 0, but kl_beta 0.1 > 0 needs the frozen reference");
        Expect(Pmle(refModel: reference, k: kl with { Beta = -1 }), ArgumentError, "kl_beta is -1");
        Expect(Pmle(refModel: reference, k: kl with { Beta = float.NaN }), ArgumentError, "kl_beta is NaN");
        Expect(Pmle(refModel: reference, k: kl with { Samples = 1 }), ArgumentError, "kl_samples is 1");
        Expect(Distill(refModel: reference, k: kl with { Samples = 5000 }), ArgumentError, "kl_samples is 5000");
        Expect(Distill(refModel: reference, k: kl with { MaxTokens = 0 }), ArgumentError, "kl_max_tokens is 0");
        Expect(Pmle(refModel: reference, k: kl with { MaxTokens = 33 }), ArgumentError, "kl_max_tokens is 33; a KL sample has 1 to 32 (the context) tokens");

        // soft labels: NaN, outside [0, 1]
        Expect(Distill(labels: [0.5f, float.NaN]), ArgumentError, "labels[1] is NaN; a soft label is a probability in [0, 1]");
        Expect(Distill(labels: [1.5f, 0.5f]), ArgumentError, "labels[0] is 1.5");
        Expect(Distill(labels: [0.5f, -0.01f]), ArgumentError, "labels[1] is -0.01");
        Expect(Distill(labels: [float.PositiveInfinity, 0f]), ArgumentError, "; a soft label is a probability in [0, 1]");

        // offsets: not starting at 0, decreasing, an empty list, far past the end of the array (refused before a token is read)
        Expect(Sft(po: [1, 3, 5]), ArgumentError, "prompt_offsets[0] is 1; it must be 0");
        Expect(Pmle(co: [0, 3, 2]), ArgumentError, "chosen_offsets[2] = 2 is below chosen_offsets[1] = 3");
        Expect(Pmle(co: [0, 3, 3]), ArgumentError, "chosen 1 is empty (chosen_offsets[1] = chosen_offsets[2] = 3)");
        Expect(Distill(so: [0, 1, 1_000_000_000]), ArgumentError, "second 1 would have 999999999 tokens (second_offsets[1] = 1, [2] = 1000000000), more than the context of 32");
        Expect(Sft(po: [0, 3, int.MaxValue]), ArgumentError, "prompts 1 would have 2147483644 tokens");
        Expect(Sft(ro: [0, -5, 4]), ArgumentError, "response_offsets[1] = -5 is below response_offsets[0] = 0");

        // tokens: outside the vocabulary, longer than the context together
        Expect(Sft(r: [42, 7, 1_000_000, 8]), ArgumentError, "responses[2] (token 2 of responses 0) is 1000000, outside the vocabulary of 2257");
        Expect(Pmle(c: [42, -1, 1999, 8]), ArgumentError, "chosen[1] (token 1 of chosen 0) is -1, outside the vocabulary");
        var longResponse = Enumerable.Repeat(5, 31).ToArray();
        Expect(SftStep(policy, 1, [Eot, 1, 2], [0, 3], longResponse, [0, 31], 1e-2f, 1f, 1, out _), ArgumentError,
               "sequence 0: prompt + response − 1 = 33 tokens exceed the context of 32");

        Assert.That(Score(policy, prompt, 3, response, 2, true, null, null, out float after), Is.EqualTo(Ok));
        Assert.That(after, Is.EqualTo(before), $"{failures} rejected steps left the weights as they were");

        // a finite but absurd learning rate: step 1 takes it, step 2's loss is not finite — an internal error naming the step,
        // and the weights stay those after step 1
        Assert.That(Sft(lr: 1e30f), Is.EqualTo(Ok), LastError());
        string first = Path.Combine(folder, "first.safetensors"), second = Path.Combine(folder, "second.safetensors");
        Assert.That(Save(policy, first), Is.EqualTo(Ok));
        Expect(Sft(lr: 1e-2f, step: 2), InternalError, "step 2: the loss");
        Assert.That(LastError(), Does.Contain("is not finite; the weights are unchanged"));
        Assert.That(Save(policy, second), Is.EqualTo(Ok));
        Assert.That(File.ReadAllBytes(second), Is.EqualTo(File.ReadAllBytes(first)), "the failed step changed nothing");

        Assert.That(Free(policy), Is.EqualTo(Ok));
        Assert.That(Free(reference), Is.EqualTo(Ok));
    }

    [Test]
    public void StepsThatSwapPolicyAndReferenceOnTwoThreadsDoNotDeadlock()
    {
        Assert.That(Load(path, out ulong a), Is.EqualTo(Ok));
        Assert.That(Load(path, out ulong b), Is.EqualTo(Ok));
        // with the policy's lock taken first, thread 0 would hold a and wait for b while thread 1 holds b and waits for a
        const int Steps = 200;
        var statuses = new int[2][];
        var threads = new[] { (a, b), (b, a) }.Select((roles, t) => new Thread(() =>
        {
            statuses[t] = new int[Steps];
            for (int i = 0; i < Steps; i++)
                statuses[t][i] = DpoStep(roles.Item1, roles.Item2, 1, [Eot, 5], [0, 2], [8], [0, 1], [9], [0, 1], 0.5f, 1e-4f, 1f, i + 1, out _);
        }) { IsBackground = true }).ToArray();
        foreach (var thread in threads) thread.Start();
        foreach (var thread in threads) Assert.That(thread.Join(TimeSpan.FromSeconds(30)), Is.True, "each thread finishes: the locks are taken in one order");
        Assert.That(statuses.SelectMany(s => s), Is.All.EqualTo(Ok));
        Assert.That(Free(a), Is.EqualTo(Ok));
        Assert.That(Free(b), Is.EqualTo(Ok));
    }
}
