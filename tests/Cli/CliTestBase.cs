namespace DistAlign.Tests.Cli;

/// <summary>
/// In-process CLI tests: a fresh temporary folder per test and the console captured into
/// <see cref="Output"/> and <see cref="Error"/> (restored afterwards).
/// </summary>
[NonParallelizable]
public abstract class CliTestBase
{
    private TextWriter? savedOut, savedError;

    protected string TestDirectory { get; private set; } = "";
    protected StringWriter Output { get; private set; } = new();
    protected StringWriter Error { get; private set; } = new();

    [SetUp]
    public void CaptureConsoleAndMakeFolder()
    {
        TestDirectory = Directory.CreateTempSubdirectory("distalign-cli-").FullName;
        savedOut = Console.Out;
        savedError = Console.Error;
        Output = new StringWriter();
        Error = new StringWriter();
        Console.SetOut(Output);
        Console.SetError(Error);
    }

    [TearDown]
    public void RestoreConsoleAndRemoveFolder()
    {
        Console.SetOut(savedOut!);
        Console.SetError(savedError!);
        Directory.Delete(TestDirectory, recursive: true);
    }
}
