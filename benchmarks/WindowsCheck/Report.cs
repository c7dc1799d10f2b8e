using System.Globalization;
using System.Text;

namespace WindowsCheck;

/// <summary>
/// The report a maintainer pastes: Markdown headings per part, facts as bullets, and one line per check
/// (PASS, FAIL or SKIP with its reason). Printed as it grows, so a run that hangs still shows how far it got.
/// </summary>
internal sealed class Report
{
    private readonly StringBuilder _text = new();
    private readonly TextWriter _out;

    public Report(TextWriter output) => _out = output;

    public int Passed { get; private set; }

    public int Failed { get; private set; }

    public int Skipped { get; private set; }

    public string Text => _text.ToString();

    public void Heading(string title) => Line($"{Environment.NewLine}### {title}");

    public void Fact(string text) => Line($"- {text}");

    public void Line(string text)
    {
        _text.AppendLine(text);
        _out.WriteLine(text);
        _out.Flush();
    }

    /// <summary>A check: PASS when <paramref name="ok"/>, else FAIL with <paramref name="failure"/> said after the name.</summary>
    public bool Check(bool ok, string what, string? failure = null)
    {
        if (ok)
        {
            Passed++;
            Line($"- PASS: {what}");
        }
        else
        {
            Failed++;
            Line($"- FAIL: {what}{(failure is null ? "" : $" ({failure})")}");
        }

        return ok;
    }

    /// <summary>A check that cannot run here: "skipped: needs Windows (why)", or another reason.</summary>
    public void Skip(string what, string reason)
    {
        Skipped++;
        Line($"- SKIP: {what}: skipped: {reason}");
    }

    /// <summary>The last line: the totals, as "windows-check: N passed, N failed, N skipped".</summary>
    public void Totals() => Line(string.Create(CultureInfo.InvariantCulture, $"{Environment.NewLine}windows-check: {Passed} passed, {Failed} failed, {Skipped} skipped"));
}
