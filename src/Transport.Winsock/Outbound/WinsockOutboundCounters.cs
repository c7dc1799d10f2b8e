namespace Transport.Winsock;

/// <summary>
/// What a <see cref="WinsockOutboundConnectionFactory"/> has done so far: connects and their failures, the
/// sockets connected, and how its connections ended. Monotonic except where noted; read from any thread.
/// </summary>
public sealed class WinsockOutboundCounters
{
    private long _connects;
    private long _connectFailures;
    private long _recycledConnectRetries;

    private readonly Func<string> _reuseStatus;

    internal WinsockOutboundCounters(WinsockTransportCounters connections, Func<string> reuseStatus)
    {
        Connections = connections;
        _reuseStatus = reuseStatus;
    }

    /// <summary>The teardown's own counters, shared with the connections' state machine.</summary>
    internal WinsockTransportCounters Connections { get; }

    /// <summary>Connects that succeeded: connections handed to the caller.</summary>
    public long Connects => Volatile.Read(ref _connects);

    /// <summary>Connects that failed: refused, timed out, unreachable, canceled, or a name that did not resolve.</summary>
    public long ConnectFailures => Volatile.Read(ref _connectFailures);

    /// <summary>Connected sockets that were made for the connect.</summary>
    public long SocketsCreated => Connections.SocketsCreated;

    /// <summary>Connected sockets that were recycled from an earlier connection (ConnectEx into a reused socket).</summary>
    public long SocketsReused => Connections.SocketsReused;

    /// <summary>Connections ended with a FIN from this side (including those the server closed first).</summary>
    public long GracefulCloses => Connections.GracefulCloses;

    /// <summary>Connections ended with an RST from this side (an abort).</summary>
    public long AbortiveCloses => Connections.AbortiveCloses;

    /// <summary>Connections the server reset.</summary>
    public long ConnectionResets => Connections.ConnectionResets;

    /// <summary>
    /// Graceful ends where this side's FIN went first: the connection's TIME_WAIT, and the ephemeral port it
    /// holds, stay here on the client. The deferred FIN (<see cref="WinsockOutboundOptions.DeferFinTimeout"/>)
    /// is how to keep them off it.
    /// </summary>
    public long TimeWaitCloses => Connections.TimeWaitCloses;

    /// <summary>With the deferred FIN on: graceful ends where the server's FIN came first, so no TIME_WAIT here.</summary>
    public long PeerClosedFirst => Connections.PeerClosedFirst;

    /// <summary>Deferred FINs that waited the full <see cref="WinsockOutboundOptions.DeferFinTimeout"/> for a server that did not close, then went out.</summary>
    public long DeferFinTimeouts => Connections.DeferFinTimeouts;

    /// <summary>Connections whose FIN waited for the server's and got no FIN back within <see cref="WinsockOutboundOptions.DrainTimeout"/>.</summary>
    public long DrainTimeouts => Connections.DrainTimeouts;

    /// <summary>Recycled sockets waiting for a connect now (a gauge).</summary>
    public long PooledSockets => Connections.PooledSockets;

    /// <summary>Reuse disconnects under way now (a gauge).</summary>
    public long PendingDisconnects => Connections.PendingDisconnects;

    /// <summary>Reuse disconnects started: sockets of connections the server closed first, on their way back to the pool.</summary>
    public long ReuseDisconnects => Connections.ReuseDisconnects;

    /// <summary>Reuse disconnects that failed; their sockets were closed.</summary>
    public long DisconnectFailures => Connections.DisconnectFailures;

    /// <summary>Reuse disconnects that did not finish within <see cref="WinsockOutboundOptions.DisconnectTimeout"/>; their sockets were closed.</summary>
    public long DisconnectTimeouts => Connections.DisconnectTimeouts;

    /// <summary>Connects on recycled sockets that failed as if the socket had not been recycled; each went on with another socket.</summary>
    public long RecycledConnectFailures => Connections.RecycledAcceptFailures;

    /// <summary>
    /// Connects on recycled sockets that failed for any other reason than the cancellation (refused, timed
    /// out, unreachable), each tried once more on a new socket; the caller sees only how that one went.
    /// </summary>
    public long RecycledConnectRetries => Volatile.Read(ref _recycledConnectRetries);

    /// <summary>For each address family connected to so far (IPv4, IPv6): whether its sockets are recycled, and why.</summary>
    public string ReuseStatus => _reuseStatus();

    internal void Connected() => Interlocked.Increment(ref _connects);

    internal void ConnectFailed() => Interlocked.Increment(ref _connectFailures);

    internal void RecycledConnectRetried() => Interlocked.Increment(ref _recycledConnectRetries);
}
