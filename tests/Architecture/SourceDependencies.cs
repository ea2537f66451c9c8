using System.Text.RegularExpressions;

namespace DistAlign.Tests.Architecture;

// The source scanner behind FolderDependencyTests: C# read as text, with just enough lexing (comments, strings,
// interpolation holes, brace depth) to tell code from prose and to find what a file names.

/// <summary>A use of another namespace by a file, with the text that shows it.</summary>
internal sealed record NamespaceUse(string Namespace, string Evidence)
{
    /// <summary>The DistAlign project the namespace belongs to (its second part).</summary>
    public string Project => Namespace.Split('.')[1];
    /// <summary>The folder inside the project, as a path ("Model", "Cpu/Simd"); "(root)" for the project's own namespace.</summary>
    public string Folder => FolderOf(Namespace);

    /// <summary>The folder of namespace <paramref name="ns"/> inside its project ("Cpu/Simd" for DistAlign.Kernels.Cpu.Simd).</summary>
    public static string FolderOf(string ns)
    {
        var parts = ns.Split('.');
        return parts.Length <= 2 ? "(root)" : string.Join('/', parts.Skip(2));
    }
}

/// <summary>The top-level types of every namespace under src/.</summary>
internal sealed class KnownTypes(Dictionary<string, HashSet<string>> typesByNamespace)
{
    public bool IsNamespaceOrPrefix(string ns) =>
        typesByNamespace.Keys.Any(k => k == ns || k.StartsWith(ns + ".", StringComparison.Ordinal));

    public bool Declares(string ns, string type) => typesByNamespace.TryGetValue(ns, out var types) && types.Contains(type);

    /// <summary>The longest known namespace that <paramref name="dotted"/> starts with, whole parts only.</summary>
    public string? LongestNamespacePrefix(string dotted)
    {
        var parts = dotted.Split('.');
        for (int n = parts.Length; n >= 1; n--)
        {
            string candidate = string.Join('.', parts.Take(n));
            if (typesByNamespace.ContainsKey(candidate)) return candidate;
        }
        return null;
    }
}

/// <summary>
/// One .cs file under src/&lt;Project&gt;/: the namespace its folder calls for, the one it declares (null unless exactly one),
/// its code with comments and strings blanked, its top-level types and (filled in by <see cref="SourceTree.Read"/>) the
/// other namespaces of src/ it uses.
/// </summary>
internal sealed record SourceFile(string Project, string RelativePath, string FolderNamespace, string? Namespace, string Code,
                                 HashSet<string> DeclaredTypes)
{
    public string Folder => NamespaceUse.FolderOf(Namespace ?? FolderNamespace);
    public List<NamespaceUse> Uses { get; set; } = [];

    private static readonly Regex NamespaceDeclaration = new(@"^[ \t]*namespace[ \t]+([\w.]+)[ \t]*[;{]", RegexOptions.Multiline);
    private static readonly Regex TypeDeclaration =
        new(@"\b(?:class|struct|interface|enum|record(?:\s+(?:class|struct))?)\s+(?!(?:class|struct)\b)(\w+)|\bdelegate\s+[\w<>\[\],.?\s]+?\s(\w+)\s*[<(]");
    private static readonly Regex QualifiedName = new(@"(?<![\w.])(?:global::)?(DistAlign(?:\.\w+)+)");
    private static readonly Regex DottedName = new(@"(?<![\w.:])(\w+(?:\.\w+)+)");
    private static readonly Regex Identifier = new(@"(?<![\w.:])[A-Za-z_]\w*");

    public static SourceFile Read(string projectDirectory, string project, string path)
    {
        string relative = Path.GetRelativePath(projectDirectory, path).Replace('\\', '/');
        string folder = Path.GetDirectoryName(relative)!.Replace('\\', '/');
        string folderNamespace = "DistAlign." + project + (folder.Length == 0 ? "" : "." + folder.Replace('/', '.'));
        string code = CodeText.Blank(File.ReadAllText(path));
        var namespaces = NamespaceDeclaration.Matches(code).Select(m => m.Groups[1].Value).Distinct().ToList();
        return new SourceFile(project, relative, folderNamespace, namespaces.Count == 1 ? namespaces[0] : null, code, TopLevelTypes(code));
    }

    /// <summary>Names of the types declared outside any other type (brace depth of a file-scoped namespace, or one inside a block one).</summary>
    private static HashSet<string> TopLevelTypes(string code)
    {
        bool blockNamespace = Regex.IsMatch(code, @"^[ \t]*namespace[ \t]+[\w.]+\s*\{", RegexOptions.Multiline);
        int topDepth = blockNamespace ? 1 : 0;
        var depth = new int[code.Length + 1];
        for (int i = 0, d = 0; i < code.Length; i++)
        {
            depth[i] = d;
            if (code[i] == '{') d++;
            else if (code[i] == '}') d--;
        }
        return TypeDeclaration.Matches(code)
            .Where(m => depth[m.Index] == topDepth)
            .Select(m => m.Groups[1].Success ? m.Groups[1].Value : m.Groups[2].Value)
            .ToHashSet();
    }

    /// <summary>Every namespace of src/ that <paramref name="code"/> (comments and strings blanked), declared in namespace <paramref name="ns"/>, uses.</summary>
    public static IEnumerable<NamespaceUse> FindUses(string code, string ns, KnownTypes known)
    {
        code = NamespaceDeclaration.Replace(code, m => new string(' ', m.Length));
        var enclosing = Enclosing(ns).ToList();

        // using directives (plain, static, alias) and fully qualified names.
        foreach (Match m in QualifiedName.Matches(code))
        {
            string name = m.Groups[1].Value;
            string? target = known.LongestNamespacePrefix(name);
            // A namespace no file declares (DistAlign.Kernels alone) still names its project.
            yield return new NamespaceUse(target ?? string.Join('.', name.Split('.').Take(2)), Line(code, m.Index));
        }

        // Partially qualified names: Training.Foo from DistAlign.Transformer.X, Engine.Random.Philox from DistAlign.Y.
        foreach (Match m in DottedName.Matches(code))
        {
            var parts = m.Groups[1].Value.Split('.');
            if (parts[0] is "DistAlign" or "global") continue;
            foreach (string outer in enclosing)
            {
                if (!known.IsNamespaceOrPrefix(outer + "." + parts[0])) continue;
                // The first enclosing namespace that has parts[0] as a namespace is the one C# binds it to.
                string? target = known.LongestNamespacePrefix(outer + "." + m.Groups[1].Value);
                if (target is not null && target.Length > outer.Length)
                {
                    int typeIndex = target.Split('.').Length - outer.Split('.').Length;
                    if (typeIndex < parts.Length && known.Declares(target, parts[typeIndex]))
                        yield return new NamespaceUse(target, Line(code, m.Index));
                }
                break;
            }
        }

        // Types of an enclosing namespace named without qualification (own namespace first, as C# looks them up).
        foreach (Match m in Identifier.Matches(code))
        {
            if (known.Declares(ns, m.Value)) continue;
            string? owner = enclosing.Skip(1).FirstOrDefault(outer => known.Declares(outer, m.Value));
            if (owner is not null) yield return new NamespaceUse(owner, Line(code, m.Index));
        }
    }

    /// <summary><paramref name="ns"/> and the namespaces around it, innermost first, down to DistAlign.</summary>
    private static IEnumerable<string> Enclosing(string ns)
    {
        for (string n = ns; n.Length > 0; n = n.Contains('.') ? n[..n.LastIndexOf('.')] : "")
            yield return n;
    }

    private static string Line(string code, int index)
    {
        int start = code.LastIndexOf('\n', Math.Max(0, index - 1)) + 1;
        int end = code.IndexOf('\n', index);
        string line = Regex.Replace(code[start..(end < 0 ? code.Length : end)].Trim(), @"\s+", " ");
        return line.Length > 100 ? line[..100] + "…" : line;
    }
}

/// <summary>Every source file of the given projects under src/, and each project's ProjectReferences (by project name).</summary>
internal sealed record SourceTree(List<SourceFile> Files, Dictionary<string, List<string>> ProjectReferences)
{
    /// <summary>The projects under src/ (each src/&lt;Project&gt;/&lt;Project&gt;.csproj) and the folders under src/ that are none of them.</summary>
    public static (SourceTree Tree, List<string> OtherFolders) Read(IReadOnlyCollection<string> projects)
    {
        string src = Path.Combine(RepositoryRoot(), "src");
        var files = new List<SourceFile>();
        var references = new Dictionary<string, List<string>>();
        foreach (string project in projects)
        {
            string directory = Path.Combine(src, project);
            Assert.That(File.Exists(Path.Combine(directory, project + ".csproj")), $"src/{project}/{project}.csproj is missing");
            files.AddRange(Directory.EnumerateFiles(directory, "*.cs", SearchOption.AllDirectories)
                .Where(p => !IsBuildOutput(directory, p))
                .Order(StringComparer.Ordinal)
                .Select(p => SourceFile.Read(directory, project, p)));
            references[project] = Regex.Matches(File.ReadAllText(Path.Combine(directory, project + ".csproj")),
                                                @"<ProjectReference\s+Include=""[^""]*?(\w+)\.csproj""")
                .Select(m => m.Groups[1].Value).ToList();
        }
        var known = new KnownTypes(files.Where(f => f.Namespace is not null)
            .GroupBy(f => f.Namespace!)
            .ToDictionary(g => g.Key, g => g.SelectMany(f => f.DeclaredTypes).ToHashSet()));
        foreach (var file in files)
            file.Uses = [.. SourceFile.FindUses(file.Code, file.Namespace ?? file.FolderNamespace, known)
                .Where(u => u.Namespace != (file.Namespace ?? file.FolderNamespace))];
        var otherFolders = Directory.EnumerateDirectories(src).Select(d => Path.GetFileName(d)).Except(projects).ToList();
        return (new SourceTree(files, references), otherFolders);
    }

    private static bool IsBuildOutput(string projectDirectory, string path)
    {
        string first = Path.GetRelativePath(projectDirectory, path).Split(Path.DirectorySeparatorChar)[0];
        return first is "bin" or "obj";
    }

    internal static string RepositoryRoot()
    {
        for (var d = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "DistAlign.sln"))) return d.FullName;
        throw new InvalidOperationException("repository root (DistAlign.sln) not found above the test directory");
    }
}

/// <summary>C# source with comments, string and character literals blanked (same length, line breaks kept), so only code is left.</summary>
internal static class CodeText
{
    public static string Blank(string source)
    {
        var text = source.ToCharArray();
        int i = 0;
        Code(text, ref i, inHole: false);
        return new string(text);
    }

    private static void Blank(char[] text, int from, int to)
    {
        for (int k = from; k < to && k < text.Length; k++)
            if (text[k] != '\n' && text[k] != '\r') text[k] = ' ';
    }

    /// <summary>Code from <paramref name="i"/> to the end, or (in an interpolation hole) to the hole's closing brace.</summary>
    private static void Code(char[] text, ref int i, bool inHole)
    {
        int depth = 0;
        while (i < text.Length)
        {
            char c = text[i];
            char n = i + 1 < text.Length ? text[i + 1] : '\0';
            if (c == '/' && n == '/')
            {
                int end = Array.IndexOf(text, '\n', i);
                if (end < 0) end = text.Length;
                Blank(text, i, end);
                i = end;
            }
            else if (c == '/' && n == '*')
            {
                int end = i + 2;
                while (end < text.Length && !(text[end - 1] == '*' && text[end] == '/' && end > i + 2)) end++;
                end = Math.Min(end + 1, text.Length);
                Blank(text, i, end);
                i = end;
            }
            else if (c == '\'')
            {
                int k = i + 1;
                while (k < text.Length && text[k] != '\'' && text[k] != '\n') k += text[k] == '\\' ? 2 : 1;
                Blank(text, i, k + 1);
                i = k + 1;
            }
            else if (c is '"' or '$' or '@' && StringAt(text, i) is var (prefixLength, interpolated, verbatim, raw) && prefixLength > 0)
            {
                i = String(text, i, prefixLength, interpolated, verbatim, raw);
            }
            else if (inHole && depth == 0 && (c == '}' || c == ':' && n != ':' && (i == 0 || text[i - 1] != ':')))
            {
                if (c == ':')
                {
                    // Format specifier: text up to the hole's closing brace.
                    int end = Array.IndexOf(text, '}', i);
                    if (end < 0) end = text.Length;
                    Blank(text, i, end);
                    i = end;
                }
                return;
            }
            else
            {
                if (c is '{' or '(' or '[') depth++;
                else if (c is '}' or ')' or ']') depth--;
                i++;
            }
        }
    }

    /// <summary>If a string literal starts at <paramref name="i"/>: how many characters its prefix and opening quotes take, and its kind.</summary>
    private static (int PrefixLength, int Interpolated, bool Verbatim, int Raw) StringAt(char[] text, int i)
    {
        int k = i, dollars = 0;
        bool verbatim = false;
        while (k < text.Length && (text[k] == '$' || text[k] == '@'))
        {
            if (text[k] == '$') dollars++; else verbatim = true;
            k++;
        }
        if (k >= text.Length || text[k] != '"') return (0, 0, false, 0);
        int quotes = 0;
        while (k + quotes < text.Length && text[k + quotes] == '"') quotes++;
        int raw = quotes >= 3 ? quotes : 0;
        return (k - i + (raw > 0 ? quotes : 1), dollars, verbatim, raw);
    }

    /// <summary>Blanks a string literal's text (keeping the code in its interpolation holes); returns the index after it.</summary>
    private static int String(char[] text, int start, int prefixLength, int interpolated, bool verbatim, int raw)
    {
        int i = start + prefixLength;
        Blank(text, start, i);
        while (i < text.Length)
        {
            char c = text[i];
            if (raw > 0)
            {
                int run = 0;
                while (i + run < text.Length && text[i + run] == '"') run++;
                if (run >= raw) { Blank(text, i, i + raw); return i + raw; }
                if (interpolated > 0 && c == '{')
                {
                    int braces = 0;
                    while (i + braces < text.Length && text[i + braces] == '{') braces++;
                    if (braces >= interpolated)
                    {
                        Blank(text, i, i + braces);
                        i += braces;
                        Code(text, ref i, inHole: true);
                        int close = 0;
                        while (i + close < text.Length && text[i + close] == '}' && close < interpolated) close++;
                        Blank(text, i, i + close);
                        i += close;
                        continue;
                    }
                    Blank(text, i, i + braces);
                    i += braces;
                    continue;
                }
                Blank(text, i, i + Math.Max(run, 1));
                i += Math.Max(run, 1);
                continue;
            }
            if (c == '"')
            {
                if (verbatim && i + 1 < text.Length && text[i + 1] == '"') { Blank(text, i, i + 2); i += 2; continue; }
                Blank(text, i, i + 1);
                return i + 1;
            }
            if (c == '\\' && !verbatim) { Blank(text, i, i + 2); i += 2; continue; }
            if (interpolated > 0 && c == '{')
            {
                if (i + 1 < text.Length && text[i + 1] == '{') { Blank(text, i, i + 2); i += 2; continue; }
                Blank(text, i, i + 1);
                i++;
                Code(text, ref i, inHole: true);
                if (i < text.Length) { Blank(text, i, i + 1); i++; }
                continue;
            }
            if (c == '\n' && !verbatim) return i;
            Blank(text, i, i + 1);
            i++;
        }
        return i;
    }
}
