namespace DistAlign.Tests.Architecture;

/// <summary>
/// Issue 20: every type lives in the folder its namespace names, the folders of one project do not depend on each other in a
/// cycle, and the projects keep the layers Engine ← Kernels ← Transformer ← Alignment ← Cli.
/// </summary>
/// <remarks>
/// Reads the sources under src/ as text (no compilation): a file's folder is its namespace (DistAlign.&lt;Project&gt;.&lt;Folder&gt;);
/// what it uses is every namespace it names in a using directive (plain, static or alias) or in a fully qualified name
/// (DistAlign.Transformer.Training.Foo), every namespace reached by a partially qualified name whose last part is a type
/// declared there (Training.Foo or Engine.Random.Philox, looked up through the file's enclosing namespaces as C# does), and
/// every enclosing namespace whose types the file names without qualification (Kernels.Cpu's types from Kernels.Cpu.Simd).
/// Comments and string literals are blanked first, so prose and messages never count.
/// </remarks>
public class FolderDependencyTests
{
    /// <summary>Which other DistAlign projects a project may use (the layers of the README's architecture).</summary>
    private static readonly Dictionary<string, string[]> AllowedProjectDependencies = new()
    {
        ["Engine"] = [],
        ["Kernels"] = ["Engine"],
        ["Transformer"] = ["Engine", "Kernels"],
        ["Alignment"] = ["Engine", "Kernels", "Transformer"],
        ["Cli"] = ["Engine", "Kernels", "Transformer", "Alignment"],
        ["Native"] = ["Engine", "Kernels", "Transformer", "Alignment"],   // the C ABI: a host of the libraries, like the CLI
    };

    /// <summary>
    /// Folder edges that are known to close a cycle and are left in place on purpose until the code that needs them is changed.
    /// Each entry says why; remove it when the edge is gone (<see cref="AllowListHasNoStaleEntries"/> fails once it is).
    /// </summary>
    private static readonly (string Project, string From, string To, string Why)[] AllowedCycleEdges = [];

    [Test]
    public void EveryFileDeclaresTheNamespaceOfItsFolder()
    {
        var wrong = Sources.Files
            .Where(f => f.Namespace != f.FolderNamespace)
            .Select(f => $"{f.Project}/{f.RelativePath}: namespace {f.Namespace ?? "(none)"}, folder says {f.FolderNamespace}")
            .ToList();
        Assert.That(wrong, Is.Empty, "files whose namespace is not their folder's:\n" + string.Join("\n", wrong));
    }

    [Test]
    public void ProjectsUseOnlyTheLayersBelowThem()
    {
        var sources = Sources;
        var problems = new List<string>();
        foreach (var file in sources.Files)
            foreach (var use in file.Uses.Where(u => u.Project != file.Project))
                if (!AllowedProjectDependencies[file.Project].Contains(use.Project))
                    problems.Add($"{file.Project}/{file.RelativePath} uses {use.Project} [{use.Evidence}]");
        foreach (string folder in Scan.Value.OtherFolders)
            problems.Add($"src/{folder} is not a project with a layer here (add it to AllowedProjectDependencies)");
        foreach (var (project, references) in sources.ProjectReferences)
            foreach (string reference in references.Where(r => !AllowedProjectDependencies[project].Contains(r)))
                problems.Add($"{project}/{project}.csproj references {reference}");
        Assert.That(problems, Is.Empty, "uses across the layers (" + DescribeLayers() + "):\n" + string.Join("\n", problems));
    }

    [Test]
    public void FoldersOfAProjectHaveNoCycles()
    {
        var cycles = new List<string>();
        foreach (string project in AllowedProjectDependencies.Keys)
        {
            var edges = FolderEdges(project);
            foreach (var (_, from, to, _) in AllowedCycleEdges.Where(e => e.Project == project))
                edges.Remove((from, to));
            cycles.AddRange(FindCycles(edges).Select(cycle => Describe(project, cycle, edges)));
        }
        Assert.That(cycles, Is.Empty, "cycles between the folders of a project:\n" + string.Join("\n", cycles));
    }

    [Test]
    public void AllowListHasNoStaleEntries()
    {
        var stale = AllowedCycleEdges
            .Where(e => !FolderEdges(e.Project).ContainsKey((e.From, e.To)))
            .Select(e => $"{e.Project}: {e.From} → {e.To}")
            .ToList();
        Assert.That(stale, Is.Empty, "allow-listed folder edges that no longer exist (remove them):\n" + string.Join("\n", stale));
    }

    [Test]
    public void TheScannerSeesEveryKindOfUse()
    {
        const string source = """
            using System.Text;
            using DistAlign.Engine.Random;
            using static DistAlign.Engine.Cuda.CudaDriverNative;
            using Layout = DistAlign.Transformer.Model.ParameterLayout;

            namespace DistAlign.Transformer.Gpu;

            /// <see cref="DistAlign.Alignment.Data.PreferencePair"/> in a comment does not count, Training.TrainerState neither
            public static class Probe
            {
                // DistAlign.Alignment.Policies.IPolicy
                private static readonly string Text = "DistAlign.Cli.Program and Data.ShippedData are only words here";
                private static readonly string Hole = $"{Tokenization.Gpt2Tokenizer.EndOfText} and {{Model.Gpt}}";
                public static Kernels.Cpu.Gemm? Gemm => null;
                public static DistAlign.Kernels.Gpu.GpuContext? Context => null;
                public static object? Model => Random.Shared;
            }
            """;
        var known = new KnownTypes(new Dictionary<string, HashSet<string>>
        {
            ["DistAlign.Engine.Random"] = ["Philox"],
            ["DistAlign.Engine.Cuda"] = ["CudaDriverNative"],
            ["DistAlign.Transformer.Model"] = ["ParameterLayout", "Gpt"],
            ["DistAlign.Transformer.Training"] = ["TrainerState"],
            ["DistAlign.Transformer.Data"] = ["ShippedData"],
            ["DistAlign.Transformer.Tokenization"] = ["Gpt2Tokenizer"],
            ["DistAlign.Transformer.Gpu"] = ["Probe"],
            ["DistAlign.Kernels.Cpu"] = ["Gemm"],
            ["DistAlign.Kernels.Gpu"] = ["GpuContext"],
            ["DistAlign.Alignment.Data"] = ["PreferencePair"],
            ["DistAlign.Alignment.Policies"] = ["IPolicy"],
            ["DistAlign.Cli"] = ["Program"],
        });
        var uses = SourceFile.FindUses(CodeText.Blank(source), "DistAlign.Transformer.Gpu", known)
            .Select(u => u.Namespace).Distinct().Order().ToList();
        Assert.That(uses, Is.EqualTo(new[]
        {
            "DistAlign.Engine.Cuda", "DistAlign.Engine.Random", "DistAlign.Kernels.Cpu", "DistAlign.Kernels.Gpu",
            "DistAlign.Transformer.Model", "DistAlign.Transformer.Tokenization",
        }));
    }

    [Test]
    public void TheScannerSeesTypesOfEnclosingNamespacesUsedWithoutQualification()
    {
        const string source = """
            namespace DistAlign.Kernels.Cpu.Simd;

            internal static class Probe
            {
                public static void Run(Span<float> c) => Gemm.Multiply(c);
                public static int Gelu => 1;
            }
            """;
        var known = new KnownTypes(new Dictionary<string, HashSet<string>>
        {
            ["DistAlign.Kernels.Cpu"] = ["Gemm", "Gelu"],
            ["DistAlign.Kernels.Cpu.Simd"] = ["Probe", "Gelu"],
        });
        var uses = SourceFile.FindUses(CodeText.Blank(source), "DistAlign.Kernels.Cpu.Simd", known).ToList();
        Assert.That(uses.Select(u => u.Namespace).Distinct(), Is.EqualTo(new[] { "DistAlign.Kernels.Cpu" }));
        Assert.That(uses.Single().Evidence, Does.Contain("Gemm"));
    }

    [Test]
    public void CyclesAreNamedWithTheFilesThatCloseThem()
    {
        var edges = new Dictionary<(string From, string To), string>
        {
            [("Model", "Training")] = "Model/GptCheckpoint.cs uses Training",
            [("Training", "Model")] = "Training/LanguageModelTrainer.cs uses Model",
            [("Training", "Data")] = "Training/TokenWindowLoader.cs uses Data",
        };
        var cycles = FindCycles(edges).Select(c => Describe("Transformer", c, edges)).ToList();
        Assert.That(cycles, Is.EqualTo(new[]
        {
            "Transformer: Model → Training → Model (Model/GptCheckpoint.cs uses Training; Training/LanguageModelTrainer.cs uses Model)",
        }));
    }

    [Test]
    public void EveryEdgeOfACycleIsOnSomeReportedCycle()
    {
        var edges = new Dictionary<(string From, string To), string>
        {
            [("Gpu", "Training")] = "g→t",
            [("Training", "Gpu")] = "t→g",
            [("Gpu", "Model")] = "g→m",
            [("Model", "Training")] = "m→t",
            [("Training", "Model")] = "t→m",
        };
        Assert.That(FindCycles(edges).Select(c => string.Join(" → ", c)), Is.EqualTo(new[]
        {
            "Gpu → Model → Training → Gpu", "Gpu → Training → Gpu", "Training → Model → Training",
        }));
    }

    [Test]
    public void TheFolderGraphHasTheEdgesEveryoneKnows()
    {
        foreach (string project in AllowedProjectDependencies.Keys)
            foreach (var ((from, to), why) in FolderEdges(project).OrderBy(e => e.Key.From).ThenBy(e => e.Key.To))
                TestContext.Out.WriteLine($"{project}: {from} → {to}   {why}");
        Assert.That(FolderEdges("Transformer").Keys, Does.Contain(("Training", "Model")));
        Assert.That(FolderEdges("Kernels").Keys, Does.Contain(("Gpu", "Cpu")));
        Assert.That(FolderEdges("Alignment").Keys, Does.Contain(("Training", "Policies")));
    }

    private static string DescribeLayers() =>
        string.Join("; ", AllowedProjectDependencies.Select(p => $"{p.Key} uses {(p.Value.Length == 0 ? "no other project" : string.Join(", ", p.Value))}"));

    /// <summary>
    /// The folder graph of <paramref name="project"/>: (from, to) → how the first file that makes the edge does, and which
    /// other files make it too.
    /// </summary>
    private static Dictionary<(string From, string To), string> FolderEdges(string project)
    {
        var files = new Dictionary<(string From, string To), List<(string Path, NamespaceUse Use)>>();
        foreach (var file in Sources.Files.Where(f => f.Project == project).OrderBy(f => f.RelativePath, StringComparer.Ordinal))
            foreach (var use in file.Uses.Where(u => u.Project == project && u.Folder != file.Folder).DistinctBy(u => u.Folder))
            {
                if (!files.TryGetValue((file.Folder, use.Folder), out var list)) files[(file.Folder, use.Folder)] = list = [];
                list.Add((file.RelativePath, use));
            }
        return files.ToDictionary(e => e.Key, e =>
        {
            var (path, use) = e.Value[0];
            string also = e.Value.Count == 1 ? "" : ", also " + string.Join(", ", e.Value.Skip(1).Select(f => f.Path));
            return $"{path} uses {use.Folder} [{use.Evidence}]{also}";
        });
    }

    /// <summary>
    /// Cycles that together pass through every edge between folders that depend on each other: for each such edge not yet on
    /// a reported cycle (in order), the edge and the shortest way back.
    /// </summary>
    private static List<List<string>> FindCycles(Dictionary<(string From, string To), string> edges)
    {
        var next = edges.Keys.GroupBy(e => e.From).ToDictionary(g => g.Key, g => g.Select(e => e.To).Order(StringComparer.Ordinal).ToList());
        var cycles = new List<List<string>>();
        var covered = new HashSet<(string, string)>();
        foreach (var (from, to) in edges.Keys.OrderBy(e => e.From, StringComparer.Ordinal).ThenBy(e => e.To, StringComparer.Ordinal))
        {
            if (covered.Contains((from, to)) || ShortestPath(to, from, next) is not { } back) continue;
            var cycle = new List<string> { from };
            cycle.AddRange(back);
            cycles.Add(cycle);
            covered.UnionWith(cycle.Zip(cycle.Skip(1)));
        }
        return cycles;
    }

    /// <summary>The folders on a shortest path from <paramref name="start"/> to <paramref name="goal"/>, both included; null when there is none.</summary>
    private static List<string>? ShortestPath(string start, string goal, Dictionary<string, List<string>> next)
    {
        var parent = new Dictionary<string, string> { [start] = start };
        var queue = new Queue<string>([start]);
        while (queue.Count > 0)
        {
            string node = queue.Dequeue();
            if (node == goal)
            {
                var path = new List<string> { goal };
                for (string n = goal; n != start; n = parent[n]) path.Insert(0, parent[n]);
                return path;
            }
            foreach (string to in next.GetValueOrDefault(node, []))
                if (parent.TryAdd(to, node)) queue.Enqueue(to);
        }
        return null;
    }

    private static string Describe(string project, List<string> cycle, Dictionary<(string From, string To), string> edges) =>
        $"{project}: {string.Join(" → ", cycle)} ("
        + string.Join("; ", cycle.Zip(cycle.Skip(1)).Select(e => edges[(e.First, e.Second)]))
        + ")";

    private static readonly Lazy<(SourceTree Tree, List<string> OtherFolders)> Scan = new(() => SourceTree.Read(AllowedProjectDependencies.Keys));
    private static SourceTree Sources => Scan.Value.Tree;
}
