using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using DistAlign.Engine.SafeTensors;

namespace DistAlign.Tests.Engine;

public class SafeTensorsRoundTripTests
{
    [Test]
    public void EveryDTypeAndMetadataRoundTrip()
    {
        float[] f32 = [1f, -2.5f, 3.25f, float.MaxValue, float.Epsilon, -0f];
        float[] halfExact = [1f, -2.5f, 0.5f, 1024f];
        int[] i32 = [1, -2, int.MaxValue, int.MinValue];
        long[] i64 = [1, -2, long.MaxValue, long.MinValue, 0, 42];
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["step"] = "1200", ["note"] = "ünïcødé \"quoted\"" };
        byte[] bytes = SafeTensorsWriter.ToBytes(
        [
            SafeTensor.FromFloats("f32", f32, [2, 3]),
            SafeTensor.FromFloats("bf16", halfExact, [4], SafeTensorDType.BF16),
            SafeTensor.FromFloats("f16", halfExact, [2, 2], SafeTensorDType.F16),
            SafeTensor.FromInt32("i32", i32, [4]),
            SafeTensor.FromInt64("i64", i64, [3, 2]),
            SafeTensor.FromFloats("scalar", [7f], []),
            SafeTensor.FromFloats("empty", [], [0, 5]),
        ], metadata);

        using var file = SafeTensorsFile.FromBytes(bytes, "roundtrip");
        Assert.That(file.Names, Is.EqualTo(new[] { "bf16", "empty", "f16", "f32", "i32", "i64", "scalar" }));
        Assert.That(file.Metadata, Is.EquivalentTo(metadata));
        Assert.That(file.ReadF32("f32"), Is.EqualTo(f32));
        Assert.That(file.GetInfo("f32").Shape, Is.EqualTo(new long[] { 2, 3 }));
        Assert.That(file.GetInfo("bf16").DType, Is.EqualTo(SafeTensorDType.BF16));
        Assert.That(file.ReadF32("bf16"), Is.EqualTo(halfExact));
        Assert.That(file.ReadF32("f16"), Is.EqualTo(halfExact));
        Assert.That(file.ReadI32("i32"), Is.EqualTo(i32));
        Assert.That(file.ReadI64("i64"), Is.EqualTo(i64));
        Assert.That(file.ReadI64("i32"), Is.EqualTo(i32.Select(v => (long)v).ToArray()));
        Assert.That(file.ReadF32("scalar"), Is.EqualTo(new[] { 7f }));
        Assert.That(file.GetInfo("scalar").Shape, Is.Empty);
        Assert.That(file.ReadF32("empty"), Is.Empty);
        Assert.That(file.ReadBytes("i32"), Has.Length.EqualTo(16));
    }

    [Test]
    public void HeaderIsPaddedToEightBytesAndOutputIsDeterministic()
    {
        SafeTensor[] tensors = [SafeTensor.FromFloats("b", [1f, 2f]), SafeTensor.FromFloats("a", [3f])];
        byte[] first = SafeTensorsWriter.ToBytes(tensors);
        byte[] second = SafeTensorsWriter.ToBytes(tensors.Reverse());
        Assert.That(second, Is.EqualTo(first), "input order must not matter");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(first);
        Assert.That(headerLength % 8, Is.EqualTo(0UL));
        string header = Encoding.UTF8.GetString(first, 8, (int)headerLength);
        Assert.That(header.TrimEnd(' '), Does.EndWith("}"));
        Assert.That(header.IndexOf("\"a\"", StringComparison.Ordinal), Is.LessThan(header.IndexOf("\"b\"", StringComparison.Ordinal)));
        using var file = SafeTensorsFile.FromBytes(first);
        Assert.That(file.GetInfo("a").DataBegin, Is.EqualTo(0));
        Assert.That(file.GetInfo("b").DataBegin, Is.EqualTo(4));
    }

    [Test]
    public void ReadsTheLayoutThePythonLibraryWrites()
    {
        // Exactly what safetensors.torch.save_file({"a": torch.tensor([1.0, -2.5])}) produces:
        // u64 header length, compact JSON padded with spaces to a multiple of 8, then the little-endian floats.
        string json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        string padded = json.PadRight((json.Length + 7) / 8 * 8);
        var bytes = new List<byte>();
        bytes.AddRange(BitConverter.GetBytes((ulong)padded.Length));
        bytes.AddRange(Encoding.UTF8.GetBytes(padded));
        bytes.AddRange(BitConverter.GetBytes(1.0f));
        bytes.AddRange(BitConverter.GetBytes(-2.5f));

        using var file = SafeTensorsFile.FromBytes(bytes.ToArray(), "python.safetensors");
        Assert.That(file.Names, Is.EqualTo(new[] { "a" }));
        Assert.That(file.GetInfo("a").DType, Is.EqualTo(SafeTensorDType.F32));
        Assert.That(file.ReadF32("a"), Is.EqualTo(new[] { 1.0f, -2.5f }));
        Assert.That(file.Metadata, Is.Empty);

        // And our writer produces the same bytes for the same tensor.
        Assert.That(SafeTensorsWriter.ToBytes([SafeTensor.FromFloats("a", [1.0f, -2.5f])]), Is.EqualTo(bytes.ToArray()));
    }

    [Test]
    public void ReadsIntoASpanAndFromAStream()
    {
        byte[] bytes = SafeTensorsWriter.ToBytes([SafeTensor.FromFloats("w", [1f, 2f, 3f], [3], SafeTensorDType.BF16)]);
        using var file = SafeTensorsFile.FromStream(new MemoryStream(bytes), "stream");
        var destination = new float[3];
        file.ReadF32("w", destination);
        Assert.That(destination, Is.EqualTo(new[] { 1f, 2f, 3f }));
        var ex = Assert.Throws<ArgumentException>(() => file.ReadF32("w", new float[2]));
        Assert.That(ex!.Message, Does.Contain("'w'").And.Contain("3 elements"));
    }

    [Test]
    public void AccessorsRejectTheWrongTypeAndUnknownNames()
    {
        byte[] bytes = SafeTensorsWriter.ToBytes([SafeTensor.FromInt32("ids", [1, 2], [2]), SafeTensor.FromFloats("w", [1f])]);
        using var file = SafeTensorsFile.FromBytes(bytes, "m.safetensors");
        var wrong = Assert.Throws<InvalidOperationException>(() => file.ReadF32("ids"));
        Assert.That(wrong!.Message, Does.Contain("'ids'").And.Contain("I32").And.Contain("ReadI32"));
        Assert.Throws<InvalidOperationException>(() => file.ReadI32("w"));
        var missing = Assert.Throws<KeyNotFoundException>(() => file.ReadF32("nope"));
        Assert.That(missing!.Message, Does.Contain("'nope'").And.Contain("m.safetensors"));
    }

    [Test]
    public void WriterRejectsInconsistentInput()
    {
        Assert.Throws<ArgumentException>(() => _ = new SafeTensor("x", SafeTensorDType.F32, [3], new byte[8]));
        Assert.Throws<ArgumentException>(() => _ = new SafeTensor("x", SafeTensorDType.F32, [-1], Array.Empty<byte>()));
        Assert.Throws<ArgumentException>(() => _ = new SafeTensor("__metadata__", SafeTensorDType.F32, [0], Array.Empty<byte>()));
        Assert.Throws<ArgumentException>(() => SafeTensor.FromFloats("x", [1f], [1], SafeTensorDType.I32));
        var dup = Assert.Throws<ArgumentException>(() => SafeTensorsWriter.ToBytes([SafeTensor.FromFloats("x", [1f]), SafeTensor.FromFloats("x", [2f])]));
        Assert.That(dup!.Message, Does.Contain("'x'"));
    }
}

public class SafeTensorsValidationTests
{
    private const string Source = "bad.safetensors";

    /// <summary>Builds a file from a raw header (padded to 8 bytes unless told not to) and a data section.</summary>
    private static byte[] Build(string headerJson, int dataBytes, ulong? headerLengthOverride = null) =>
        Build(Encoding.UTF8.GetBytes(headerJson), dataBytes, headerLengthOverride);

    private static byte[] Build(byte[] header, int dataBytes, ulong? headerLengthOverride = null)
    {
        int padded = (header.Length + 7) / 8 * 8;
        var bytes = new byte[8 + padded + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, headerLengthOverride ?? (ulong)padded);
        header.CopyTo(bytes, 8);
        bytes.AsSpan(8 + header.Length, padded - header.Length).Fill((byte)' ');
        return bytes;
    }

    private static SafeTensorsFormatException Reject(byte[] bytes, SafeTensorsRule rule)
    {
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.FromBytes(bytes, Source).Dispose());
        TestContext.Out.WriteLine(ex!.Message);
        Assert.That(ex.Rule, Is.EqualTo(rule), ex.Message);
        Assert.That(ex.SourceName, Is.EqualTo(Source));
        Assert.That(ex.Message, Does.Contain(Source).And.Contain(rule.ToString()));
        return ex;
    }

    private static string Entry(string dtype = "\"F32\"", string shape = "[2]", string offsets = "[0,8]") =>
        $"{{\"dtype\":{dtype},\"shape\":{shape},\"data_offsets\":{offsets}}}";

    [Test]
    public void FileShorterThanEightBytes()
    {
        var ex = Reject([1, 2, 3], SafeTensorsRule.FileTooShort);
        Assert.That(ex.Message, Does.Contain("3 bytes"));
    }

    [Test]
    public void HeaderLengthLargerThanFile()
    {
        var ex = Reject(Build("{}", 0, headerLengthOverride: 1000), SafeTensorsRule.HeaderLengthBeyondFile);
        Assert.That(ex.Message, Does.Contain("1000").And.Contain("8 bytes follow"));
        Assert.That(ex.ByteOffset, Is.EqualTo(0));
    }

    [Test]
    public void HugeHeaderLengthIsRejectedWithoutAllocating()
    {
        var ex = Reject(Build("{}", 0, headerLengthOverride: 1UL << 63), SafeTensorsRule.HeaderTooLarge);
        Assert.That(ex.Message, Does.Contain((1UL << 63).ToString()));
        Reject(Build("{}", 0, headerLengthOverride: ulong.MaxValue), SafeTensorsRule.HeaderTooLarge);
    }

    [Test]
    public void InvalidUtf8()
    {
        byte[] header = [.. Encoding.UTF8.GetBytes("{\"a"), 0xFF, .. Encoding.UTF8.GetBytes("\":" + Entry() + "}")];
        var ex = Reject(Build(header, 8), SafeTensorsRule.InvalidUtf8);
        Assert.That(ex.ByteOffset, Is.EqualTo(8 + 3));
        Assert.That(ex.Message, Does.Contain("0xFF"));
    }

    [TestCase("{\"a\":")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",}}")]
    [TestCase("")]
    [TestCase("{} x")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}}")]
    public void InvalidJson(string header)
    {
        var ex = Reject(Build(header, 0), SafeTensorsRule.InvalidJson);
        Assert.That(ex.ByteOffset, Is.GreaterThanOrEqualTo(8), "single-line headers get a file offset");
        Assert.That(ex.Message, Does.Not.Contain("reader options"));
    }

    [Test]
    public void LoneSurrogateEscapeInName()
    {
        var ex = Reject(Build("{\"a\\ud800\":" + Entry() + "}", 8), SafeTensorsRule.InvalidJson);
        Assert.That(ex.ByteOffset, Is.EqualTo(8 + 1));
    }

    [Test]
    public void EscapedDuplicateNameIsStillADuplicate() =>
        Reject(Build("{\"a\":" + Entry() + ",\"\\u0061\":" + Entry(offsets: "[8,16]") + "}", 16), SafeTensorsRule.DuplicateName);

    [TestCase("[1,2]")]
    [TestCase("\"text\"")]
    [TestCase("42")]
    public void JsonNotAnObject(string header)
    {
        var ex = Reject(Build(header, 0), SafeTensorsRule.HeaderNotObject);
        Assert.That(ex.ByteOffset, Is.EqualTo(8));
    }

    [TestCase("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", "'dtype'")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", "'shape'")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", "'data_offsets'")]
    public void MissingField(string header, string field)
    {
        var ex = Reject(Build(header, 8), SafeTensorsRule.MissingField);
        Assert.That(ex.TensorName, Is.EqualTo("a"));
        Assert.That(ex.Message, Does.Contain(field).And.Contain("tensor 'a'"));
        Assert.That(ex.ByteOffset, Is.EqualTo(8 + 1), "points at the tensor's name");
    }

    [Test]
    public void UnknownDType()
    {
        var ex = Reject(Build("{\"a\":" + Entry(dtype: "\"F64\"") + "}", 8), SafeTensorsRule.UnknownDType);
        Assert.That(ex.Message, Does.Contain("'F64'").And.Contain("F32, F16, BF16, I32, I64"));
        Assert.That(ex.TensorName, Is.EqualTo("a"));
    }

    [Test]
    public void DTypeOfWrongJsonType() =>
        Reject(Build("{\"a\":" + Entry(dtype: "32") + "}", 8), SafeTensorsRule.WrongFieldType);

    [TestCase("[-2]", "non-negative")]
    [TestCase("[1.5]", "1.5")]
    [TestCase("[2e0]", "2e0")]
    [TestCase("[\"2\"]", "string")]
    [TestCase("[99999999999999999999]", "99999999999999999999")]
    public void InvalidShapeEntry(string shape, string mention)
    {
        var ex = Reject(Build("{\"a\":" + Entry(shape: shape) + "}", 8), SafeTensorsRule.InvalidShape);
        Assert.That(ex.Message, Does.Contain(mention).And.Contain("shape[0]"));
        Assert.That(ex.TensorName, Is.EqualTo("a"));
    }

    [Test]
    public void ShapeProductOverflow()
    {
        var ex = Reject(Build("{\"a\":" + Entry(shape: "[4294967296,4294967296]") + "}", 8), SafeTensorsRule.InvalidShape);
        Assert.That(ex.Message, Does.Contain("overflows"));
    }

    [Test]
    public void ShapeNotAnArray() => Reject(Build("{\"a\":" + Entry(shape: "2") + "}", 8), SafeTensorsRule.WrongFieldType);

    [TestCase("[0]")]
    [TestCase("[0,8,16]")]
    [TestCase("[0,-8]")]
    public void MalformedDataOffsets(string offsets) =>
        Reject(Build("{\"a\":" + Entry(offsets: offsets) + "}", 8), SafeTensorsRule.InvalidDataOffsets);

    [Test]
    public void SizeMismatch()
    {
        var ex = Reject(Build("{\"a\":" + Entry(shape: "[3]") + "}", 8), SafeTensorsRule.SizeMismatch);
        Assert.That(ex.Message, Does.Contain("needs 12 bytes").And.Contain("cover 8"));
        Assert.That(ex.TensorName, Is.EqualTo("a"));
    }

    [Test]
    public void EndBeyondData()
    {
        byte[] bytes = Build("{\"a\":" + Entry() + "}", 4);
        var ex = Reject(bytes, SafeTensorsRule.OutOfBounds);
        Assert.That(ex.Message, Does.Contain("4-byte data section"));
    }

    [Test]
    public void BeginAfterEnd()
    {
        var ex = Reject(Build("{\"a\":" + Entry(offsets: "[8,0]") + "}", 8), SafeTensorsRule.BeginAfterEnd);
        Assert.That(ex.TensorName, Is.EqualTo("a"));
    }

    [Test]
    public void OverlappingTensors()
    {
        string header = "{\"a\":" + Entry(offsets: "[0,8]") + ",\"b\":" + Entry(offsets: "[4,12]") + "}";
        byte[] bytes = Build(header, 12);
        var ex = Reject(bytes, SafeTensorsRule.Overlap);
        Assert.That(ex.TensorName, Is.EqualTo("b"));
        Assert.That(ex.Message, Does.Contain("'a'"));
        long dataStart = 8 + (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.That(ex.ByteOffset, Is.EqualTo(dataStart + 4));
    }

    [Test]
    public void GapBetweenTensors()
    {
        string header = "{\"a\":" + Entry(offsets: "[0,8]") + ",\"b\":" + Entry(offsets: "[12,20]") + "}";
        var ex = Reject(Build(header, 20), SafeTensorsRule.Gap);
        Assert.That(ex.Message, Does.Contain("[8, 12)"));
        Assert.That(ex.TensorName, Is.EqualTo("b"));
    }

    [Test]
    public void GapAtTheStartAndTrailingBytes()
    {
        Reject(Build("{\"a\":" + Entry(offsets: "[4,12]") + "}", 12), SafeTensorsRule.Gap);
        var ex = Reject(Build("{\"a\":" + Entry() + "}", 12), SafeTensorsRule.Gap);
        Assert.That(ex.Message, Does.Contain("[8, 12)"));
    }

    [Test]
    public void DuplicateTensorName()
    {
        string header = "{\"a\":" + Entry() + ",\"a\":" + Entry(offsets: "[8,16]") + "}";
        var ex = Reject(Build(header, 16), SafeTensorsRule.DuplicateName);
        Assert.That(ex.TensorName, Is.EqualTo("a"));
        Assert.That(ex.ByteOffset, Is.GreaterThan(8 + 1));
    }

    [TestCase("{\"__metadata__\":{\"k\":1}}", "'k'")]
    [TestCase("{\"__metadata__\":{\"k\":null}}", "'k'")]
    [TestCase("{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", "'k'")]
    [TestCase("{\"__metadata__\":[\"k\"]}", "object of strings")]
    public void NonStringMetadata(string header, string mention)
    {
        var ex = Reject(Build(header, 0), SafeTensorsRule.InvalidMetadata);
        Assert.That(ex.Message, Does.Contain(mention));
    }

    [Test]
    public void EntryNotAnObject() => Reject(Build("{\"a\":[1]}", 0), SafeTensorsRule.EntryNotObject);

    [Test]
    public void UnknownAndDuplicateFields()
    {
        Reject(Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", 8), SafeTensorsRule.UnknownField);
        Reject(Build("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8), SafeTensorsRule.DuplicateField);
    }

    [Test]
    public void EmptyObjectWithNoDataIsValid()
    {
        using var file = SafeTensorsFile.FromBytes(Build("{}", 0));
        Assert.That(file.Names, Is.Empty);
    }
}

public class SafeTensorsFileTests
{
    private string _folder = "";

    [SetUp]
    public void CreateFolder()
    {
        _folder = Path.Combine(Path.GetTempPath(), "distalign-safetensors-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_folder);
    }

    [TearDown]
    public void DeleteFolder() => Directory.Delete(_folder, recursive: true);

    [Test]
    public void WriteThenOpenFromDiskLeavesNoTemporaryFile()
    {
        string path = Path.Combine(_folder, "model.safetensors");
        var values = TestSupport.Numerics.RandomFloats(1000, seed: 3);
        SafeTensorsWriter.Write(path, [SafeTensor.FromFloats("w", values, [10, 100])], new Dictionary<string, string> { ["step"] = "7" });
        Assert.That(Directory.GetFiles(_folder), Is.EqualTo(new[] { path }));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.SourceName, Is.EqualTo(path));
        Assert.That(file.ReadF32("w"), Is.EqualTo(values));
        Assert.That(file.Metadata["step"], Is.EqualTo("7"));
    }

    [Test]
    public void WriteReplacesAnExistingFile()
    {
        string path = Path.Combine(_folder, "latest.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensor.FromFloats("w", [1f])]);
        SafeTensorsWriter.Write(path, [SafeTensor.FromFloats("w", [2f])]);
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.ReadF32("w"), Is.EqualTo(new[] { 2f }));
        Assert.That(Directory.GetFiles(_folder), Has.Length.EqualTo(1));
    }

    [Test]
    public void FailedWriteLeavesExistingFileUntouchedAndNoTemporaryFile()
    {
        string path = Path.Combine(_folder, "latest.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensor.FromFloats("w", [1f, 2f])]);
        byte[] before = File.ReadAllBytes(path);

        // "a" is written first, then reading "z"'s bytes fails part-way through the data section.
        using var exploding = new FailingMemory(8);
        var tensors = new[] { SafeTensor.FromFloats("a", [5f, 6f]), new SafeTensor("z", SafeTensorDType.F32, [2], exploding.Memory) };
        exploding.Armed = true;
        Assert.Throws<IOException>(() => SafeTensorsWriter.Write(path, tensors));

        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));
        Assert.That(Directory.GetFiles(_folder), Is.EqualTo(new[] { path }));
    }

    [Test]
    public void InvalidInputCreatesNoFileAtAll()
    {
        string path = Path.Combine(_folder, "never.safetensors");
        Assert.Throws<ArgumentException>(() =>
            SafeTensorsWriter.Write(path, [SafeTensor.FromFloats("x", [1f]), SafeTensor.FromFloats("x", [1f])]));
        Assert.That(Directory.GetFiles(_folder), Is.Empty);
    }

    [Test]
    public void TruncatedFileOnDiskNamesThePath()
    {
        string path = Path.Combine(_folder, "cut.safetensors");
        byte[] bytes = SafeTensorsWriter.ToBytes([SafeTensor.FromFloats("w", [1f, 2f, 3f])]);
        File.WriteAllBytes(path, bytes[..^4]);
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.That(ex!.Rule, Is.EqualTo(SafeTensorsRule.OutOfBounds));
        Assert.That(ex.Message, Does.Contain(path).And.Contain("'w'"));
        File.Delete(path); // the handle must have been released on failure
    }

    /// <summary>Memory whose span can be taken once (to build it) and then throws, like a failing disk read.</summary>
    private sealed class FailingMemory(int length) : MemoryManager<byte>
    {
        private readonly byte[] _bytes = new byte[length];

        public bool Armed { get; set; }

        public override Span<byte> GetSpan() => Armed ? throw new IOException("simulated failure while writing") : _bytes;

        public override MemoryHandle Pin(int elementIndex = 0) => throw new NotSupportedException();

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
