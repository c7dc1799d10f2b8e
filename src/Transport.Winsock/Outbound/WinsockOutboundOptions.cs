namespace Transport.Winsock;

/// <summary>
/// Options of <see cref="WinsockOutboundConnectionFactory"/>: outbound TCP connections on the transport's
/// pipes and teardown (the same FIN, drain and deferred FIN as an accepted connection's). Checked when the
/// factory is made; each failure names the option and its value.
/// </summary>
public sealed class WinsockOutboundOptions
{
    /// <summary>
    /// How long a connect may take before it fails with <see cref="System.Net.Sockets.SocketError.TimedOut"/>.
    /// <see cref="Timeout.InfiniteTimeSpan"/> (the default, as <c>SocketsHttpHandler.ConnectTimeout</c>'s)
    /// leaves it to the caller's cancellation token; otherwise 1 ms to 5 minutes.
    /// </summary>
    public TimeSpan ConnectTimeout { get; set; } = Timeout.InfiniteTimeSpan;

    /// <summary>
    /// After the FIN, how long the connection waits for the peer's FIN (reading and discarding what still
    /// comes) before it closes anyway. Default 5 seconds; 0 to 5 minutes.
    /// </summary>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Client-side deferred FIN: once the connection is done (its stream disposed, its output completed),
    /// how long it waits for the server to close first before it sends its own FIN. The side that closes
    /// first keeps the connection in TIME_WAIT, and on a client that entry holds an ephemeral port; HTTP/1.1
    /// servers close right after a <c>Connection: close</c> response, so with this on the TIME_WAIT, and
    /// the port, stay on the server. <see cref="TimeSpan.Zero"/> (the default) sends the FIN at once, as
    /// .NET's own sockets do. 0 to 5 seconds. Only for protocols whose server knows by itself when the
    /// client is done (HTTP does): a server waiting for the client's FIN would wait the full delay.
    /// </summary>
    public TimeSpan DeferFinTimeout { get; set; }

    /// <summary>
    /// The I/O engine under the connections. <see cref="WinsockEngine.Auto"/> (the default): on Linux the
    /// transport's io_uring engine (a ring thread of the factory's own; connects are IORING_OP_CONNECT)
    /// when its probe passes and <see cref="ReuseSockets"/> is not true, else .NET's sockets (ConnectEx and
    /// DisconnectEx on Windows, epoll elsewhere). <see cref="WinsockEngine.IoUring"/> fails the factory's
    /// construction where io_uring cannot run; <see cref="WinsockEngine.Sockets"/> is .NET's sockets
    /// everywhere. Only the sockets engine recycles sockets (Linux has no reuse disconnect).
    /// </summary>
    public WinsockEngine Engine { get; set; }

    /// <summary>Whether Nagle's algorithm is off on every connection (TCP_NODELAY), as in SocketsHttpHandler. Default true.</summary>
    public bool NoDelay { get; set; } = true;

    /// <summary>How many received bytes may wait unread before receiving pauses; null: no limit. Default 1 MiB.</summary>
    public long? MaxReadBufferSize { get; set; } = 1024 * 1024;

    /// <summary>How many bytes written and not yet sent make writes wait; null: no limit. Default 64 KiB.</summary>
    public long? MaxWriteBufferSize { get; set; } = 64 * 1024;

    /// <summary>
    /// Whether the sockets of connections the server closed first are recycled (DisconnectEx with
    /// TF_REUSE_SOCKET on Windows, then ConnectEx on the same handle for a later connect), as the listener's
    /// <see cref="WinsockTransportOptions.ReuseSockets"/>. <see langword="null"/> (the default): automatic;
    /// for each address family (IPv4, IPv6) a self-test on loopback checks, in the background and while
    /// the first connections already run on new sockets, that a socket disconnected with reuse connects
    /// and moves bytes again; it is off where the runtime only emulates reuse (.NET on Linux gives such a
    /// socket a new descriptor), and a burst of failed recycles turns it off. <see langword="true"/>
    /// forces it on (tests, measurements; it then never turns itself off), <see langword="false"/> off. A connection this side closed first
    /// is never recycled: its socket is in TIME_WAIT, which a reuse disconnect would wait out.
    /// </summary>
    public bool? ReuseSockets { get; set; }

    /// <summary>
    /// How many recycled sockets wait, for each address family, for the next connect; as many idle
    /// connection objects are kept for the streams of <see cref="WinsockReuse.CreateConnectCallback(WinsockOutboundConnectionFactory)"/>.
    /// A recycled socket stays bound, so on Windows each pooled one may hold an ephemeral port. Default 256;
    /// 0 to 65536 (0 keeps none).
    /// </summary>
    public int MaxPooledSockets { get; set; } = 256;

    /// <summary>How many reuse disconnects may be under way at once; past it, a finished connection's socket is closed. Default 256; 1 to 65536.</summary>
    public int MaxPendingDisconnects { get; set; } = 256;

    /// <summary>
    /// How long a reuse disconnect may take before its socket is closed instead (the listener's
    /// <see cref="WinsockTransportOptions.DisconnectTimeout"/>). Default 2 seconds; more than zero, at most 5 minutes.
    /// </summary>
    public TimeSpan DisconnectTimeout { get; set; } = TimeSpan.FromSeconds(2);

    internal static readonly TimeSpan MaxTimeout = TimeSpan.FromMinutes(5);
    internal static readonly TimeSpan MaxDeferFinTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Every failure, each naming its option and value; empty when the options are good.</summary>
    internal List<string> Validate()
    {
        var failures = new List<string>();
        if (ConnectTimeout != Timeout.InfiniteTimeSpan && (ConnectTimeout <= TimeSpan.Zero || ConnectTimeout > MaxTimeout))
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(ConnectTimeout)} must be Timeout.InfiniteTimeSpan or between 1 ms and {MaxTimeout}; it was {ConnectTimeout}.");
        }

        if (DrainTimeout < TimeSpan.Zero || DrainTimeout > MaxTimeout)
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(DrainTimeout)} must be between zero and {MaxTimeout}; it was {DrainTimeout}.");
        }

        if (DeferFinTimeout < TimeSpan.Zero || DeferFinTimeout > MaxDeferFinTimeout)
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(DeferFinTimeout)} must be between zero (off) and {MaxDeferFinTimeout}; it was {DeferFinTimeout}.");
        }

        if (!Enum.IsDefined(Engine))
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(Engine)} must be Auto, Sockets or IoUring; it was {(int)Engine}.");
        }
        else if (Engine == WinsockEngine.IoUring && ReuseSockets == true)
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(Engine)} is IoUring and {nameof(ReuseSockets)} is true, but only the sockets engine recycles sockets: set Engine to Sockets or Auto, or ReuseSockets to null or false.");
        }

        if (MaxReadBufferSize is < 0)
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(MaxReadBufferSize)} must be null (no limit) or zero or more; it was {MaxReadBufferSize}.");
        }

        if (MaxWriteBufferSize is < 0)
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(MaxWriteBufferSize)} must be null (no limit) or zero or more; it was {MaxWriteBufferSize}.");
        }

        if (MaxPooledSockets is < 0 or > 65536)
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(MaxPooledSockets)} must be between 0 and 65536; it was {MaxPooledSockets}.");
        }

        if (MaxPendingDisconnects is < 1 or > 65536)
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(MaxPendingDisconnects)} must be between 1 and 65536; it was {MaxPendingDisconnects}.");
        }

        if (DisconnectTimeout <= TimeSpan.Zero || DisconnectTimeout > MaxTimeout)
        {
            failures.Add($"{nameof(WinsockOutboundOptions)}.{nameof(DisconnectTimeout)} must be more than zero and at most {MaxTimeout}; it was {DisconnectTimeout}.");
        }

        return failures;
    }
}
