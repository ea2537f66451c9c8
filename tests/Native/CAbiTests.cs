using System.Runtime.InteropServices;
using System.Text;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Kernels.Cpu;
using DistAlign.Alignment.Policies;
using DistAlign.Native;
using DistAlign.Tests.Alignment;
using DistAlign.Transformer.Model;
using static DistAlign.Tests.Native.CAbiCalls;

namespace DistAlign.Tests.Native;

/// <summary>
/// The C ABI (include/distalign.h) called the way a C host calls it — through unmanaged function pointers to the
/// exported entry points — in this process: scores equal to <see cref="SequenceScorer"/>'s to the bit, and bad input
/// (NULL pointers, wrong lengths, a corrupt file, a dead handle) answered with a status and a message, never an exception
/// or a crash. .ci/run also publishes libdistalign.so and runs samples/c and samples/python against <c>distalign score</c>.
/// </summary>
public unsafe class CAbiTests
{
    private string folder = "";

    [SetUp]
    public void MakeFolder() => folder = Directory.CreateTempSubdirectory("distalign-cabi-").FullName;

    [TearDown]
    public void RemoveFolder() => Directory.Delete(folder, recursive: true);

    private string TinyModel()
    {
        string path = Path.Combine(folder, "pi0.safetensors");
        TinyAlignmentSetup.WriteModel(path);
        return path;
    }

    [Test]
    public void ScoresAreTheScorersToTheBit()
    {
        string path = TinyModel();
        Assert.That(((delegate* unmanaged<int>)&CAbi.Version)(), Is.EqualTo(CAbi.AbiVersion));
        Assert.That(Load(path, out ulong model), Is.EqualTo(Ok), LastError());
        Assert.That(LastError(), Is.Empty);
        int vocab, context, eot;
        Assert.That(((delegate* unmanaged<ulong, int*, int*, int*, int>)&CAbi.ModelInfo)(model, &vocab, &context, &eot), Is.EqualTo(Ok));
        Assert.That((vocab, context), Is.EqualTo((TinyAlignmentSetup.Config.VocabSize, TinyAlignmentSetup.Config.MaxSequenceLength)));

        int[] prompt = [eot, 17, 300, 5], response = [42, 7, 1999];
        var logProbs = new float[3];
        var entropies = new float[3];
        Assert.That(Score(model, prompt, 4, response, 3, true, logProbs, entropies, out float sum), Is.EqualTo(Ok), LastError());

        var (gpt, _) = GptCheckpoint.LoadModel(path);
        using var policy = new GptPolicy(gpt, new AdamWSettings(), ownsModel: true);
        var expected = SequenceScorer.Score(policy, [new PromptResponse(prompt, response)], withEntropies: true)[0];
        Assert.That(sum, Is.EqualTo(expected.LogProb), "same engine, tokens and threads: the same float");
        Assert.That(logProbs, Is.EqualTo(expected.TokenLogProbs));
        Assert.That(entropies, Is.EqualTo(expected.TokenEntropies));
        Assert.That(Free(model), Is.EqualTo(Ok));
    }

    [Test]
    public void TheHeaderDeclaresEveryExportWithItsArgumentsAndTheVersion()
    {
        string header = File.ReadAllText(Path.Combine(DistAlign.Tests.Architecture.SourceTree.RepositoryRoot(), "include", "distalign.h"));
        var version = System.Text.RegularExpressions.Regex.Match(header, @"#define DISTALIGN_ABI_VERSION (\d+)");
        Assert.That(version.Success && int.Parse(version.Groups[1].Value) == CAbi.AbiVersion, $"distalign.h's DISTALIGN_ABI_VERSION is CAbi.AbiVersion ({CAbi.AbiVersion})");
        Assert.That(((delegate* unmanaged<int>)&CAbi.Version)(), Is.EqualTo(CAbi.AbiVersion));

        // each declaration "<type> distalign_name(<arguments>);" against the [UnmanagedCallersOnly] entry points
        var declared = System.Text.RegularExpressions.Regex.Matches(header, @"\b(distalign_\w+)\s*\(([^)]*)\)\s*;")
            .ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value.Trim() is "void" or "" ? 0 : m.Groups[2].Value.Split(',').Length);
        var exported = typeof(CAbi).GetMethods()
            .Select(m => (Method: m, Attribute: m.GetCustomAttributes(typeof(UnmanagedCallersOnlyAttribute), false).Cast<UnmanagedCallersOnlyAttribute>().FirstOrDefault()))
            .Where(e => e.Attribute is not null)
            .ToDictionary(e => e.Attribute!.EntryPoint!, e => e.Method.GetParameters().Length);
        Assert.That(declared.Keys, Is.EquivalentTo(exported.Keys), "every export is declared in distalign.h, and every declaration exported");
        foreach (var (name, arguments) in exported)
            Assert.That(declared[name], Is.EqualTo(arguments), $"{name}: as many arguments in distalign.h as in the export");
        TestContext.Out.WriteLine($"distalign.h (ABI {CAbi.AbiVersion}) declares the {exported.Count} exports: {string.Join(", ", exported.Keys.Order(StringComparer.Ordinal))}");
    }

    [Test]
    public void BadInputGetsAStatusAndAMessage()
    {
        string path = TinyModel();
        Assert.That(Load(Path.Combine(folder, "missing.safetensors"), out _), Is.EqualTo(IoError));
        Assert.That(LastError(), Does.Contain("missing.safetensors"));
        string corrupt = Path.Combine(folder, "corrupt.safetensors");
        File.WriteAllBytes(corrupt, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        Assert.That(Load(corrupt, out _), Is.EqualTo(FormatError));
        Assert.That(LastError(), Does.Contain("corrupt.safetensors"));
        ulong ignored;
        Assert.That(((delegate* unmanaged<byte*, ulong*, int>)&CAbi.ModelLoad)(null, &ignored), Is.EqualTo(ArgumentError));
        Assert.That(LastError(), Is.EqualTo("path is NULL"));

        Assert.That(Load(path, out ulong model), Is.EqualTo(Ok));
        int[] prompt = [1, 2], response = [3];
        Assert.That(Score(model, null, 2, response, 1, true, null, null, out _), Is.EqualTo(ArgumentError));
        Assert.That(LastError(), Is.EqualTo("prompt is NULL"));
        Assert.That(Score(model, prompt, 2, response, 1, false, null, null, out _), Is.EqualTo(ArgumentError));
        Assert.That(Score(model, prompt, 0, response, 1, true, null, null, out _), Is.EqualTo(ArgumentError));
        Assert.That(Score(model, prompt, 2, response, -1, true, null, null, out _), Is.EqualTo(ArgumentError));
        Assert.That(LastError(), Is.EqualTo("response_length is -1; a response needs at least one token"));
        Assert.That(Score(model, [1_000_000, 2], 2, response, 1, true, null, null, out _), Is.EqualTo(ArgumentError));
        Assert.That(LastError(), Does.Contain("prompt[0] is 1000000, outside the vocabulary"));
        var longPrompt = new int[40];
        Assert.That(Score(model, longPrompt, 40, response, 1, true, null, null, out _), Is.EqualTo(ArgumentError));
        Assert.That(LastError(), Does.Contain("exceeds the context of 32"));

        int count;
        var ids = new int[2];
        byte[] text = [.. "a long sentence with many tokens in it"u8, 0];
        fixed (byte* t = text) fixed (int* i = ids)
            Assert.That(((delegate* unmanaged<ulong, byte*, int*, int, int*, int>)&CAbi.Tokenize)(model, t, i, 2, &count), Is.EqualTo(ArgumentError));
        Assert.That(count, Is.GreaterThan(2), "*count says how many tokens the text has");

        Assert.That(Free(model), Is.EqualTo(Ok));
        Assert.That(Free(model), Is.EqualTo(HandleError));
        Assert.That(Score(model, prompt, 2, response, 1, true, null, null, out _), Is.EqualTo(HandleError));
        Assert.That(LastError(), Does.Contain($"model handle {model} is not a live model"));
        Assert.That(Score(0xdead_beef, prompt, 2, response, 1, true, null, null, out _), Is.EqualTo(HandleError));
    }

    [Test]
    public void SamplingIsThePolicysAndASavedModelScoresTheSame()
    {
        string path = TinyModel();
        Assert.That(Load(path, out ulong model), Is.EqualTo(Ok));
        int[] prompt = [2256, 17, 300];
        var tokens = new int[8];
        int count;
        fixed (int* p = prompt) fixed (int* t = tokens)
            Assert.That(((delegate* unmanaged<ulong, int*, int, int, float, int, float, ulong, int*, int, int*, int>)&CAbi.Sample)(
                model, p, 3, 8, 1f, 0, 1f, 42, t, 8, &count), Is.EqualTo(Ok), LastError());
        var (gpt, spec) = GptCheckpoint.LoadModel(path);
        using (var policy = new GptPolicy(gpt, new AdamWSettings(), ownsModel: true))
        {
            var expected = policy.Sample([prompt], new SamplingOptions(8, EndOfText: 2256), 42)[0];
            Assert.That(tokens[..count], Is.EqualTo(expected.Tokens), "the C ABI draws what the policy draws for the same seed");
        }
        fixed (int* p = prompt) fixed (int* t = tokens)
            Assert.That(((delegate* unmanaged<ulong, int*, int, int, float, int, float, ulong, int*, int, int*, int>)&CAbi.Sample)(
                model, p, 3, 9, 1f, 0, 1f, 42, t, 8, &count), Is.EqualTo(ArgumentError));
        Assert.That(LastError(), Is.EqualTo("max_new_tokens 9 exceeds the capacity of 8"));

        string saved = Path.Combine(folder, "saved.safetensors");
        byte[] utf8 = [.. Encoding.UTF8.GetBytes(saved), 0];
        fixed (byte* s = utf8) Assert.That(((delegate* unmanaged<ulong, byte*, int>)&CAbi.ModelSave)(model, s), Is.EqualTo(Ok), LastError());
        Assert.That(Load(saved, out ulong reloaded), Is.EqualTo(Ok));
        int[] response = [5, 6];
        Score(model, prompt, 3, response, 2, true, null, null, out float before);
        Score(reloaded, prompt, 3, response, 2, true, null, null, out float after);
        Assert.That(after, Is.EqualTo(before), "a saved model scores as the one it was saved from");
        Assert.That(Free(model), Is.EqualTo(Ok));
        Assert.That(Free(reloaded), Is.EqualTo(Ok));
    }

    [Test]
    public void DpoStepsAreTheManagedStepsToTheBit()
    {
        string path = TinyModel();
        Assert.That(Load(path, out ulong policy), Is.EqualTo(Ok));
        Assert.That(Load(path, out ulong reference), Is.EqualTo(Ok));
        // two pairs: prompt [EOT, 17, 300] / [EOT, 5]; chosen and rejected of different lengths
        int[] prompts = [2256, 17, 300, 2256, 5], promptOffsets = [0, 3, 5];
        int[] chosen = [42, 7, 1999, 8], chosenOffsets = [0, 3, 4];
        int[] rejected = [3, 99, 100, 101], rejectedOffsets = [0, 1, 4];
        var losses = new float[3];
        for (int step = 1; step <= 3; step++)
            Assert.That(DpoStep(policy, reference, 2, prompts, promptOffsets, chosen, chosenOffsets, rejected, rejectedOffsets,
                                0.5f, 1e-2f, 1f, step, out losses[step - 1]), Is.EqualTo(Ok), LastError());
        Assert.That(losses[0], Is.EqualTo(MathF.Log(2)).Within(1e-6), "π = π0 at the start: the DPO loss is ln 2");
        Assert.That(losses[2], Is.LessThan(losses[0]), "the steps lower the loss on their own pairs");

        // the same three steps in managed code
        var (gpt, _) = GptCheckpoint.LoadModel(path);
        var (gpt0, _) = GptCheckpoint.LoadModel(path);
        using var managed = new GptPolicy(gpt, new AdamWSettings(), ownsModel: true);
        using var frozen = new GptPolicy(gpt0, new AdamWSettings(), ownsModel: true);
        List<PreferencePair> data = [new([2256, 17, 300], [42, 7, 1999], [3]), new([2256, 5], [8], [99, 100, 101])];
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.5));
        for (int step = 1; step <= 3; step++)
        {
            var refs = OfflinePreferenceObjective.ReferenceLogProbs(frozen, data);
            managed.ZeroGradients();
            var m = objective.Accumulate(managed, data, refs, null, (ulong)step);
            managed.ClipGradients(1f);
            managed.OptimizerStep(step, 1e-2f);
            Assert.That((float)m.Loss, Is.EqualTo(losses[step - 1]), $"step {step}: the same loss");
        }
        int[] prompt = [2256, 17, 300], response = [42, 7];
        Assert.That(Score(policy, prompt, 3, response, 2, true, null, null, out float viaAbi), Is.EqualTo(Ok));
        var expected = SequenceScorer.Score(managed, [new PromptResponse(prompt, response)])[0].LogProb;
        Assert.That(viaAbi, Is.EqualTo(expected), "the trained weights are the managed run's: the same score, bit for bit");

        Assert.That(DpoStep(policy, policy, 2, prompts, promptOffsets, chosen, chosenOffsets, rejected, rejectedOffsets, 0.5f, 1e-2f, 1f, 4, out _),
                    Is.EqualTo(ArgumentError));
        Assert.That(LastError(), Does.Contain("policy and reference are the same model"));
        Assert.That(DpoStep(policy, reference, 2, prompts, [0, 4, 3], chosen, chosenOffsets, rejected, rejectedOffsets, 0.5f, 1e-2f, 1f, 4, out _),
                    Is.EqualTo(ArgumentError));
        Assert.That(LastError(), Is.EqualTo("prompt_offsets[2] = 3 is below prompt_offsets[1] = 4"));
        Assert.That(DpoStep(policy, reference, 2, prompts, promptOffsets, chosen, chosenOffsets, rejected, rejectedOffsets, 0.5f, 1e-2f, 1f, 0, out _),
                    Is.EqualTo(ArgumentError));
        Assert.That(Free(policy), Is.EqualTo(Ok));
        Assert.That(Free(reference), Is.EqualTo(Ok));
    }

    [Test]
    public void FuzzedCallsNeverThrowAndAlwaysExplainAnError()
    {
        Assert.That(Load(TinyModel(), out ulong model), Is.EqualTo(Ok));
        var random = new Random(20);
        int vocab = TinyAlignmentSetup.Config.VocabSize, calls = 0, failures = 0;
        var counts = new int[6];
        for (int n = 0; n < 3000; n++)
        {
            // buffers are always at least as long as the lengths passed with them (a C caller's own contract);
            // everything else is random: handle, NULLs, lengths from −3 to past the context, tokens in and out of range
            ulong handle = random.Next(5) == 0 ? (ulong)random.NextInt64() : model;
            int promptLength = random.Next(-3, 36), responseLength = random.Next(-3, 36);
            int[]? prompt = random.Next(8) == 0 ? null : Tokens(Math.Max(promptLength, 0));
            int[]? response = random.Next(8) == 0 ? null : Tokens(Math.Max(responseLength, 0));
            bool withSum = random.Next(10) != 0;
            var logProbs = random.Next(2) == 0 ? null : new float[Math.Max(responseLength, 0)];
            var entropies = random.Next(2) == 0 ? null : new float[Math.Max(responseLength, 0)];
            int status = Score(handle, prompt, promptLength, response, responseLength, withSum, logProbs, entropies, out float sum);
            calls++;
            counts[status]++;
            if (status == Ok) Assert.That(float.IsFinite(sum) && sum <= 0, $"call {n}: a log-prob is finite and ≤ 0, got {sum}");
            else
            {
                failures++;
                Assert.That(LastError(), Is.Not.Empty, $"call {n}: status {status} without a message");
            }
        }
        TestContext.Out.WriteLine($"{calls} fuzzed distalign_score calls: {counts[0]} ok, {counts[1]} argument, {counts[4]} handle, {counts[5]} internal errors");
        Assert.That(counts[5], Is.Zero, "no call ends in an internal error: every bad input has its own status");
        Assert.That(counts[0], Is.GreaterThan(100), "the fuzz also exercises successful calls");
        Assert.That(Free(model), Is.EqualTo(Ok));

        int[] Tokens(int length)
        {
            var t = new int[length];
            for (int i = 0; i < length; i++) t[i] = random.Next(30) == 0 ? random.Next(-5, vocab + 5) : random.Next(vocab);
            return t;
        }
    }
}
