using DistAlign.Cli;
using DistAlign.Tests.Alignment;
using DistAlign.Tests.Cli;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Reliability;

/// <summary>
/// The CLI contract of issue #10: bad flags, missing or malformed inputs and a configuration over the memory budget
/// give one line on stderr and exit code 2; I/O failures (unwritable output, disk full) are reported without a stack
/// trace (exit 1 for a run that fails, 2 for an output folder refused up front) unless <c>--verbose</c>.
/// </summary>
public class CliContractTests : CliTestBase
{
    private static readonly string[] Tiny =
        ["--layers", "1", "--heads", "2", "--channels", "16", "--context", "16", "--batch", "2", "--seq", "8", "--threads", "1"];

    private string TextFile()
    {
        string path = Path.Combine(TestDirectory, "text.txt");
        if (!File.Exists(path)) File.WriteAllText(path, ShippedData.MobyDick()[..30_000]);
        return path;
    }

    private string[] ErrorLines() => Error.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);

    private void AssertOneLineUsageError(int code, string? mention, string what)
    {
        Assert.That(code, Is.EqualTo(Program.UsageError), $"{what}: {Error}");
        Assert.That(ErrorLines(), Has.Length.EqualTo(1), $"{what}: exactly one line on stderr, got:\n{Error}");
        Assert.That(Error.ToString(), Does.StartWith("distalign: ").And.Not.Contain("   at "), what);
        if (mention is not null) Assert.That(Error.ToString(), Does.Contain(mention), what);
    }

    private int Main(params string[] args)
    {
        Error.GetStringBuilder().Clear();
        return Program.Main(args);
    }

    public static IEnumerable<TestCaseData> BadInvocations()
    {
        string d = "DIR"; // replaced by the test's folder
        yield return new TestCaseData(new[] { "pretrian" }, "pretrian").SetName("UnknownCommand");
        yield return new TestCaseData(new[] { "pretrain", "--out", d, "--stepz", "3" }, "--stepz").SetName("UnknownOption");
        yield return new TestCaseData(new[] { "pretrain" }, "--out").SetName("MissingRequiredOption");
        yield return new TestCaseData(new[] { "pretrain", "--out", d, "--steps", "many", "--layers", "x" }, "many").SetName("TwoBadValuesStillOneLine");
        yield return new TestCaseData(new[] { "pretrain", "--out", d, "--threads", "0" }, "--threads").SetName("ZeroThreads");
        yield return new TestCaseData(new[] { "pretrain", "--out", d, "--memory-budget", "lots" }, "--memory-budget").SetName("BadMemoryBudget");
        yield return new TestCaseData(new[] { "pretrain", "--out", d, "--text", "DIR/missing.txt" }, "no such file").SetName("MissingTextFile");
        yield return new TestCaseData(new[] { "pretrain", "--out", d, "--tokenizer", "gpt3" }, "gpt3").SetName("UnknownTokenizer");
        yield return new TestCaseData(new[] { "pretrain", "--out", d, "--seq", "64", "--context", "16" }, "--seq").SetName("SequenceLongerThanContext");
        yield return new TestCaseData(new[] { "sample", "--model", "DIR/missing.safetensors" }, "no such file").SetName("MissingModel");
        yield return new TestCaseData(new[] { "align", "--objective", "dpo", "--model", "DIR/missing.safetensors", "--data", "DIR/missing.jsonl", "--out", d }, "no such file").SetName("AlignMissingModel");
        yield return new TestCaseData(new[] { "align", "--objective", "dpo", "--model", "DIR/pi0.safetensors", "--data", "DIR/missing.jsonl", "--out", d }, "no such file").SetName("AlignMissingData");
        yield return new TestCaseData(new[] { "align", "--objective", "dpo", "--model", "DIR/bad.safetensors", "--data", "DIR/prefs.jsonl", "--out", d }, "bad.safetensors").SetName("AlignCorruptModel");
        yield return new TestCaseData(new[] { "align", "--objective", "dpo", "--model", "DIR/pi0.safetensors", "--data", "DIR/bad.jsonl", "--out", d }, "bad.jsonl:2:").SetName("AlignMalformedData");
        yield return new TestCaseData(new[] { "reward", "--model", "DIR/pi0.safetensors", "--data", "DIR/prefs.jsonl", "--out", d, "--batch", "-1" }, "--batch").SetName("RewardNegativeBatch");
    }

    [TestCaseSource(nameof(BadInvocations))]
    public void BadFlagsAndMissingOrMalformedFilesAreOneLineAndExitCode2(string[] args, string mention)
    {
        TinyAlignmentSetup.WriteModel(Path.Combine(TestDirectory, "pi0.safetensors"));
        TinyAlignmentSetup.WriteJsonl(Path.Combine(TestDirectory, "prefs.jsonl"), TinyAlignmentSetup.Examples());
        File.WriteAllBytes(Path.Combine(TestDirectory, "bad.safetensors"), [16, 0, 0, 0, 0, 0, 0, 0, (byte)'{', (byte)'"', (byte)'a']);
        File.WriteAllText(Path.Combine(TestDirectory, "bad.jsonl"), "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\"\n");
        string out_ = Path.Combine(TestDirectory, "out");
        string[] resolved = [.. args.Select(a => a == "DIR" ? out_ : a.Replace("DIR/", TestDirectory + "/", StringComparison.Ordinal))];
        AssertOneLineUsageError(Main(resolved), mention, string.Join(' ', args));
        Assert.That(Directory.Exists(out_) && Directory.EnumerateFileSystemEntries(out_).Any(), Is.False, "nothing is written for a usage error");
        // --verbose adds the stack trace for errors that come from code (not from the parser).
        if (Main([.. resolved, "--verbose"]) == Program.UsageError && !args.Contains("--stepz") && args[0] != "pretrian" && args.Length > 1
            && !args.Contains("many") && !args.Contains("lots"))
            Assert.That(Error.ToString(), Does.Contain("   at "), "--verbose prints the stack trace");
    }

    [Test]
    public void TextThatIsNotUtf8IsRefusedWithTheByteOffset()
    {
        string path = Path.Combine(TestDirectory, "latin1.txt");
        File.WriteAllBytes(path, [.. "Call me Ishmael. Caf"u8.ToArray(), 0xE9, .. " au lait.\n"u8.ToArray()]);
        AssertOneLineUsageError(Main(["pretrain", "--out", Path.Combine(TestDirectory, "run"), "--text", path, "--steps", "1", .. Tiny]),
            "invalid byte 0xE9 at byte 20", "latin-1 text");
    }

    [Test]
    public void AConfigurationOverTheMemoryBudgetIsRefusedBeforeAllocatingWithBytesAndLargestArena()
    {
        // 48 layers × 4096 channels: about 10 billion parameters, 160 GB with gradients and moments: it could not be
        // allocated on this machine, so an exit code 2 in well under a second means nothing was allocated.
        string run = Path.Combine(TestDirectory, "huge");
        var watch = System.Diagnostics.Stopwatch.StartNew();
        int code = Main(["pretrain", "--out", run, "--layers", "48", "--heads", "32", "--channels", "4096", "--context", "1024",
                         "--batch", "1", "--seq", "16", "--memory-budget", "8GiB", "--threads", "1"]);
        TestContext.Out.WriteLine($"{watch.ElapsedMilliseconds} ms: {Error}");
        AssertOneLineUsageError(code, "The largest arena is 'adam_moments'", "huge model");
        Assert.That(Error.ToString(), Does.Contain("The memory plan needs").And.Contain("8,589,934,592 bytes (8.0 GiB)"));
        Assert.That(Directory.Exists(run), Is.False, "refused before anything was written");
        Assert.That(watch.Elapsed.TotalSeconds, Is.LessThan(5));

        // Without --memory-budget the budget is the memory the process may use: the same model is refused just the same.
        code = Main(["pretrain", "--out", run, "--layers", "48", "--heads", "32", "--channels", "4096", "--context", "1024",
                     "--batch", "1", "--seq", "16", "--threads", "1"]);
        AssertOneLineUsageError(code, "The largest arena is 'adam_moments'", "huge model, default budget");
        Assert.That(Error.ToString(), Does.Contain($"the budget is {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes:N0} bytes"));

        // Small weights but long sequences: the activations are the largest arena.
        code = Main(["pretrain", "--out", run, .. Tiny[..6], "--context", "4096", "--batch", "64", "--seq", "4096", "--threads", "1", "--memory-budget", "64MiB"]);
        AssertOneLineUsageError(code, "The largest arena is 'activations'", "long sequences");

        // The same tiny run fits a generous budget and trains.
        code = Main(["pretrain", "--out", run, "--text", TextFile(), "--steps", "2", "--memory-budget", "1GiB", .. Tiny]);
        Assert.That(code, Is.EqualTo(0), Error.ToString());
    }

    [Test]
    public void AnUnwritableOutputFolderIsRefusedBeforeTraining()
    {
        // Works for root too: no folder can be created under a file.
        string blocker = Path.Combine(TestDirectory, "a-file");
        File.WriteAllText(blocker, "x");
        foreach (string outDir in new[] { Path.Combine(blocker, "run"), "/dev/null/run", "/proc/version/run" })
        {
            int code = Main(["pretrain", "--out", outDir, "--text", TextFile(), "--steps", "50", .. Tiny]);
            AssertOneLineUsageError(code, "cannot write there", outDir);
            Assert.That(Output.ToString(), Does.Not.Contain("step 1"), "refused before training");
        }
        if (Environment.UserName != "root" && !OperatingSystem.IsWindows())
        {
            string locked = Path.Combine(TestDirectory, "locked");
            Directory.CreateDirectory(locked);
            File.SetUnixFileMode(locked, UnixFileMode.UserRead | UnixFileMode.UserExecute);
            AssertOneLineUsageError(Main(["pretrain", "--out", Path.Combine(locked, "run"), "--text", TextFile(), "--steps", "5", .. Tiny]),
                "cannot write there", "read-only folder");
            File.SetUnixFileMode(locked, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
    }

    [Test]
    public void ACorruptLatestCheckpointOnResumeIsAOneLineError()
    {
        string run = Path.Combine(TestDirectory, "run");
        string[] args = ["pretrain", "--out", run, "--text", TextFile(), "--steps", "2", "--checkpoint-every", "1", .. Tiny];
        Assert.That(Main(args), Is.EqualTo(0), Error.ToString());
        string latest = GptCheckpoint.LatestTraining(run)!;
        byte[] state = File.ReadAllBytes(Path.Combine(latest, GptCheckpoint.StateFileName));
        File.WriteAllBytes(Path.Combine(latest, GptCheckpoint.StateFileName), state[..(state.Length / 2)]);
        AssertOneLineUsageError(Main([.. args, "--resume"]), "training-state.safetensors", "truncated state");
        Assert.That(Error.ToString(), Does.Contain("truncated"));
        File.WriteAllText(Path.Combine(run, GptCheckpoint.LatestFileName), "step-00000099\n");
        AssertOneLineUsageError(Main([.. args, "--resume"]), "step-00000099", "latest names a missing folder");
    }

    /// <summary>
    /// Disk full for real: the run writes to a 1.2 MB tmpfs mounted in a private mount namespace (<c>unshare -rm</c>),
    /// room for two checkpoints of this model but not a third. The run must stop with an I/O error, exit 1, no stack
    /// trace, and leave the last complete checkpoint loadable; with <c>--verbose</c> the stack trace is printed.
    /// </summary>
    [TestCase(false)]
    [TestCase(true)]
    public void DiskFullStopsTheRunWithoutAStackTraceAndKeepsTheLastCheckpoint(bool verbose)
    {
        if (OperatingSystem.IsWindows() || !File.Exists("/usr/bin/unshare")) Assert.Ignore("needs Linux unshare(1)");
        string mount = Path.Combine(TestDirectory, "small-disk"), copy = Path.Combine(TestDirectory, "after");
        Directory.CreateDirectory(mount);
        string args = $"pretrain --out '{mount}/run' --text '{TextFile()}' --steps 6 --checkpoint-every 1 {string.Join(' ', Tiny)}" + (verbose ? " --verbose" : "");
        using var shell = CliProcess.StartShell(
            $"mount -t tmpfs -o size=1200k tmpfs '{mount}' || exit 99; \"$DISTALIGN_HOST\" \"$DISTALIGN_DLL\" {args}; code=$?; cp -a '{mount}/run' '{copy}'; exit $code");
        int code = shell.WaitForExit(TimeSpan.FromMinutes(2));
        if (code == 99 || shell.Error.Contains("unshare", StringComparison.Ordinal)) Assert.Ignore($"cannot mount a small tmpfs here: {shell.Error}");
        TestContext.Out.WriteLine(shell.Error);
        Assert.That(code, Is.EqualTo(Program.RunFailed), shell.Error);
        Assert.That(shell.Error, Does.Contain("distalign: I/O error: No space left on device"));
        if (verbose) Assert.That(shell.Error, Does.Contain("   at "));
        else Assert.That(shell.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(1), shell.Error);

        string latest = GptCheckpoint.LatestTraining(copy)!;
        using var model = new Gpt(new GptConfig(1, 2, 16, 2257, 16));
        var (state, _) = GptCheckpoint.LoadTraining(latest, model);
        Assert.That(state.Step, Is.InRange(1, 5));
        Assert.That(Directory.GetDirectories(copy, ".step-*"), Is.Empty, "the failed write removed its temporary folder");
        TestContext.Out.WriteLine($"disk full at the checkpoint after step {state.Step + 1}; latest = {Path.GetFileName(latest)} loads");
    }
}
