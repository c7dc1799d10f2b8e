using System.Net;
using System.Net.Sockets;

namespace Transport.Winsock;

/// <summary>
/// Options for the Winsock reuse transport. Every value is checked when the host is built or started
/// (whichever first creates the transport); an invalid value fails with an
/// <see cref="Microsoft.Extensions.Options.OptionsValidationException"/> that names the option.
/// </summary>
public sealed class WinsockTransportOptions
{
    /// <summary>
    /// The I/O engine under the connections. <see cref="WinsockEngine.Auto"/> (the default) takes io_uring
    /// on Linux when a startup probe passes (a ring can be made, every operation the engine uses is there,
    /// and a loopback connection goes through it), else .NET's sockets; Windows always uses the sockets
    /// engine (AcceptEx and DisconnectEx). <see cref="WinsockEngine.IoUring"/> where io_uring cannot run
    /// fails the start with the reason and the errno. The choice is in the counters
    /// (<see cref="WinsockTransportCounters.Engine"/>, <see cref="WinsockTransportCounters.EngineStatus"/>).
    /// </summary>
    public WinsockEngine Engine { get; set; } = WinsockEngine.Auto;

    /// <summary>
    /// With the io_uring engine, how many ring threads each listener runs; its connections are spread over
    /// them. 0 (the default) picks from the processor count (half of them, at least 1 and at most 16).
    /// Valid range: 0 to 64.
    /// </summary>
    public int IoUringThreadCount { get; set; }

    /// <summary>
    /// The number of accepts kept posted on each listening socket at once (AcceptEx on Windows).
    /// More pending accepts absorb bigger bursts of new connections without waiting for a repost.
    /// Accepted connections that the server has not taken yet are held to twice this number: beyond it the
    /// listener stops accepting until the server takes one, and clients wait in the listen backlog.
    /// Defaults to 4 per processor, at least 8 and at most 64. Valid range: 1 to 1024.
    /// </summary>
    public int PendingAccepts { get; set; } = Math.Clamp(Environment.ProcessorCount * 4, 8, 64);

    /// <summary>
    /// The most disconnected sockets each listener keeps for reuse. A socket that comes back when the
    /// pool is full is closed instead. The same number caps the listener's idle connection objects (pipes
    /// and per-connection state, pooled as well). Defaults to 1024. Valid range: 0 to 65536 (0 keeps none,
    /// which in effect turns reuse off).
    /// </summary>
    public int MaxPooledSockets { get; set; } = 1024;

    /// <summary>
    /// The most sockets each listener lets wait in a reuse disconnect (DisconnectEx with TF_REUSE_SOCKET)
    /// at once. When the cap is reached, a finished connection's socket is closed instead of recycled, so
    /// sockets held in TIME_WAIT never pile up. Defaults to 256. Valid range: 1 to 65536.
    /// </summary>
    public int MaxPendingDisconnects { get; set; } = 256;

    /// <summary>
    /// After the transport has sent its FIN at the end of a connection, how long it waits for the peer's
    /// FIN while discarding whatever the peer still sends. A peer that has not closed by then has its
    /// socket closed, not reused. Defaults to 5 seconds. Valid range: more than zero, at most 5 minutes.
    /// </summary>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How long a reuse disconnect may take before the socket is closed instead of returned to the pool.
    /// On Windows a socket whose side sent the first FIN waits out TIME_WAIT (up to 240 seconds) before
    /// the disconnect completes; this bound keeps such sockets from holding the pool. Defaults to
    /// 2 seconds. Valid range: more than zero, at most 5 minutes.
    /// </summary>
    public TimeSpan DisconnectTimeout { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// The maximum length of the pending connection queue of each listening socket. Defaults to 512, as
    /// in Kestrel's Sockets transport. Must be at least 1.
    /// </summary>
    public int Backlog { get; set; } = 512;

    /// <summary>
    /// Whether the Nagle algorithm is disabled on accepted sockets. Defaults to <see langword="true"/>,
    /// as in Kestrel's Sockets transport.
    /// </summary>
    public bool NoDelay { get; set; } = true;

    /// <summary>
    /// The most bytes the transport buffers from the network before the application reads them; past it
    /// the transport stops receiving (backpressure). Defaults to 1 MiB, as in Kestrel's Sockets transport.
    /// <see langword="null"/> or 0 means unlimited. Must not be negative.
    /// </summary>
    public long? MaxReadBufferSize { get; set; } = 1024 * 1024;

    /// <summary>
    /// The most bytes the application may have written and not yet sent before its writes wait
    /// (backpressure). Defaults to 64 KiB, as in Kestrel's Sockets transport. <see langword="null"/> or 0
    /// means unlimited. Must not be negative.
    /// </summary>
    public long? MaxWriteBufferSize { get; set; } = 64 * 1024;

    /// <summary>
    /// Whether a client's FIN is taken as a half-close. Off (the default), the transport behaves as
    /// Kestrel's Sockets transport: the FIN fires ConnectionClosed, and Kestrel aborts a request still in
    /// flight, so a client that sends its request and closes its side at once often gets no response.
    /// On, the FIN only ends the input (the server reads end of stream and takes no further requests) while
    /// the connection stays open for sending: the request in flight is answered in full, then the connection
    /// ends gracefully. A peer that is really gone is still detected when a send fails, and
    /// <see cref="HalfCloseTimeout"/> bounds the wait.
    /// </summary>
    public bool AllowHalfClose { get; set; }

    /// <summary>
    /// With <see cref="AllowHalfClose"/>, how long after the client's FIN the application may keep sending
    /// before ConnectionClosed fires anyway. Defaults to 30 seconds. Valid range: more than zero, at most
    /// 5 minutes.
    /// </summary>
    public TimeSpan HalfCloseTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Deferred FIN: once the application has finished its output, how long the transport waits for the
    /// peer to close its side first before it sends its own FIN. The side that closes first keeps the
    /// connection in TIME_WAIT; when the peer closes first, that is the client, not the server, and on
    /// Windows the socket's reuse disconnect then completes at once instead of waiting out TIME_WAIT. If the
    /// peer has not closed in time, the FIN is sent anyway. <see cref="TimeSpan.Zero"/> (the default) turns
    /// it off: the FIN goes out as soon as the output ends, as in Kestrel's Sockets transport.
    /// <para>
    /// Only turn it on for protocols where the peer knows by itself when the server's output has ended
    /// (HTTP/1.1 responses with a Content-Length or chunked body do). A protocol whose message ends at
    /// close, such as an HTTP/1.0 response without a length, needs the FIN to end the message: the peer
    /// would wait for it and every such connection would take the full delay. Valid range: 0 to 5 seconds.
    /// </para>
    /// </summary>
    public TimeSpan DeferFinTimeout { get; set; }

    /// <summary>
    /// Whether finished connections' sockets are recycled with a reuse disconnect and accepted into again.
    /// <see langword="null"/> (the default): each listener checks at startup that the socket's provider has
    /// DisconnectEx and runs a one-off loopback self-test of accept, disconnect with reuse and accept
    /// again; it reuses only if both pass and the accept kept the given socket's handle (where the runtime
    /// only emulates reuse, as .NET does on Linux, reuse would cost system calls and save none), and turns
    /// reuse off later if 10 of the last 20 recycles fail, until a self-test run again (after 30 s, then
    /// with a back-off) passes. <see langword="true"/> forces reuse on (no self-test,
    /// no fallback); <see langword="false"/> turns it off: every connection gets the socket its accept made,
    /// still ends with a graceful half-close, and is closed.
    /// </summary>
    public bool? ReuseSockets { get; set; }

    /// <summary>
    /// On Linux, descriptors kept free for the runtime: no accept is posted while the process's open
    /// descriptors are within this many of its soft RLIMIT_NOFILE, so connections wait in the listen
    /// backlog rather than the runtime failing to start a thread or open a file (which aborts the process).
    /// The accepts already posted (<see cref="PendingAccepts"/> per listener) come off the limit on top of
    /// it. At most half of what the limit leaves when a listener starts is held back, so a low limit still
    /// serves. Defaults to 128 (see the README for the measurement). 0 turns it off. Valid range: 0 to
    /// 65536. Ignored elsewhere.
    /// </summary>
    public int DescriptorReserve { get; set; } = 128;

    /// <summary>
    /// The number of I/O queues the transport's own pipe continuations run on (the send loop woken by the
    /// application's flush, the receive loop released from backpressure), as Kestrel's Sockets transport
    /// has them; each connection uses one. 0 schedules them on the thread pool directly. Defaults to the
    /// processor count, at most 16 (on machines of more than 32 processors outside Windows, half the
    /// count), as in Kestrel. Must not be negative.
    /// </summary>
    public int IOQueueCount { get; set; } = DefaultIOQueueCount();

    /// <summary>
    /// Whether a receive first waits for data and only then takes a buffer from the memory pool, so an
    /// idle connection holds no buffer. <see langword="false"/> receives straight into a buffer (one
    /// system call fewer per read, at the cost of a buffer per idle connection). Defaults to
    /// <see langword="true"/>, as in Kestrel's Sockets transport.
    /// </summary>
    public bool WaitForDataBeforeAllocatingBuffer { get; set; } = true;

    /// <summary>
    /// Runs the application's and the transport's continuations inline, on the thread that completed the
    /// I/O, instead of on the thread pool or the I/O queues: application code then runs on I/O threads,
    /// which is why it is unsafe. Test that it helps before using it. Defaults to <see langword="false"/>,
    /// as in Kestrel's Sockets transport.
    /// </summary>
    public bool UnsafePreferInlineScheduling { get; set; }

    /// <summary>
    /// Makes the listening socket for a TCP endpoint, bound (the transport sets NoDelay on it and calls
    /// <see cref="Socket.Listen(int)"/> with <see cref="Backlog"/>). Implementations must return a bound TCP
    /// stream socket for the endpoint, for example one from <see cref="CreateDefaultBoundListenSocket"/>
    /// with socket options of their own. Defaults to <see cref="CreateDefaultBoundListenSocket"/>, as in
    /// Kestrel's Sockets transport. Must not be null; not bound from configuration.
    /// </summary>
    public Func<EndPoint, Socket> CreateBoundListenSocket { get; set; } = CreateDefaultBoundListenSocket;

    /// <summary>
    /// Creates and binds a TCP socket for <paramref name="endpoint"/>, as Kestrel's Sockets transport does:
    /// the IPv6 any-address also takes IPv4 (dual mode). This transport binds IP endpoints only.
    /// </summary>
    /// <param name="endpoint">An <see cref="IPEndPoint"/>.</param>
    /// <returns>The bound socket, not yet listening.</returns>
    public static Socket CreateDefaultBoundListenSocket(EndPoint endpoint)
    {
        if (endpoint is not IPEndPoint ip)
        {
            throw new NotSupportedException($"The Winsock reuse transport binds TCP endpoints (IPEndPoint) only; {endpoint?.GetType().Name} '{endpoint}' is not supported.");
        }

        var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (ip.Address.Equals(IPAddress.IPv6Any))
            {
                socket.DualMode = true;
            }

            socket.Bind(ip);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static int DefaultIOQueueCount()
    {
        // Kestrel's own default: each queue runs as one work item at a time, so the count bounds their
        // parallelism.
        var processors = Environment.ProcessorCount;
        return OperatingSystem.IsWindows() || processors <= 32 ? Math.Min(processors, 16) : processors / 2;
    }

    /// <summary>
    /// Kestrel's AppContext switch <c>Microsoft.AspNetCore.Server.Kestrel.FinOnError</c>: when set, an abort
    /// ends with a FIN instead of an RST, as in Kestrel's Sockets transport (whose option is internal too).
    /// Read when the options are made.
    /// </summary>
    internal bool FinOnError { get; set; } = AppContext.TryGetSwitch(FinOnErrorSwitch, out var finOnError) && finOnError;

    internal const string FinOnErrorSwitch = "Microsoft.AspNetCore.Server.Kestrel.FinOnError";
}
