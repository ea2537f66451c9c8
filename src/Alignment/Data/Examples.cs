namespace DistAlign.Alignment.Data;

/// <summary>
/// One preference pair in TRL's layout: for <see cref="Prompt"/>, <see cref="Chosen"/> is preferred to
/// <see cref="Rejected"/>. Responses are the continuation only (the prompt is not repeated in them).
/// </summary>
/// <param name="Line">1-based line of the source file it was read from; 0 when it was made in code.
/// It is part of record equality.</param>
public sealed record PreferenceExample(string Prompt, string Chosen, string Rejected, int Line = 0);

/// <summary>One prompt (e.g. for sampling responses in RLHF or for building pairs).</summary>
/// <param name="Line">1-based line of the source file; 0 when it was made in code. Part of record equality.</param>
public sealed record PromptExample(string Prompt, int Line = 0);

/// <summary>
/// One sequence to score: ln π(<see cref="Response"/> | <see cref="Prompt"/>). A plain text is a response to the empty
/// prompt (scored after the <c>&lt;|endoftext|&gt;</c> start token).
/// </summary>
/// <param name="Line">1-based line of the source file; 0 when it was made in code. Part of record equality.</param>
public sealed record ScoreExample(string Prompt, string Response, int Line = 0);
