namespace Transport.Winsock.Engines;

/// <summary>
/// Marks the threads an engine owns (io_uring's ring threads): code that may call out of the transport
/// (Kestrel's accept loop, its continuation after a connection's dispose, a logger) asks whether it runs
/// on one, and hops to the thread pool when it does, so that no such code can stall a ring.
/// </summary>
internal static class EngineThread
{
    [ThreadStatic]
    private static bool t_isEngineThread;

    /// <summary>Whether the calling thread is one an engine owns.</summary>
    public static bool IsCurrent => t_isEngineThread;

    /// <summary>Called once by an engine's thread as it starts.</summary>
    public static void MarkCurrent() => t_isEngineThread = true;
}
