using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Transport.Tests.Infrastructure;

/// <summary>A logger provider that keeps what the transport logs (category Transport.Winsock), for assertions.</summary>
public sealed class CapturedLog : ILoggerProvider
{
    private readonly ConcurrentQueue<Entry> _entries = new();

    public IReadOnlyCollection<Entry> Entries => _entries;

    public ILogger CreateLogger(string categoryName) => new Logger(categoryName == "Transport.Winsock" ? _entries : null);

    public void Dispose()
    {
    }

    public sealed record Entry(LogLevel Level, EventId EventId, string Message);

    private sealed class Logger(ConcurrentQueue<Entry>? entries) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => entries is not null;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            => entries?.Enqueue(new Entry(logLevel, eventId, formatter(state, exception)));
    }
}
