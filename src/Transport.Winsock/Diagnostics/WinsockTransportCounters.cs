namespace Transport.Winsock;

/// <summary>
/// Live counters for every listener of the Winsock reuse transport in one host. Resolve it from the
/// host's services; each property reads the current value and is safe to read from any thread.
/// </summary>
public sealed class WinsockTransportCounters
{
    private long _connectionsAccepted;
    private long _socketsCreated;
    private long _socketsReused;
    private long _pooledSockets;
    private long _pendingDisconnects;
    private long _gracefulCloses;
    private long _abortiveCloses;
    private long _connectionResets;
    private long _drainTimeouts;
    private long _timeWaitCloses;
    private long _reuseDisconnects;
    private long _recycledAcceptFailures;
    private long _disconnectFailures;
    private long _disconnectTimeouts;
    private long _peerClosedFirst;
    private long _deferFinTimeouts;
    private long _acceptPauses;
    private long _acceptPausedTicks;
    private long _listenersPaused;
    private int _reuseActive;
    private string _reuseStatus = "not listening yet";
    // Where reuse can change at run time (a fallback, a retest), the recycler holds it, and is read here.
    private Teardown.SocketRecycler? _recycler;
    private int _engine = (int)WinsockEngine.Auto;
    private string _engineStatus = "not listening yet";

    /// <summary>Connections accepted and handed to the server.</summary>
    public long ConnectionsAccepted => Volatile.Read(ref _connectionsAccepted);

    /// <summary>New sockets created to accept into (the pool had none to give).</summary>
    public long SocketsCreated => Volatile.Read(ref _socketsCreated);

    /// <summary>Accepts that went into a socket recycled from an earlier connection.</summary>
    public long SocketsReused => Volatile.Read(ref _socketsReused);

    /// <summary>Recycled sockets waiting in the pools now.</summary>
    public long PooledSockets => Volatile.Read(ref _pooledSockets);

    /// <summary>Sockets in a reuse disconnect now.</summary>
    public long PendingDisconnects => Volatile.Read(ref _pendingDisconnects);

    /// <summary>Connections that ended with a graceful half-close (a FIN, after every byte written).</summary>
    public long GracefulCloses => Volatile.Read(ref _gracefulCloses);

    /// <summary>
    /// Connections the transport ended with an abortive close after an abort or an error: an RST, or a FIN
    /// under Kestrel's <c>Microsoft.AspNetCore.Server.Kestrel.FinOnError</c> switch. Never reused.
    /// </summary>
    public long AbortiveCloses => Volatile.Read(ref _abortiveCloses);

    /// <summary>Connections the peer reset.</summary>
    public long ConnectionResets => Volatile.Read(ref _connectionResets);

    /// <summary>Connections whose peer did not send its FIN within the drain timeout; their sockets were closed.</summary>
    public long DrainTimeouts => Volatile.Read(ref _drainTimeouts);

    /// <summary>
    /// Connections that ended with both FINs exchanged, ours first (an active close): this side keeps the
    /// connection in TIME_WAIT, so the socket was closed at once, not handed to a reuse disconnect that
    /// would wait TIME_WAIT out. Counted with reuse on or off; a deferred FIN turns these into passive closes.
    /// </summary>
    public long TimeWaitCloses => Volatile.Read(ref _timeWaitCloses);

    /// <summary>Reuse disconnects started (DisconnectEx with TF_REUSE_SOCKET on Windows): the sockets of passive closes.</summary>
    public long ReuseDisconnects => Volatile.Read(ref _reuseDisconnects);

    /// <summary>Reuse disconnects that failed; their sockets were closed.</summary>
    public long DisconnectFailures => Volatile.Read(ref _disconnectFailures);

    /// <summary>Reuse disconnects that did not finish within the disconnect timeout; their sockets were closed.</summary>
    public long DisconnectTimeouts => Volatile.Read(ref _disconnectTimeouts);

    /// <summary>
    /// Accepts into a recycled socket that failed as if the socket had not really been recycled
    /// (WSAEINVAL, WSAENOTSOCK, or .NET refusing the socket); the socket was closed. Like failed and
    /// timed-out reuse disconnects, they count toward the fallback that turns automatic reuse off.
    /// </summary>
    public long RecycledAcceptFailures => Volatile.Read(ref _recycledAcceptFailures);

    /// <summary>With a deferred FIN: connections whose peer closed first, so the TIME_WAIT is the peer's.</summary>
    public long PeerClosedFirst => Volatile.Read(ref _peerClosedFirst);

    /// <summary>With a deferred FIN: connections whose peer did not close within the deferral, so the FIN went out first.</summary>
    public long DeferFinTimeouts => Volatile.Read(ref _deferFinTimeouts);

    /// <summary>
    /// Times a listener paused accepting because the system ran out of descriptors or buffers, or the
    /// process reached its descriptor reserve (<see cref="WinsockTransportOptions.DescriptorReserve"/>).
    /// </summary>
    public long AcceptPauses => Volatile.Read(ref _acceptPauses);

    /// <summary>Time listeners have spent paused in pauses that have ended, summed over listeners.</summary>
    public TimeSpan AcceptPausedTime => TimeSpan.FromTicks(Volatile.Read(ref _acceptPausedTicks));

    /// <summary>Listeners paused now.</summary>
    public long ListenersPaused => Volatile.Read(ref _listenersPaused);

    /// <summary>Whether the most recently started listener recycles sockets.</summary>
    public bool ReuseActive => Volatile.Read(ref _recycler) is { } recycler ? recycler.IsActive : Volatile.Read(ref _reuseActive) != 0;

    /// <summary>Why socket reuse is on or off (the option, the self-test's verdict, or a run-time fallback).</summary>
    public string ReuseStatus => Volatile.Read(ref _recycler) is { } recycler ? recycler.Status : Volatile.Read(ref _reuseStatus);

    /// <summary>The I/O engine of the most recently started listener (<see cref="WinsockEngine.Auto"/> before any).</summary>
    public WinsockEngine Engine => (WinsockEngine)Volatile.Read(ref _engine);

    /// <summary>Why that engine: the option, or the io_uring probe's verdict.</summary>
    public string EngineStatus => Volatile.Read(ref _engineStatus);

    /// <summary>Set by the meter: where disconnect durations are recorded.</summary>
    internal System.Diagnostics.Metrics.Histogram<double>? DisconnectDuration { get; set; }

    internal void DisconnectFinished(long startTimestamp, string outcome)
        => DisconnectDuration?.Record(
            System.Diagnostics.Stopwatch.GetElapsedTime(startTimestamp).TotalSeconds,
            new KeyValuePair<string, object?>("winsock.disconnect.outcome", outcome));

    internal void ConnectionAccepted() => Interlocked.Increment(ref _connectionsAccepted);
    internal void SocketCreated() => Interlocked.Increment(ref _socketsCreated);
    internal void SocketReused() => Interlocked.Increment(ref _socketsReused);
    internal void PooledSocketsChanged(int delta) => Interlocked.Add(ref _pooledSockets, delta);
    internal void PendingDisconnectsChanged(int delta) => Interlocked.Add(ref _pendingDisconnects, delta);
    internal void GracefulClose() => Interlocked.Increment(ref _gracefulCloses);
    internal void AbortiveClose() => Interlocked.Increment(ref _abortiveCloses);
    internal void ConnectionReset() => Interlocked.Increment(ref _connectionResets);
    internal void DrainTimeout() => Interlocked.Increment(ref _drainTimeouts);
    internal void TimeWaitClose() => Interlocked.Increment(ref _timeWaitCloses);
    internal void ReuseDisconnectStarted() => Interlocked.Increment(ref _reuseDisconnects);
    internal void RecycledAcceptFailed() => Interlocked.Increment(ref _recycledAcceptFailures);
    internal void DisconnectFailure() => Interlocked.Increment(ref _disconnectFailures);
    internal void DisconnectTimeout() => Interlocked.Increment(ref _disconnectTimeouts);
    internal void PeerClosedFirstSeen() => Interlocked.Increment(ref _peerClosedFirst);
    internal void DeferFinTimedOut() => Interlocked.Increment(ref _deferFinTimeouts);
    internal void AcceptPauseStarted()
    {
        Interlocked.Increment(ref _acceptPauses);
        Interlocked.Increment(ref _listenersPaused);
    }

    internal void AcceptPauseEnded(TimeSpan paused)
    {
        Interlocked.Add(ref _acceptPausedTicks, paused.Ticks);
        Interlocked.Decrement(ref _listenersPaused);
    }

    internal void SetEngine(WinsockEngine engine, string status)
    {
        Volatile.Write(ref _engineStatus, status);
        Volatile.Write(ref _engine, (int)engine);
    }

    /// <summary>A decision that cannot change while the listener runs (the io_uring engine never recycles).</summary>
    internal void SetReuse(bool active, string status)
    {
        Volatile.Write(ref _reuseStatus, status);
        Volatile.Write(ref _reuseActive, active ? 1 : 0);
        Volatile.Write(ref _recycler, null);
    }

    /// <summary>The listener's recycler, which holds its reuse status and changes it on a fallback or a retest.</summary>
    internal void TrackReuse(Teardown.SocketRecycler recycler) => Volatile.Write(ref _recycler, recycler);
}
