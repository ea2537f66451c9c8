using System.Buffers.Binary;
using System.Text;
using System.Text.RegularExpressions;
using DistAlign.Engine.SafeTensors;
using FsCheck;
using FsCheck.Fluent;

namespace DistAlign.Tests.Reliability;

/// <summary>
/// Fuzzing the safetensors reader, which opens checkpoint files users did not write. Every input must give a
/// validated file whose tensors all read back, or a <see cref="SafeTensorsFormatException"/>; nothing else, no hang,
/// and no allocation in proportion to a size or offset written in the file (see <see cref="FuzzHarness"/>).
/// Inputs: havoc mutations of valid files, header edits aimed at each rule (sizes, offsets, overlaps, dtypes, shape
/// overflow, duplicates, nesting, UTF-8), and headers generated from scratch by FsCheck.
/// The long run: <c>DISTALIGN_FUZZ_INPUTS=1000000 dotnet test --filter Category=FuzzLong</c>.
/// </summary>
public class SafeTensorsFuzzTests
{
    private const int InSuiteInputs = 30_000;
    private const int InSuiteGenerated = 5_000;

    [Test]
    public void MutatedCheckpointsGiveAFileOrAFormatException() => RunMutations(InSuiteInputs, seed: 20261128);

    [Test]
    public void GeneratedHeadersGiveAFileOrAFormatException() => RunGenerated(InSuiteGenerated, seed: 11);

    [Test, Explicit("long fuzz run; DISTALIGN_FUZZ_INPUTS sets the count"), Category("FuzzLong")]
    public void LongMutationRun()
    {
        int seed = FuzzBudget.LongSeed;
        TestContext.Out.WriteLine($"seed {seed} (replay with DISTALIGN_FUZZ_SEED={seed})");
        RunMutations(FuzzBudget.LongInputs, seed);
        RunGenerated(Math.Max(1, FuzzBudget.LongInputs / 4), seed);
    }

    [Test]
    public void ClaimsOfHugeTensorsInATinyFileAreRefusedBeforeAllocating()
    {
        var harness = Harness("huge claims");
        foreach (string shape in new[] { "[1099511627776]", "[268435456,4096]", "[4294967296,4294967296]", "[9223372036854775807]" })
            foreach (string offsets in new[] { "[0,1099511627776]", "[0,8]", "[0,9223372036854775807]", "[1099511627776,1099511627784]" })
            {
                byte[] file = Build($"{{\"w\":{{\"dtype\":\"F32\",\"shape\":{shape},\"data_offsets\":{offsets}}}}}", 8);
                harness.Check(file, Parse);
                Assert.That(harness.Accepted, Is.Zero, "a 2^40-byte tensor cannot be in a file of a few dozen bytes");
            }
        // The header-length prefix itself: 2^40, 2^63 and 100 MB + 1 on a file of a few bytes.
        foreach (ulong length in new[] { 1UL << 40, 1UL << 63, (ulong)SafeTensorsFile.MaxHeaderBytes + 1, 50_000_000UL })
        {
            byte[] file = Build("{}", 0);
            BinaryPrimitives.WriteUInt64LittleEndian(file, length);
            harness.Check(file, Parse);
        }
        TestContext.Out.WriteLine(harness.Summary());
        Assert.That(harness.Rejected, Is.EqualTo(harness.Inputs));
    }

    [Test]
    public void EveryKindOfInputIsAlsoSafeThroughAFileOnDisk()
    {
        // Open(path) uses positioned file reads rather than memory: run a slice of the mutations through it.
        string folder = Directory.CreateTempSubdirectory("distalign-fuzz-").FullName;
        try
        {
            var mutator = new ByteMutator(5);
            var seeds = Seeds();
            var harness = Harness("safetensors on disk");
            for (int i = 0; i < 300; i++)
            {
                byte[] input = i % 3 == 0 ? HeaderEdit(mutator, seeds[mutator.Random.Next(seeds.Count)]) : mutator.Havoc(seeds[mutator.Random.Next(seeds.Count)], seeds);
                string path = Path.Combine(folder, $"f{i}.safetensors");
                File.WriteAllBytes(path, input);
                harness.Check(input, _ =>
                {
                    using var file = SafeTensorsFile.Open(path);
                    ReadEverything(file);
                });
                File.Delete(path); // the handle must be closed whatever the outcome
            }
            TestContext.Out.WriteLine(harness.Summary());
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static void RunMutations(int inputs, int seed)
    {
        var mutator = new ByteMutator(seed);
        var seeds = Seeds();
        var harness = Harness("safetensors mutations");
        var queue = new List<byte[]>(seeds);
        for (int i = 0; i < inputs; i++)
        {
            byte[] parent = queue[mutator.Random.Next(queue.Count)];
            byte[] input = mutator.Random.Next(2) == 0 ? mutator.Havoc(parent, seeds) : HeaderEdit(mutator, parent);
            int acceptedBefore = harness.Accepted;
            harness.Check(input, Parse);
            // Mutants that still parse become parents too (a small corpus, as coverage-guided fuzzers keep).
            if (harness.Accepted > acceptedBefore && queue.Count < 256) queue.Add(input);
        }
        TestContext.Out.WriteLine(harness.Summary());
        Assert.That(harness.Outcomes.Count, Is.GreaterThan(12), "the mutations should reach most rules of the format");
    }

    private static void RunGenerated(int count, int seed)
    {
        var harness = Harness("safetensors generated");
        Prop.ForAll(GeneratedFiles().ToArbitrary(), (byte[] input) => harness.Check(input, Parse))
            .Check(FuzzBudget.FsCheckConfig(count, seed));
        TestContext.Out.WriteLine(harness.Summary());
        Assert.That(harness.Accepted, Is.GreaterThan(0), "some generated headers are valid");
        Assert.That(harness.Rejected, Is.GreaterThan(0));
    }

    private static FuzzHarness Harness(string name) =>
        new(name, e => e is SafeTensorsFormatException f ? f.Rule.ToString() : null);

    private static void Parse(byte[] input)
    {
        using var file = SafeTensorsFile.FromBytes(input, "fuzz.safetensors");
        ReadEverything(file);
    }

    /// <summary>A file that opened must keep its promises: the tensors tile the data section and every one reads back.</summary>
    private static void ReadEverything(SafeTensorsFile file)
    {
        long total = 0;
        foreach (var t in file.Tensors)
        {
            total += t.DataEnd - t.DataBegin;
            switch (t.DType)
            {
                case SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16:
                    Assert.That(file.ReadF32(t.Name), Has.Length.EqualTo(t.ElementCount));
                    break;
                case SafeTensorDType.I32:
                    Assert.That(file.ReadI32(t.Name), Has.Length.EqualTo(t.ElementCount));
                    break;
                default:
                    Assert.That(file.ReadI64(t.Name), Has.Length.EqualTo(t.ElementCount));
                    break;
            }
        }
        Assert.That(total, Is.EqualTo(file.Tensors.Count == 0 ? total : file.Tensors.Max(t => t.DataEnd)));
    }

    private static List<byte[]> Seeds() =>
    [
        SafeTensorsWriter.ToBytes([SafeTensor.FromFloats("w", [1f, 2f, 3f, 4f, 5f, 6f], [2, 3]), SafeTensor.FromFloats("b", [0.5f, -1f, 2f])],
            new Dictionary<string, string> { ["format"] = "pt", ["distalign.config"] = "{\"Layers\":1}" }),
        SafeTensorsWriter.ToBytes([SafeTensor.FromInt64("step", [7], []), SafeTensor.FromInt32("ids", [1, 2, 3, 4], [2, 2]),
            new SafeTensor("half", SafeTensorDType.BF16, [4], new byte[8]), new SafeTensor("empty", SafeTensorDType.F16, [0, 5], Array.Empty<byte>())]),
        SafeTensorsWriter.ToBytes([]),
        SafeTensorsWriter.ToBytes([SafeTensor.FromFloats("h.0.attn.c_attn.weight", new float[48], [4, 12]), SafeTensor.FromFloats("wte.weight", new float[20], [5, 4])],
            new Dictionary<string, string> { ["k"] = "v", ["é"] = "😀" }),
    ];

    private static readonly Regex Integer = new(@"-?\d+", RegexOptions.Compiled);
    private static readonly string[] DTypes = ["F32", "F16", "BF16", "I32", "I64", "F64", "U8", "BOOL", "", "f32", "F32 "];
    private static readonly string[] Numbers =
    [
        "-1", "0", "1", "7", "8", "9", "255", "65536", "2147483647", "2147483648", "4294967296", "1099511627776", "4611686018427387904",
        "9223372036854775807", "9223372036854775808", "18446744073709551615", "1e3", "1.0", "-0", "0x10", "00", "99999999999999999999999",
    ];

    /// <summary>An edit of the JSON header aimed at a rule, with the length prefix usually fixed up so the parser sees it.</summary>
    private static byte[] HeaderEdit(ByteMutator mutator, byte[] file)
    {
        var random = mutator.Random;
        if (file.Length < 8) return mutator.Havoc(file, []);
        ulong declared = BinaryPrimitives.ReadUInt64LittleEndian(file);
        int headerLength = (int)Math.Min(declared, (ulong)(file.Length - 8));
        string header = Encoding.UTF8.GetString(file, 8, headerLength);
        byte[] data = file[(8 + headerLength)..];
        switch (random.Next(11))
        {
            case 0: case 1: case 2: // a number in shape or data_offsets
            {
                var matches = Integer.Matches(header);
                if (matches.Count == 0) break;
                var m = matches[random.Next(matches.Count)];
                header = header[..m.Index] + Numbers[random.Next(Numbers.Length)] + header[(m.Index + m.Length)..];
                break;
            }
            case 3: // another dtype: size mismatch or unknown type
                header = Regex.Replace(header, "\"dtype\":\"[^\"]*\"", _ => $"\"dtype\":\"{DTypes[random.Next(DTypes.Length)]}\"", RegexOptions.None);
                break;
            case 4: // duplicate the first entry (same name twice)
            {
                int open = header.IndexOf('"');
                int close = header.IndexOf('}', open + 1);
                if (open < 0 || close < 0) break;
                string entry = header[open..(close + 1)];
                header = header.Insert(open, entry + ",");
                break;
            }
            case 5: // swap data_offsets between two entries: overlaps, gaps, size mismatches
            {
                var offsets = Regex.Matches(header, "\"data_offsets\":\\[[^\\]]*\\]");
                if (offsets.Count < 2) break;
                var a = offsets[0];
                var b = offsets[random.Next(1, offsets.Count)];
                header = header[..a.Index] + b.Value + header[(a.Index + a.Length)..(b.Index)] + a.Value + header[(b.Index + b.Length)..];
                break;
            }
            case 6: // shape whose element count overflows 64 bits
                header = Regex.Replace(header, "\"shape\":\\[[^\\]]*\\]", "\"shape\":[4294967296,4294967296,16]", RegexOptions.None);
                break;
            case 7: // deep nesting where a value goes
                header = Regex.Replace(header, "\"shape\":\\[[^\\]]*\\]", "\"shape\":" + ByteMutator.Nested(1 + random.Next(5000)), RegexOptions.None);
                break;
            case 8: // lone surrogate escape or control character in a name
                header = header.Replace("\"w\"", random.Next(2) == 0 ? "\"\\ud800\"" : "\"a\u0001\"", StringComparison.Ordinal);
                break;
            case 9: // metadata value of the wrong type
                header = header.Replace("\"__metadata__\":{", "\"__metadata__\":{\"n\":" + ByteMutator.InterestingTokens[random.Next(ByteMutator.InterestingTokens.Length)] + ",", StringComparison.Ordinal);
                break;
            default: // truncate or extend the data section
                data = random.Next(2) == 0 && data.Length > 0 ? data[..random.Next(data.Length)] : [.. data, .. mutator.RandomBytes(1 + random.Next(9))];
                break;
        }
        byte[] headerBytes = Encoding.UTF8.GetBytes(header);
        if (random.Next(10) == 0 && headerBytes.Length > 0)
            headerBytes[random.Next(headerBytes.Length)] = ByteMutator.InvalidUtf8[random.Next(ByteMutator.InvalidUtf8.Length)][0];
        var result = new byte[8 + headerBytes.Length + data.Length];
        ulong prefix = random.Next(8) switch
        {
            0 => (ulong)headerBytes.Length + (ulong)random.Next(-3, 4),
            1 => ((ulong)random.Next() << 32) | (uint)random.Next(),
            _ => (ulong)headerBytes.Length,
        };
        BinaryPrimitives.WriteUInt64LittleEndian(result, prefix);
        headerBytes.CopyTo(result, 8);
        data.CopyTo(result, 8 + headerBytes.Length);
        return result;
    }

    /// <summary>A header written as text plus <paramref name="dataBytes"/> zero bytes of data.</summary>
    private static byte[] Build(string header, int dataBytes)
    {
        byte[] json = Encoding.UTF8.GetBytes(header);
        var file = new byte[8 + json.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)json.Length);
        json.CopyTo(file, 8);
        return file;
    }

    private sealed record GeneratedEntry(string Name, string DType, long[] Shape, long[]? Offsets);

    /// <summary>
    /// Files generated from scratch: 0–5 entries with names from a small pool (so duplicates happen), dtypes valid or
    /// not, shapes mixing small and huge dimensions, offsets either consistent (the tensors tile the data) or arbitrary,
    /// optional metadata, and a data section whose length is right or off.
    /// </summary>
    private static Gen<byte[]> GeneratedFiles()
    {
        var names = Gen.Elements("a", "b", "w", "h.0.mlp.c_fc.weight", "__metadata__", "", "é", "a\"b");
        var dtypes = Gen.Elements("F32", "F32", "F16", "BF16", "I32", "I64", "F64", "x");
        var dimension = Gen.Frequency(
            (6, Gen.Choose(0, 5).Select(d => (long)d)),
            (1, Gen.Elements(-1L, 65536L, 4294967296L, 1L << 40, long.MaxValue)));
        var shape = Gen.Choose(0, 4).SelectMany(rank => dimension.ArrayOf(rank));
        var offsets = Gen.Frequency(
            (4, Gen.Constant<long[]?>(null)), // consistent: computed from the shapes
            (1, Gen.Elements<long[]?>([0, 0], [0, 8], [8, 0], [-8, 0], [0, 1L << 40], [4, 12], [0, long.MaxValue])));
        var entry = from n in names from d in dtypes from s in shape from o in offsets select new GeneratedEntry(n, d, s, o);
        return from entries in Gen.Choose(0, 5).SelectMany(k => entry.ArrayOf(k))
               from withMetadata in Gen.Elements(false, true)
               from dataDelta in Gen.Frequency((5, Gen.Constant(0)), (1, Gen.Choose(-8, 8)))
               select Serialize(entries, withMetadata, dataDelta);
    }

    private static byte[] Serialize(GeneratedEntry[] entries, bool withMetadata, int dataDelta)
    {
        var header = new StringBuilder("{");
        if (withMetadata) header.Append("\"__metadata__\":{\"format\":\"pt\"}");
        long cursor = 0;
        foreach (var e in entries)
        {
            int size = e.DType switch { "F32" or "I32" => 4, "F16" or "BF16" => 2, "I64" or "F64" => 8, _ => 1 };
            long count = 1;
            foreach (long d in e.Shape) count = unchecked(count * d);
            long bytes = unchecked(count * size);
            long[] offsets = e.Offsets ?? [cursor, unchecked(cursor + bytes)];
            if (e.Offsets is null) cursor = unchecked(cursor + bytes);
            if (header.Length > 1) header.Append(',');
            header.Append($"\"{e.Name.Replace("\"", "\\\"", StringComparison.Ordinal)}\":{{\"dtype\":\"{e.DType}\",\"shape\":[{string.Join(",", e.Shape)}],\"data_offsets\":[{offsets[0]},{offsets[1]}]}}");
        }
        header.Append('}');
        // The data section is at most a few KiB whatever the header says: claims are what is being tested.
        int dataLength = (int)Math.Clamp(cursor + dataDelta, 0, 4096);
        return Build(header.ToString(), dataLength);
    }
}
