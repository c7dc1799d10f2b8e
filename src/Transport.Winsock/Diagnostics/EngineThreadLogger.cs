using Microsoft.Extensions.Logging;
using Transport.Winsock.Engines;

namespace Transport.Winsock.Diagnostics;

/// <summary>
/// The logger of the io_uring engine's connections and listeners: a log written on a ring thread is
/// handed to the thread pool and written there, because a logger is not the transport's code (the console
/// logger blocks its caller while its queue is full; a provider may do anything). Off a ring, and for
/// levels that are off (the usual case: the transport logs nothing above Debug in normal operation), it
/// costs nothing more than the logger under it. Entries written on a ring may reach the logger after
/// others written later on other threads; each keeps its own timestamp from the provider.
/// </summary>
internal sealed class EngineThreadLogger(ILogger inner) : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => inner.BeginScope(state);

    public bool IsEnabled(LogLevel logLevel) => inner.IsEnabled(logLevel);

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!EngineThread.IsCurrent)
        {
            inner.Log(logLevel, eventId, state, exception, formatter);
            return;
        }

        if (inner.IsEnabled(logLevel))
        {
            ThreadPool.UnsafeQueueUserWorkItem(new Entry<TState>(inner, logLevel, eventId, state, exception, formatter), preferLocal: false);
        }
    }

    private sealed class Entry<TState>(ILogger logger, LogLevel level, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        : IThreadPoolWorkItem
    {
        public void Execute()
        {
            try
            {
                logger.Log(level, eventId, state, exception, formatter);
            }
            catch (Exception)
            {
                // A provider that throws has nowhere to report it: on a thread pool thread of its own, an
                // exception would end the process.
            }
        }
    }
}
