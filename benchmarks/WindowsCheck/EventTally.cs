using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace WindowsCheck;

/// <summary>
/// Counts the transport's log events that say how a recycle went (a failed or timed-out reuse disconnect with
/// its socket error, a fallback, an accept or connect on a recycled socket that failed) and every warning or
/// error, by event and message: the DisconnectEx error codes are in those messages and nowhere else. Used as
/// the outbound factory's logger, and in serve mode as the sample's only logging provider, whose events go to
/// stdout as "event NAME: MESSAGE" lines for the checking process to count.
/// </summary>
internal sealed partial class EventTally : ILogger, ILoggerProvider
{
    /// <summary>The Debug events of category Transport.Winsock that a recycle's outcome is told by.</summary>
    private static readonly HashSet<string> RecycleEvents =
    [
        "DisconnectFailed", "DisconnectTimedOut", "DisconnectThrew", "ReuseFallback", "ReuseOff",
        "RecycledAcceptFailed", "RecycledConnectFailed", "RecycledConnectRetried",
    ];

    private readonly Action<string>? _write;
    private readonly string _category;

    public EventTally(Action<string>? write = null)
        : this(write, "")
    {
    }

    private EventTally(Action<string>? write, string category)
    {
        _write = write;
        _category = category;
        Counts = new(StringComparer.Ordinal);
    }

    private EventTally(EventTally parent, string category)
        : this(parent._write, category)
    {
        Counts = parent.Counts;
    }

    /// <summary>"NAME: MESSAGE" and how often it came.</summary>
    public ConcurrentDictionary<string, int> Counts { get; }

    /// <summary>Counts <paramref name="line"/>, with connection and request ids left out so that like events add up.</summary>
    public void Add(string line) => Counts.AddOrUpdate(Ids().Replace(line, "$1 id \"...\""), 1, static (_, n) => n + 1);

    [System.Text.RegularExpressions.GeneratedRegex("(Connection|Request) id \"[^\"]*\"")]
    private static partial System.Text.RegularExpressions.Regex Ids();

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (logLevel < LogLevel.Warning && !RecycleEvents.Contains(eventId.Name ?? ""))
        {
            return;
        }

        var name = eventId.Name ?? eventId.Id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var line = $"{logLevel} {(_category.Length == 0 ? "" : $"[{_category}] ")}{name}: {formatter(state, exception)}";
        if (exception is not null)
        {
            // The exception and where it was thrown: enough to find it without the whole trace.
            var frame = exception.StackTrace?.Split('\n', 2)[0].Trim();
            line += $" ({exception.GetType().Name}: {exception.Message}{(frame is null ? "" : $" {frame}")})";
        }

        // One line each: a message with a line break would split in the serve mode's output.
        line = line.ReplaceLineEndings(" ");
        Add(line);
        _write?.Invoke(line);
    }

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Debug;

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public ILogger CreateLogger(string categoryName) => new EventTally(this, categoryName);

    public void Dispose()
    {
    }
}
