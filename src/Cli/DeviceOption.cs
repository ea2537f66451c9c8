using System.CommandLine;
using System.CommandLine.Invocation;
using DistAlign.Engine.Cuda;

namespace DistAlign.Cli;

/// <summary>
/// <c>--device cuda|cpu|auto</c> on every command. <c>auto</c> (the default) picks CUDA when a usable GPU is
/// found and the command has a CUDA path, else the CPU; the choice is printed as one line before the command
/// runs, with the reason ("device: cpu (no CUDA driver found: tried libcuda.so.1, libcuda.so)").
/// <c>--device cuda</c> where CUDA cannot be used is a usage error (exit code 2) saying why.
/// Installed once, from <see cref="Program"/>, on every command that has an action (so commands added later
/// get it too): the option is added and the command's action is wrapped to resolve the device first.
/// </summary>
internal static class DeviceOption
{
    public const string Name = "--device";

    /// <summary>
    /// Commands that run on CUDA when it is chosen, each through a GPU engine (<c>GptDevice.EngineFor</c>): pretrain (its training steps and evaluation; data,
    /// tokenization and checkpoints stay on the host), align (the offline objectives sft, dpo, pmle: the policy and the
    /// reference on GptPolicy; the on-policy ones distill, rebel, rlhf, rkl: the policy, the reference and PPO's separate
    /// value model on GptPolicy with value heads on the host, R̂'s backbone on the device, KV-cache decoding on the device;
    /// rkl's exact entropy bonus from the fused LM head's entropy kernels), bench dpo (both of its steps on GptPolicy),
    /// reward (the reward model's backbone on the device, its scalar head on the host), sample (KV-cache decoding on
    /// the device; the draws on the host), and demo and experiment lm (π0's pretraining, the reward model and the six methods
    /// on the device, see DemoExperiment), bench step (StepBenchmark: whole steps, MFU), bench ppo (the policy, π0 and R̂'s backbone on the device). The other commands run on the CPU.
    /// </summary>
    internal static readonly IReadOnlySet<string> CudaCapableCommands = new HashSet<string>(StringComparer.Ordinal)
        { "pretrain", "align", "bench step", "bench dpo", "bench ppo", "reward", "sample", "demo", "experiment lm" };

    /// <summary>The CUDA probe the resolution uses: a seam for tests, which pretend a GPU is there.</summary>
    internal static Func<CudaProbe> Probe { get; set; } = CudaDriver.Probe;

    /// <summary>The device chosen for the command being run ("cpu" or "cuda"), set before its action runs.</summary>
    internal static string Chosen { get; private set; } = "cpu";

    /// <summary>Adds <c>--device</c> to <paramref name="command"/> and every descendant that has an action.</summary>
    public static void AddToAll(Command command)
    {
        foreach (var sub in command.Subcommands) AddToAll(sub);
        if (command is RootCommand || command.Action is not SynchronousCommandLineAction inner) return;
        if (command.Options.Any(o => o.Name == Name)) return;
        var option = new Option<string>(Name)
        {
            Description = "cuda, cpu, or auto: CUDA when a usable GPU is found and this command can use it, else the CPU.",
            DefaultValueFactory = _ => "auto",
        };
        option.AcceptOnlyFromAmong("auto", "cuda", "cpu");
        command.Options.Add(option);
        command.Action = new ResolvingAction(option, inner, FullName(command));
    }

    /// <summary>
    /// The device a command runs on and the line that says so. Pure apart from <paramref name="probe"/>.
    /// Throws <see cref="CliUsageException"/> when CUDA was requested and cannot be used.
    /// </summary>
    public static (string Device, string Line) Resolve(string requested, string command, bool cudaCapable, Func<CudaProbe> probe)
    {
        if (requested == "cpu") return ("cpu", "device: cpu (requested)");
        var found = probe();
        if (requested == "cuda")
        {
            if (!found.IsUsable) throw new CliUsageException($"{Name} cuda: {found.Reason}");
            if (!cudaCapable) throw new CliUsageException($"{Name} cuda: '{command}' has no CUDA path yet (it runs on the CPU); use {Name} cpu or auto");
            return ("cuda", $"device: cuda ({found.Devices[0]}, driver {found.DriverVersionText})");
        }
        if (!found.IsUsable) return ("cpu", $"device: cpu ({found.Reason})");
        return cudaCapable
            ? ("cuda", $"device: cuda ({found.Devices[0]}, driver {found.DriverVersionText})")
            : ("cpu", $"device: cpu ({found.Devices[0].Name} found, but '{command}' has no CUDA path yet)");
    }

    /// <summary>Commands whose standard output is their data (JSONL or CSV): the device line goes to standard error.</summary>
    public static readonly IReadOnlySet<string> DataOnStandardOutput = new HashSet<string> { "score" };

    private static string FullName(Command command)
    {
        var names = new List<string>();
        for (Symbol? s = command; s is Command c and not RootCommand; s = c.Parents.FirstOrDefault()) names.Insert(0, c.Name);
        return string.Join(' ', names);
    }

    private sealed class ResolvingAction(Option<string> option, SynchronousCommandLineAction inner, string command) : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            Chosen = "cpu";
            var (device, line) = Resolve(parseResult.GetValue(option) ?? "auto", command, CudaCapableCommands.Contains(command), Probe);
            // a command whose standard output is data (score) says where it runs on standard error
            (DataOnStandardOutput.Contains(command) ? Console.Error : Console.Out).WriteLine(line);
            Chosen = device;
            return inner.Invoke(parseResult);
        }
    }
}
