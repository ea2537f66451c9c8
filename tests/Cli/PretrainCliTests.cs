using DistAlign.Cli;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Cli;

/// <summary>The pretrain / sample commands end to end, in process, on a tiny model.</summary>
public class PretrainCliTests : CliTestBase
{

    private static readonly string[] TinyModel =
        ["--layers", "1", "--heads", "2", "--channels", "16", "--context", "16", "--batch", "2", "--seq", "8", "--threads", "1"];

    private int Pretrain(string outDir, int steps, params string[] extra) =>
        Program.Main(["pretrain", "--out", outDir, "--steps", steps.ToString(), "--checkpoint-every", "2", "--eval-every", "2", .. TinyModel, .. extra]);

    [Test]
    public void PretrainThenSampleFromTheWrittenModel()
    {
        string run = Path.Combine(TestDirectory, "run");
        Assert.That(Pretrain(run, 4), Is.EqualTo(0), Error.ToString());
        Assert.That(File.Exists(Path.Combine(run, GptCheckpoint.ModelFileName)));
        Assert.That(File.ReadAllText(Path.Combine(run, GptCheckpoint.LatestFileName)).Trim(), Is.EqualTo("step-00000004"));
        Assert.That(Output.ToString(), Does.Contain("validation loss"));

        int code = Program.Main(["sample", "--model", Path.Combine(run, GptCheckpoint.ModelFileName), "--prompt", "Call me", "--max-tokens", "5", "--samples", "2", "--threads", "1"]);
        Assert.That(code, Is.EqualTo(0), Error.ToString());
        Assert.That(Output.ToString(), Does.Contain("--- sample 2").And.Contain("Call me"));
    }

    [Test]
    public void ResumeContinuesAndAFreshRunRefusesToOverwrite()
    {
        string run = Path.Combine(TestDirectory, "run");
        Assert.That(Pretrain(run, 2), Is.EqualTo(0), Error.ToString());
        // Same flags but more steps is a different run: the schedule changes, so resume must refuse it.
        Assert.That(Pretrain(run, 4, "--resume"), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("different settings"));
        Assert.That(Pretrain(run, 2), Is.EqualTo(Program.UsageError), "a second run into the same folder must not overwrite it");
        Assert.That(Error.ToString(), Does.Contain("--resume"));
        Assert.That(Pretrain(run, 2, "--resume"), Is.EqualTo(0), Error.ToString());
    }

    [Test]
    public void BadFlagsAndMissingFilesGiveOneLineAndExitCode2()
    {
        Assert.That(Program.Main(["pretrain", "--out", TestDirectory, "--steps", "many"]), Is.EqualTo(Program.UsageError));
        Assert.That(Program.Main(["sample", "--model", Path.Combine(TestDirectory, "nope.safetensors")]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("no such file"));
        Assert.That(Program.Main(["pretrain", "--out", TestDirectory, "--heads", "3", "--channels", "16"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("multiple of heads"));
        Assert.That(Error.ToString(), Does.Not.Contain("   at "), "no stack trace without --verbose");
    }

    [Test]
    public void ACheckpointOfTheWrongShapeIsAOneLineError()
    {
        string bad = Path.Combine(TestDirectory, "bad.safetensors");
        File.WriteAllBytes(bad, [1, 2, 3]);
        Assert.That(Program.Main(["sample", "--model", bad]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("bad.safetensors"));
    }
}
