using DistAlign.Cli;

namespace DistAlign.Tests.Cli;

[NonParallelizable]
public class BenchCliTests
{
    [Test]
    public void ThePyTorchPeerIsSkippedWithAReasonWhenPythonIsMissing()
    {
        var saved = Console.Out;
        var output = new StringWriter();
        Console.SetOut(output);
        try
        {
            int code = Program.Main(["bench", "peers", "--python", "/nonexistent/python3", "--threads", "1"]);
            Assert.That(code, Is.EqualTo(0));
        }
        finally { Console.SetOut(saved); }
        Assert.That(output.ToString(), Does.StartWith("device: ").And.Contain("\npeer skipped:"));   // first line: --device resolution
    }
}
