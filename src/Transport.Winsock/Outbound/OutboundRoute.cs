using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Engines.IoUring;
using Transport.Winsock.Engines.Sockets;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Outbound;

/// <summary>
/// The outbound side's parts for one address family (IPv4 or IPv6): the pool of recycled sockets, the
/// recycler, the connection objects' factories and the reuse decision, as a listener has them for its
/// accepted sockets. A recycled socket stays bound to an address of its family (on Windows, to the local
/// address and port of its last connection), so each family has its own pool, and its own self-test verdict.
/// </summary>
internal sealed class OutboundRoute : IDisposable
{
    private readonly ReuseSelfTest.ListenerKind _kind;
    private readonly bool _noDelay;
    private readonly ILogger _logger;

    public OutboundRoute(
        ReuseSelfTest.ListenerKind kind,
        WinsockOutboundOptions options,
        WinsockTransportOptions connectionOptions,
        WinsockTransportOptions streamConnectionOptions,
        MemoryPool<byte> memoryPool,
        WinsockTransportCounters counters,
        ILogger logger,
        IoUringConnector? ring)
    {
        _logger = logger;
        _kind = kind;
        _noDelay = options.NoDelay;
        Pool = new SocketPool(options.MaxPooledSockets, counters);
        // Forced either way, the decision is there at once; automatic, the self-test runs in the background
        // and nothing is recycled until it passes, so no connect ever waits for it.
        // On io_uring nothing is recycled, so no self-test runs (a connect the ring has no room for goes to
        // the sockets engine on a new socket, which is then closed, not pooled).
        var deciding = ring is not null
            ? Task.FromResult(new ReuseDecision(false, false, "off: connections run on io_uring, and Linux has no reuse disconnect"))
            : Decide(options, kind);
        var initial = deciding.IsCompletedSuccessfully
            ? deciding.Result
            : new ReuseDecision(false, true, $"pending: the outbound reuse self-test ({kind.OutboundName}) is running");
        Recycler = new SocketRecycler(
            Pool, connectionOptions, initial, $"outbound {kind.OutboundName} sockets", counters, logger,
            ring is null && options.ReuseSockets is null && options.MaxPooledSockets > 0 ? () => ReuseDecision.RetestOutboundAsync(kind) : null);
        // No server's timeouts abort a client's connection: a disposed one whose output a stalled server
        // never reads is aborted after the drain's time.
        Connections = new WinsockConnectionFactory(AnyOf(kind), memoryPool, connectionOptions, () => new SocketConnectionIo(Recycler, inlineContinuations: false), counters, logger)
        {
            EndTimeout = options.DrainTimeout,
        };
        StreamConnections = new WinsockConnectionFactory(AnyOf(kind), memoryPool, streamConnectionOptions, () => new SocketConnectionIo(Recycler, inlineContinuations: false), counters, logger)
        {
            EndTimeout = options.DrainTimeout,
        };
        if (ring is not null)
        {
            Ring = ring;
            // What a connection logs on its ring is written off it, as for a listener's.
            var ringLogger = new EngineThreadLogger(logger);
            RingConnections = new WinsockConnectionFactory(AnyOf(kind), memoryPool, connectionOptions, ring.NewIo, counters, ringLogger, transportScheduler: ring.Ring)
            {
                EndTimeout = options.DrainTimeout,
            };
            RingStreamConnections = new WinsockConnectionFactory(AnyOf(kind), memoryPool, streamConnectionOptions, ring.NewIo, counters, ringLogger, transportScheduler: ring.Ring)
            {
                EndTimeout = options.DrainTimeout,
            };
        }

        if (!deciding.IsCompletedSuccessfully)
        {
            _ = deciding.ContinueWith(static (t, state) => ((SocketRecycler)state!).Apply(t.Result), Recycler, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    public SocketPool Pool { get; }

    public SocketRecycler Recycler { get; }

    /// <summary>Connection objects handed to callers of ConnectAsync: never pooled.</summary>
    public WinsockConnectionFactory Connections { get; }

    /// <summary>Connection objects under the ConnectCallback's streams, their only holders: pooled.</summary>
    public WinsockConnectionFactory StreamConnections { get; }

    /// <summary>The io_uring engine's connector when connections run on it; else null.</summary>
    public IoUringConnector? Ring { get; }

    /// <summary>As <see cref="Connections"/>, on <see cref="Ring"/>.</summary>
    public WinsockConnectionFactory? RingConnections { get; }

    /// <summary>As <see cref="StreamConnections"/>, on <see cref="Ring"/>.</summary>
    public WinsockConnectionFactory? RingStreamConnections { get; }

    /// <summary>This route's address family, for /stats.</summary>
    public string Kind => _kind.OutboundName;

    /// <summary>
    /// A recycled socket for a connect to <paramref name="endpoint"/> when the pool has one whose last
    /// connection went elsewhere and <paramref name="allowRecycled"/> (<paramref name="recycled"/>), else a
    /// new socket of this family; <paramref name="reusable"/> is its recycling state, or null while sockets
    /// are not recycled (a socket that will only be closed needs none). One last used for the same endpoint
    /// is never taken: where it kept its local port (Windows), it would connect again within milliseconds
    /// on the 4-tuple the server holds in TIME_WAIT, and without TCP timestamps (Windows sends none by
    /// default) a server may drop that SYN.
    /// </summary>
    public Socket RentOrCreate(IPEndPoint endpoint, bool allowRecycled, out ReusableSocket? reusable, out bool recycled)
    {
        while (allowRecycled && Pool.TryRentFor(endpoint) is { } pooled)
        {
            try
            {
                // Where the runtime only emulates reuse, the recycled socket is a new descriptor that kept
                // none of the old one's options.
                pooled.Socket.NoDelay = _noDelay;
                reusable = pooled;
                recycled = true;
                return pooled.Socket;
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Not a socket any more, as far as the platform is concerned: a recycle that went wrong.
                pooled.Dispose();
                var failure = $"it refused TCP_NODELAY: {(ex is SocketException se ? se.SocketErrorCode.ToString() : ex.Message)}";
                _logger.RecycledConnectFailed(failure);
                Recycler.OnRecycledAcceptFailed($"a recycled socket could not connect again: {failure}");
            }
        }

        var created = new Socket(_kind.Family, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            created.NoDelay = _noDelay;
        }
        catch
        {
            created.Dispose();
            throw;
        }

        reusable = Recycler.IsActive ? new ReusableSocket(created) : null;
        recycled = false;
        return created;
    }

    public void Dispose()
    {
        Recycler.Dispose();
        Pool.Dispose();
        Connections.DisposeIdle();
        StreamConnections.DisposeIdle();
        RingConnections?.DisposeIdle();
        RingStreamConnections?.DisposeIdle();
    }

    private static async Task<ReuseDecision> Decide(WinsockOutboundOptions options, ReuseSelfTest.ListenerKind kind)
    {
        try
        {
            return await ReuseDecision.DecideOutboundAsync(options, kind).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // Not even a socket of this family could be made for the test (a host without IPv6, say), or
            // the test itself failed unexpectedly: reuse stays off, and the status says why.
            return new ReuseDecision(false, false, $"off: the outbound reuse self-test ({kind.OutboundName}) could not run: {(ex is SocketException se ? se.SocketErrorCode.ToString() : ex.Message)}");
        }
    }

    private static IPEndPoint AnyOf(ReuseSelfTest.ListenerKind kind)
        => new(kind.Family == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
}
