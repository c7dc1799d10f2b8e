using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Engines.Sockets;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Outbound;

/// <summary>
/// The outbound side's parts for one kind of socket (IPv4, IPv6, or IPv6 dual-mode for names that may
/// resolve to either): the pool of recycled sockets, the recycler, the connection objects' factory and the
/// reuse decision, as a listener has them for its accepted sockets. A recycled socket can only connect
/// again as the kind it was made, so each kind has its own pool, and its own self-test verdict.
/// </summary>
internal sealed class OutboundRoute : IDisposable
{
    private readonly ReuseSelfTest.ListenerKind _kind;
    private readonly bool _noDelay;

    public OutboundRoute(
        ReuseSelfTest.ListenerKind kind,
        WinsockOutboundOptions options,
        WinsockTransportOptions connectionOptions,
        WinsockTransportOptions streamConnectionOptions,
        MemoryPool<byte> memoryPool,
        WinsockTransportCounters counters,
        ILogger logger)
    {
        _kind = kind;
        _noDelay = options.NoDelay;
        Pool = new SocketPool(options.MaxPooledSockets, counters);
        // Forced either way, the decision is there at once; automatic, the self-test runs in the background
        // and nothing is recycled until it passes, so no connect ever waits for it.
        var deciding = Decide(options, kind);
        var initial = deciding.IsCompletedSuccessfully
            ? deciding.Result
            : new ReuseDecision(false, true, $"pending: the outbound reuse self-test ({kind.OutboundName}) is running");
        Recycler = new SocketRecycler(Pool, connectionOptions, initial, $"outbound {kind.OutboundName} sockets", counters, logger);
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

    /// <summary>What this kind of socket is, for /stats.</summary>
    public string Kind => _kind.OutboundName;

    /// <summary>
    /// A recycled socket when the pool has one (<paramref name="recycled"/>), else a new socket of this
    /// kind; <paramref name="reusable"/> is its recycling state, or null while sockets are not recycled
    /// (a socket that will only be closed needs none).
    /// </summary>
    public Socket RentOrCreate(out ReusableSocket? reusable, out bool recycled)
    {
        reusable = Pool.TryRent();
        recycled = reusable is not null;
        if (reusable is not null)
        {
            // Where the runtime only emulates reuse, the recycled socket is a new descriptor that kept none
            // of the old one's options.
            reusable.Socket.NoDelay = _noDelay;
            return reusable.Socket;
        }

        var created = new Socket(_kind.Family, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (_kind.DualMode)
            {
                created.DualMode = true;
            }

            created.NoDelay = _noDelay;
        }
        catch
        {
            created.Dispose();
            throw;
        }

        reusable = Recycler.IsActive ? new ReusableSocket(created) : null;
        return created;
    }

    public void Dispose()
    {
        Recycler.Dispose();
        Pool.Dispose();
        Connections.DisposeIdle();
        StreamConnections.DisposeIdle();
    }

    private static async Task<ReuseDecision> Decide(WinsockOutboundOptions options, ReuseSelfTest.ListenerKind kind)
    {
        try
        {
            return await ReuseDecision.DecideOutboundAsync(options, kind).ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            // Not even a socket of this kind could be made for the test (a host without IPv6, say).
            return new ReuseDecision(false, false, $"off: the outbound reuse self-test ({kind.OutboundName}) could not start: {ex.SocketErrorCode}");
        }
    }

    private static IPEndPoint AnyOf(ReuseSelfTest.ListenerKind kind)
        => new(kind.Family == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
}
