using System.Diagnostics;
using System.Text;
using DistAlign.Tests.Alignment;
using static DistAlign.Tests.Native.CAbiCalls;

namespace DistAlign.Tests.Native;

/// <summary>
/// Fuzz of every export of the C ABI that takes caller buffers, besides distalign_score (fuzzed in <see cref="CAbiTests"/>):
/// tokenize, sample, model_info, model_load (random and corrupted files), model_save (bad paths) and the four training
/// steps. Lengths, offsets, NULL / non-NULL pointers, scalars and handles (live, freed, random, 0) are random; buffers are
/// as long as the lengths and (valid) offsets passed with them, a C caller's own contract. Every call must return a
/// status with a message (none after a success) and never an internal error — a bad input has its own status — and the
/// process must survive. The counts per function and status are printed.
/// </summary>
public unsafe class CAbiFuzzTests
{
    private static readonly string[] StatusNames = ["ok", "argument", "io", "format", "handle", "internal"];
    private readonly Dictionary<string, int[]> counts = [];
    private Random random = new(23);
    private string folder = "";
    private ulong a, b, freed;
    private const int Vocab = 2257, Context = 32, Eot = 2256;

    [SetUp]
    public void LoadModels()
    {
        folder = Directory.CreateTempSubdirectory("distalign-cabi-fuzz-").FullName;
        string path = Path.Combine(folder, "pi0.safetensors");
        TinyAlignmentSetup.WriteModel(path);
        Assert.That((TinyAlignmentSetup.Config.VocabSize, TinyAlignmentSetup.Config.MaxSequenceLength), Is.EqualTo((Vocab, Context)));
        Assert.That(Load(path, out a), Is.EqualTo(Ok));
        Assert.That(Load(path, out b), Is.EqualTo(Ok));
        Assert.That(Load(path, out freed), Is.EqualTo(Ok));
        Assert.That(Free(freed), Is.EqualTo(Ok));
    }

    [TearDown]
    public void FreeModels()
    {
        Free(a);
        Free(b);
        Directory.Delete(folder, recursive: true);
    }

    // Checks one call's status and message and counts it.
    private void Record(string function, int status, int call)
    {
        Assert.That(status, Is.InRange(Ok, InternalError), $"{function} call {call}: status {status} is none of distalign.h's");
        if (!counts.TryGetValue(function, out var c)) counts[function] = c = new int[StatusNames.Length];
        c[status]++;
        Assert.That(status, Is.Not.EqualTo(InternalError), $"{function} call {call}: an internal error: {LastError()}");
        if (status == Ok) Assert.That(LastError(), Is.Empty, $"{function} call {call}: a success leaves no message");
        else Assert.That(LastError(), Is.Not.Empty, $"{function} call {call}: status {status} without a message");
    }

    private bool OneIn(int n) => random.Next(n) == 0;

    private ulong Handle() => random.Next(12) switch
    {
        < 7 => a,
        < 9 => b,
        9 => freed,
        10 => (ulong)random.NextInt64(),
        _ => 0,
    };

    private int[] Tokens(int length)
    {
        var t = new int[length];
        for (int i = 0; i < length; i++) t[i] = OneIn(60) ? random.Next(-5, Vocab + 5) : random.Next(Vocab);
        return t;
    }

    // A flat token array and its offsets for `count` lists (lengths mostly from `shortest` to `longest`; sometimes 0, past
    // the context or absurd; sometimes an offset overwritten by a random one); either may be NULL. The offsets array holds
    // count + 1 entries (the caller's contract), the token array as many as the largest offset says (at most 4096: a larger
    // offset can only be invalid, since count · context is less).
    private (int[]? Values, int[]? Offsets) Lists(int count, int shortest, int longest)
    {
        int n = Math.Max(count, 0);
        var lengths = new long[n];
        for (int i = 0; i < n; i++)
            lengths[i] = random.Next(80) switch
            {
                0 => 0,
                1 => random.Next(Context + 1, 2 * Context),
                2 => random.Next(-5, 0),
                3 => random.NextInt64(int.MaxValue),
                _ => random.Next(shortest, longest + 1),
            };
        int[] offsets = count >= 1 ? new int[count + 1] : new int[random.Next(3)];
        long sum = 0;
        for (int i = 0; i < n; i++) { sum += lengths[i]; offsets[i + 1] = (int)Math.Clamp(sum, int.MinValue, int.MaxValue); }
        if (offsets.Length > 0 && OneIn(25)) offsets[random.Next(offsets.Length)] = random.Next(3) switch { 0 => random.Next(), 1 => -random.Next(), _ => random.Next(-2, 3) };
        int size = offsets.Length == 0 ? random.Next(4) : (int)Math.Clamp(offsets.Max(), 0, 4096);
        return (OneIn(25) ? null : Tokens(size), OneIn(25) ? null : offsets);
    }

    private int Count() => OneIn(10) ? random.Next(-3, 1) : random.Next(1, 5);

    private float Positive(float usual) => random.Next(50) switch
    {
        0 => 0f,
        1 => -usual,
        2 => float.NaN,
        3 => float.PositiveInfinity,
        _ => usual,
    };

    // Learning rates small enough that no sequence of fuzzed steps can make the weights (and so a loss) non-finite.
    private float LearningRate() => Positive(OneIn(2) ? 1e-5f : 1e-4f);
    private float Clip() => random.Next(50) switch { 0 => -1f, 1 => float.NaN, 2 => float.PositiveInfinity, _ => OneIn(2) ? 0f : 1f };
    private int Step() => OneIn(50) ? random.Next(-3, 1) : random.Next(1, 1000);

    private Kl KlArguments()
    {
        if (random.Next(3) != 0) return OneIn(10) ? new Kl(random.Next(3) switch { 0 => -0.1f, 1 => float.NaN, _ => float.PositiveInfinity }, 2, 4, 1) : Kl.None;
        int samples = OneIn(15) ? random.Next(3) switch { 0 => 1, 1 => -1, _ => 5000 } : random.Next(2, 4);
        int maxTokens = OneIn(15) ? random.Next(3) switch { 0 => 0, 1 => -3, _ => Context + 1 } : random.Next(1, 7);
        return new Kl(0.05f, samples, maxTokens, (ulong)random.NextInt64());
    }

    private float[]? SoftLabels(int count)
    {
        if (OneIn(25)) return null;
        var labels = new float[Math.Max(count, 0)];
        for (int i = 0; i < labels.Length; i++)
            labels[i] = random.Next(40) switch { 0 => float.NaN, 1 => -0.25f, 2 => 1.5f, 3 => float.NegativeInfinity, _ => random.NextSingle() };
        return labels;
    }

    [Test]
    public void FuzzedCallsOfEveryExportWithBuffersNeverCrashAndAlwaysExplainAnError()
    {
        var clock = Stopwatch.StartNew();
        var times = new List<(string, double)>();
        void Timed(string what, Action run)
        {
            var start = clock.Elapsed;
            run();
            times.Add((what, (clock.Elapsed - start).TotalSeconds));
        }
        Timed("tokenize", FuzzTokenize);
        Timed("sample", FuzzSample);
        Timed("model_info", FuzzModelInfo);
        Timed("model_load", FuzzModelLoad);
        Timed("model_save", FuzzModelSave);
        Timed("steps", FuzzSteps);

        int total = 0;
        foreach (var (function, c) in counts.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            total += c.Sum();
            TestContext.Out.WriteLine($"{c.Sum(),5} fuzzed distalign_{function} calls: " +
                                      string.Join(", ", c.Select((n, s) => (n, s)).Where(x => x.n > 0 || x.s == InternalError).Select(x => $"{x.n} {StatusNames[x.s]}")));
        }
        TestContext.Out.WriteLine($"{total} fuzzed calls in {clock.Elapsed.TotalSeconds:F1} s ({string.Join(", ", times.Select(t => $"{t.Item1} {t.Item2:F1} s"))}), 0 internal errors");
        foreach (var (function, c) in counts)
        {
            Assert.That(c[Ok], Is.GreaterThan(c.Sum() / 20), $"distalign_{function}: the fuzz also reaches successful calls");
            Assert.That(c.Sum() - c[Ok], Is.GreaterThan(c.Sum() / 20), $"distalign_{function}: the fuzz also reaches errors");
        }
    }

    private void FuzzTokenize()
    {
        string[] words = ["the", " whale", " Call", " me", " Ishmael", ".", " ", "\n", "é", "日本", "🐋", "\t", "0123"];
        for (int n = 0; n < 3000; n++)
        {
            var bytes = new List<byte>();
            int parts = random.Next(0, 40);
            for (int i = 0; i < parts; i++)
                if (OneIn(6)) bytes.Add((byte)random.Next(1, 256));   // stray bytes: invalid UTF-8 too (never an interior NUL)
                else bytes.AddRange(Encoding.UTF8.GetBytes(words[random.Next(words.Length)]));
            byte[]? text = OneIn(25) ? null : [.. bytes, 0];
            int capacity = random.Next(20) switch { 0 => random.Next(-3, 0), 1 => 0, _ => random.Next(0, 4 * parts + 8) };
            int[]? ids = OneIn(25) ? null : new int[Math.Max(capacity, 0)];
            bool withCount = !OneIn(25);
            int status = Tokenize(Handle(), text, ids, capacity, withCount, out int count);
            Record("tokenize", status, n);
            if (status == Ok)
            {
                Assert.That(count, Is.InRange(0, capacity));
                Assert.That(ids![..count], Is.All.InRange(0, Vocab - 1));
            }
        }
    }

    private void FuzzSample()
    {
        for (int n = 0; n < 1500; n++)
        {
            int promptLength = OneIn(15) ? random.Next(-3, 1) : random.Next(1, Context + 4);
            int[]? prompt = OneIn(25) ? null : Tokens(Math.Max(promptLength, 0));
            int maxNew = OneIn(15) ? random.Next(-3, 0) : random.Next(0, 12);
            float temperature = random.Next(12) switch { 0 => -1f, 1 => float.NaN, 2 => float.PositiveInfinity, 3 => 0f, _ => 0.5f + random.NextSingle() };
            int topK = random.Next(12) switch { 0 => -1, < 4 => random.Next(1, 50), _ => 0 };
            float topP = random.Next(12) switch { 0 => 0f, 1 => 1.5f, 2 => float.NaN, < 5 => 0.5f + random.NextSingle() / 2, _ => 1f };
            int capacity = Math.Max(-2, maxNew + (OneIn(8) ? random.Next(-3, 0) : random.Next(0, 3)));
            int[]? tokens = OneIn(25) ? null : new int[Math.Max(capacity, 0)];
            int status = Sample(Handle(), prompt, promptLength, maxNew, temperature, topK, topP, (ulong)random.NextInt64(), tokens, capacity,
                                !OneIn(25), out int count);
            Record("sample", status, n);
            if (status == Ok)
            {
                Assert.That(count, Is.InRange(0, maxNew));
                Assert.That(tokens![..count], Is.All.InRange(0, Vocab - 1));
            }
        }
    }

    private void FuzzModelInfo()
    {
        for (int n = 0; n < 2000; n++)
        {
            bool withVocab = !OneIn(3), withContext = !OneIn(3), withEot = !OneIn(3);
            int status = ModelInfo(Handle(), withVocab, withContext, withEot, out int vocab, out int context, out int eot);
            Record("model_info", status, n);
            if (status == Ok)
                Assert.That((vocab, context, eot), Is.EqualTo((withVocab ? Vocab : -1, withContext ? Context : -1, withEot ? Eot : -1)),
                            "what was asked for is written, and nothing else");
        }
    }

    private void FuzzModelLoad()
    {
        byte[] valid = File.ReadAllBytes(Path.Combine(folder, "pi0.safetensors"));
        long headerLength = BitConverter.ToInt64(valid, 0);
        string directory = Directory.CreateDirectory(Path.Combine(folder, "a-directory")).FullName;
        for (int n = 0; n < 1000; n++)
        {
            string file = Path.Combine(folder, $"load-{n}.safetensors");
            byte[]? path = Utf8(file);
            bool withModel = !OneIn(30);
            switch (random.Next(14))
            {
                case 0: File.WriteAllBytes(file, valid); break;
                case 1: path = OneIn(2) ? null : Utf8(""); break;
                case 2: path = Utf8(OneIn(2) ? Path.Combine(folder, "missing", "m.safetensors") : directory); break;
                case 3: path = [.. Encoding.UTF8.GetBytes(folder + "/"), 0xff, 0xfe, 0x80, 0]; break;   // not UTF-8
                case 4: File.WriteAllBytes(file, valid[..random.Next(valid.Length)]); break;              // truncated
                case 5: File.WriteAllBytes(file, RandomBytes(random.Next(0, 64))); break;                  // garbage, or empty
                case 6:                                                                                    // a wrong header length
                {
                    var bytes = (byte[])valid.Clone();
                    long length = random.Next(4) switch { 0 => random.NextInt64(), 1 => -random.NextInt64(), 2 => headerLength + random.Next(-9, 9), _ => random.Next(0, 16) };
                    BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), length);
                    File.WriteAllBytes(file, bytes);
                    break;
                }
                case 7 or 8 or 9:                                                                         // bytes of the JSON header changed
                {
                    var bytes = (byte[])valid.Clone();
                    for (int k = random.Next(1, 4); k > 0; k--) bytes[8 + random.NextInt64(headerLength)] = (byte)random.Next(32, 127);
                    File.WriteAllBytes(file, bytes);
                    break;
                }
                case 10:                                                                                  // digits of the header changed
                {
                    var bytes = (byte[])valid.Clone();
                    var digits = Enumerable.Range(8, (int)headerLength).Where(i => bytes[i] is >= (byte)'0' and <= (byte)'9').ToArray();
                    for (int k = random.Next(1, 3); k > 0; k--) bytes[digits[random.Next(digits.Length)]] = (byte)random.Next('0', '9' + 1);
                    File.WriteAllBytes(file, bytes);
                    break;
                }
                case 11:                                                                                  // tensor bytes flipped (loads)
                {
                    var bytes = (byte[])valid.Clone();
                    for (int k = random.Next(1, 8); k > 0; k--) bytes[8 + headerLength + random.NextInt64(bytes.Length - 8 - headerLength)] ^= (byte)random.Next(1, 256);
                    File.WriteAllBytes(file, bytes);
                    break;
                }
                case 12:                                                                                  // a header that is other JSON
                {
                    string[] headers = ["{}", "[]", "null", "{\"a\":1}", "{\"wte.weight\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
                                        "{\"__metadata__\":{\"a\":\"b\"},\"x\":{\"dtype\":\"F16\",\"shape\":[1000000000,1000000000],\"data_offsets\":[0,8]}}",
                                        "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", "{\"x\":", "\"\u0000\""];
                    byte[] json = Encoding.UTF8.GetBytes(headers[random.Next(headers.Length)]);
                    File.WriteAllBytes(file, [.. BitConverter.GetBytes((long)json.Length), .. json, .. RandomBytes(random.Next(16))]);
                    break;
                }
                default: File.WriteAllBytes(file, [.. valid, .. RandomBytes(random.Next(1, 64))]); break;  // trailing bytes
            }
            ulong handle = 0;
            int status;
            fixed (byte* p = path)
                status = ((delegate* unmanaged<byte*, ulong*, int>)&DistAlign.Native.CAbi.ModelLoad)(p, withModel ? &handle : null);
            Record("model_load", status, n);
            if (status == Ok) Assert.That(Free(handle), Is.EqualTo(Ok));
            File.Delete(file);
        }
    }

    private byte[] RandomBytes(int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    private void FuzzModelSave()
    {
        string existingFile = Path.Combine(folder, "a-file");
        File.WriteAllText(existingFile, "not a folder");
        for (int n = 0; n < 500; n++)
        {
            byte[]? path = random.Next(9) switch
            {
                0 => null,
                1 => Utf8(""),
                2 => Utf8(Path.Combine(folder, "missing", "m.safetensors")),
                3 => Utf8(Path.Combine(existingFile, "m.safetensors")),
                4 => Utf8(folder),
                5 => Utf8(Path.Combine(folder, new string('x', 300) + ".safetensors")),
                6 => [.. Encoding.UTF8.GetBytes(folder + "/bad-"), 0xc3, 0x28, 0xa0, 0],
                _ => Utf8(Path.Combine(folder, $"saved-{n % 3}.safetensors")),
            };
            Record("model_save", Save(Handle(), path), n);
        }
    }

    private void FuzzSteps()
    {
        for (int n = 0; n < 4000; n++)
        {
            int kind = n % 4, count = Count();
            ulong policy = Handle(), reference = random.Next(8) switch { 0 => policy, 1 => freed, 2 => (ulong)random.NextInt64(), 3 => 0, _ => policy == a ? b : a };
            var (prompts, promptOffsets) = Lists(count, 1, 8);
            var (x, xOffsets) = Lists(count, 1, 12);
            bool withLoss = !OneIn(30);
            int status;
            if (kind == 0)
            {
                status = SftStep(policy, count, prompts, promptOffsets, x, xOffsets, LearningRate(), Clip(), Step(), out float loss, withLoss);
                Record("sft_step", status, n);
                if (status == Ok) Assert.That(float.IsFinite(loss) && loss >= 0, $"call {n}: an SFT loss is finite and ≥ 0, got {loss}");
                continue;
            }
            var (y, yOffsets) = Lists(count, 1, 12);
            float value;
            if (kind == 1)
            {
                status = DpoStep(policy, reference, count, prompts, promptOffsets, x, xOffsets, y, yOffsets, Positive(0.1f + random.NextSingle()),
                                 LearningRate(), Clip(), Step(), out value, withLoss);
                Record("dpo_step", status, n);
            }
            else if (kind == 2)
            {
                status = PmleStep(policy, reference, count, prompts, promptOffsets, x, xOffsets, y, yOffsets, Positive(0.1f + random.NextSingle()),
                                  KlArguments(), LearningRate(), Clip(), Step(), out value, out _, withLoss);
                Record("pmle_step", status, n);
            }
            else
            {
                status = DistillStep(policy, reference, count, prompts, promptOffsets, x, xOffsets, y, yOffsets, SoftLabels(count),
                                     Positive(0.1f + random.NextSingle()), KlArguments(), LearningRate(), Clip(), Step(), out value, out _, withLoss);
                Record("distill_step", status, n);
            }
            if (status == Ok) Assert.That(float.IsFinite(value), $"call {n}: a step's loss is finite, got {value}");
        }
    }
}
