using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Engines;
using Transport.Winsock.Engines.IoUring;
using Transport.Winsock.Engines.Sockets;
using Transport.Winsock.Outbound;
using Transport.Winsock.Teardown;

namespace Transport.Winsock;

/// <summary>
/// An <see cref="IConnectionFactory"/> whose connections run on the transport's own pipes and teardown:
/// the connection object, its two loops and its state machine (FIN, drain, deferred FIN, abort) are the
/// ones an accepted connection has, so a client ends its connections the way the listener does, and with
/// the client-side deferred FIN (<see cref="WinsockOutboundOptions.DeferFinTimeout"/>) lets the server close
/// first, which keeps TIME_WAIT, and the ephemeral port it holds, off the client. On Linux the
/// connections run on the io_uring engine where it runs (<see cref="WinsockOutboundOptions.Engine"/>: a ring
/// thread of the factory's own), else on .NET's sockets (ConnectEx on Windows, epoll elsewhere). The socket of a connection the server
/// closed first is recycled as the listener's are (DisconnectEx with TF_REUSE_SOCKET), pooled, and
/// connected again (ConnectEx on the same handle), when <see cref="WinsockOutboundOptions.ReuseSockets"/>
/// and the self-test say so. Thread-safe; dispose it once its connections are done.
/// </summary>
public sealed class WinsockOutboundConnectionFactory : IConnectionFactory, IAsyncDisposable, IDisposable
{
    private static readonly ReuseSelfTest.ListenerKind IPv4 = new(AddressFamily.InterNetwork, false);
    private static readonly ReuseSelfTest.ListenerKind IPv6 = new(AddressFamily.InterNetworkV6, false);
    private const int MaxRecycledTries = 3;

    private readonly WinsockOutboundOptions _options;
    private readonly WinsockTransportOptions _connectionOptions;
    private readonly WinsockTransportOptions _streamConnectionOptions;
    private readonly MemoryPool<byte> _memoryPool;
    private readonly ILogger _logger;
    private readonly WinsockOutboundMeter _meter;
    private readonly Lock _routesLock = new();
    // IPv4 and IPv6: each made on its first connect, so a family never used costs no self-test.
    private readonly OutboundRoute?[] _routes = new OutboundRoute?[2];
    private volatile bool _disposed;
    private long _recycledOntoLastRemote;
    // The io_uring engine's ring, started with the first route where the options and the platform allow;
    // null on the sockets engine. Under _routesLock until decided.
    private IoUringConnector? _ring;
    private bool _engineDecided;
    private string _engine = "not decided: no connect yet";

    /// <summary>Makes a factory with <paramref name="options"/> (checked here: bad values throw, naming the option).</summary>
    /// <param name="options">The options; null for the defaults.</param>
    /// <param name="logger">Where the connections log (Debug and Trace only in normal operation); null for none.</param>
    /// <param name="memoryPool">The pipes' memory; null for <see cref="MemoryPool{T}.Shared"/>.</param>
    /// <param name="meterFactory">Where the <c>winsock.outbound.*</c> instruments' meter comes from; null for a meter of its own.</param>
    public WinsockOutboundConnectionFactory(WinsockOutboundOptions? options = null, ILogger? logger = null, MemoryPool<byte>? memoryPool = null, System.Diagnostics.Metrics.IMeterFactory? meterFactory = null)
    {
        _options = options ?? new WinsockOutboundOptions();
        var failures = _options.Validate();
        if (failures.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", failures), nameof(options));
        }

        if (_options.Engine == WinsockEngine.IoUring && IoUringUnavailable() is { } why)
        {
            throw new NotSupportedException($"{nameof(WinsockOutboundOptions)}.{nameof(WinsockOutboundOptions.Engine)} is IoUring, but io_uring cannot run here: {why}. Use Auto to fall back to the sockets engine.");
        }

        _logger = logger ?? NullLogger.Instance;
        _memoryPool = memoryPool ?? MemoryPool<byte>.Shared;
        Counters = new WinsockOutboundCounters(new WinsockTransportCounters(), ReuseStatus);
        _meter = new WinsockOutboundMeter(Counters, meterFactory);
        // The connection machinery's own options, from the outbound ones. An abort is always an RST
        // (Kestrel's FinOnError switch is the server's). Connection objects handed to callers are never
        // pooled: a caller may still hold one it disposed (Kestrel never does), so none is handed out twice.
        // Those under the ConnectCallback's streams are, as many as MaxPooledSockets: the stream is their
        // only holder, and once it lets its connection go it never touches it again.
        _connectionOptions = ConnectionOptions(_options, maxPooledConnections: 0);
        _streamConnectionOptions = ConnectionOptions(_options, _options.MaxPooledSockets);
    }

    private static WinsockTransportOptions ConnectionOptions(WinsockOutboundOptions options, int maxPooledConnections)
        => new()
        {
            MaxPooledSockets = maxPooledConnections,
            FinOnError = false,
            DrainTimeout = options.DrainTimeout,
            DeferFinTimeout = options.DeferFinTimeout,
            DisconnectTimeout = options.DisconnectTimeout,
            MaxPendingDisconnects = options.MaxPendingDisconnects,
            NoDelay = options.NoDelay,
            MaxReadBufferSize = options.MaxReadBufferSize,
            MaxWriteBufferSize = options.MaxWriteBufferSize,
            IOQueueCount = 0,
        };

    /// <summary>What this factory's connects and connections have done.</summary>
    public WinsockOutboundCounters Counters { get; }

    /// <summary>
    /// Connects to <paramref name="endpoint"/>, an <see cref="IPEndPoint"/> or a <see cref="DnsEndPoint"/>
    /// (every address the name resolves to is tried in turn, as SocketsHttpHandler does), and returns the
    /// connection. A refused, unreachable or timed-out connect throws the <see cref="SocketException"/> a
    /// socket's own connect gives (<see cref="SocketError.TimedOut"/> for <see cref="WinsockOutboundOptions.ConnectTimeout"/>);
    /// cancellation throws <see cref="OperationCanceledException"/>. Disposing the connection ends it
    /// gracefully (a FIN, deferred when the options say so); <see cref="ConnectionContext.Abort()"/> resets it.
    /// </summary>
    public async ValueTask<ConnectionContext> ConnectAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
        => await ConnectCoreAsync(endpoint, forStream: false, cancellationToken).ConfigureAwait(false);

    /// <summary>A connection for a <see cref="ConnectionStream"/>, its only holder: its object may be a pooled one.</summary>
    internal ValueTask<WinsockConnection> ConnectForStreamAsync(EndPoint endpoint, CancellationToken cancellationToken)
        => ConnectCoreAsync(endpoint, forStream: true, cancellationToken);

    private async ValueTask<WinsockConnection> ConnectCoreAsync(EndPoint endpoint, bool forStream, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (endpoint is not (IPEndPoint { AddressFamily: AddressFamily.InterNetwork or AddressFamily.InterNetworkV6 } or DnsEndPoint))
        {
            throw new NotSupportedException($"{nameof(WinsockOutboundConnectionFactory)} connects over TCP to an IPv4 or IPv6 IPEndPoint or a DnsEndPoint; {endpoint.GetType().Name} ({endpoint}) is not one.");
        }

        // One deadline for the whole connect: the name's resolution and every address and socket tried.
        using var timeout = _options.ConnectTimeout == Timeout.InfiniteTimeSpan ? null : CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout?.CancelAfter(_options.ConnectTimeout);
        var token = timeout?.Token ?? cancellationToken;
        try
        {
            if (endpoint is IPEndPoint ip)
            {
                return await ConnectToAsync(Unmapped(ip), forStream, token).ConfigureAwait(false);
            }

            // The name is resolved here, not by the socket, so each address is connected to from a socket of
            // its own family, and a recycled socket only ever connects again within its family. The
            // addresses are tried in the resolver's order, as Socket.ConnectAsync does for SocketsHttpHandler;
            // a literal address resolves without a lookup.
            var dns = (DnsEndPoint)endpoint;
            // WaitAsync: where a lookup under way cannot be canceled (getaddrinfo on Linux), the deadline still holds.
            var addresses = await Dns.GetHostAddressesAsync(dns.Host, dns.AddressFamily, token).WaitAsync(token).ConfigureAwait(false);
            Exception? last = null;
            foreach (var address in addresses)
            {
                if (address.AddressFamily == AddressFamily.InterNetwork || (address.AddressFamily == AddressFamily.InterNetworkV6 && Socket.OSSupportsIPv6))
                {
                    try
                    {
                        return await ConnectToAsync(Unmapped(new IPEndPoint(address, dns.Port)), forStream, token).ConfigureAwait(false);
                    }
                    catch (SocketException ex)
                    {
                        last = ex;
                    }
                }
            }

            throw last ?? new SocketException((int)SocketError.NoData, $"{dns.Host} resolved to no address this machine can connect to.");
        }
        catch (OperationCanceledException ex) when (cancellationToken.IsCancellationRequested && ex.CancellationToken != cancellationToken)
        {
            // The caller's own cancellation, seen through the linked token: SocketsHttpHandler only takes an
            // OperationCanceledException carrying its token for a cancellation.
            Counters.ConnectFailed();
            throw new OperationCanceledException(ex.Message, ex, cancellationToken);
        }
        catch (OperationCanceledException) when (timeout is not null && timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            Counters.ConnectFailed();
            throw new SocketException((int)SocketError.TimedOut, $"Connecting to {endpoint} took longer than {nameof(WinsockOutboundOptions)}.{nameof(WinsockOutboundOptions.ConnectTimeout)} ({_options.ConnectTimeout}).");
        }
        catch
        {
            Counters.ConnectFailed();
            throw;
        }
    }

    /// <summary>Connects to one address, on a recycled socket of its family when the pool has one.</summary>
    private async Task<WinsockConnection> ConnectToAsync(IPEndPoint endpoint, bool forStream, CancellationToken cancellationToken)
    {
        var route = endpoint.AddressFamily == AddressFamily.InterNetwork ? Route(0, IPv4) : Route(1, IPv6);
        if (route.Ring is { } ring && ring.TryEnterConnect())
        {
            return await ConnectOnRingAsync(route, ring, endpoint, forStream, cancellationToken).ConfigureAwait(false);
        }

        Socket socket;
        ReusableSocket? reusable;
        bool recycled;
        var recycledFailures = 0;
        var retryingOnNew = false;
        while (true)
        {
            // After a few recycled sockets that could not connect, a new one: a pool of bad sockets (reuse
            // forced on where it does not work) costs each address tried at most that many tries. After a
            // recycled socket's connect failed otherwise, a new one too.
            cancellationToken.ThrowIfCancellationRequested();
            socket = route.RentOrCreate(endpoint, allowRecycled: !retryingOnNew && recycledFailures < MaxRecycledTries, out reusable, out recycled);
            if (recycled && endpoint.Equals(reusable!.LastRemoteEndPoint))
            {
                Interlocked.Increment(ref _recycledOntoLastRemote);
            }

            try
            {
                if (recycled && RecycledConnectFaultForTests?.Invoke(socket) is { } fault)
                {
                    throw fault;
                }

                await socket.ConnectAsync(endpoint, cancellationToken).ConfigureAwait(false);
                break;
            }
            catch (Exception ex) when (recycled && IsNotRecycled(ex) && !cancellationToken.IsCancellationRequested)
            {
                // The recycled socket was not fit to connect again: only it is lost, and the connect goes
                // on with another socket; the failure counts toward the fallback.
                reusable!.Dispose();
                recycledFailures++;
                var failure = ex is SocketException se ? se.SocketErrorCode.ToString() : ex.Message;
                _logger.RecycledConnectFailed(failure);
                route.Recycler.OnRecycledAcceptFailed($"a connect on a recycled socket failed: {failure}");
            }
            catch (Exception ex) when (recycled && ex is not OperationCanceledException && !cancellationToken.IsCancellationRequested)
            {
                // Refused, timed out, unreachable: the server's answer, or so it looks, yet given to a recycled
                // socket, which a new one may not get (a recycled socket that kept its local port can meet
                // what the server still holds of that port's last connection). The caller would lose a
                // connect a new socket might make, so the socket is closed and the connect tried once more
                // on a new one, whose outcome is the caller's. Not counted toward the fallback: a server
                // that refuses everyone says nothing about recycling.
                reusable!.Dispose();
                retryingOnNew = true;
                Counters.RecycledConnectRetried();
                _logger.RecycledConnectRetried(ex is SocketException se ? se.SocketErrorCode.ToString() : ex.Message);
            }
            catch (Exception ex)
            {
                // A socket whose connect failed is never used again, recycled or not.
                if (reusable is null)
                {
                    socket.Dispose();
                }
                else
                {
                    reusable.Dispose();
                }

                if (ex is not OperationCanceledException)
                {
                    // A connect failing because its socket was closed by the cancellation is the cancellation.
                    cancellationToken.ThrowIfCancellationRequested();
                }

                throw;
            }
        }

        if (_disposed)
        {
            if (reusable is null)
            {
                socket.Dispose();
            }
            else
            {
                reusable.Dispose();
            }

            throw new ObjectDisposedException(GetType().FullName, "The factory was disposed while the connect was under way.");
        }

        Counters.Connected();
        if (recycled)
        {
            Counters.Connections.SocketReused();
            route.Recycler.OnRecycledAccept();
        }
        else
        {
            Counters.Connections.SocketCreated();
        }

        if (reusable is not null)
        {
            reusable.OnAccepted();
            reusable.LastRemoteEndPoint = endpoint;
        }

        var connection = (forStream ? route.StreamConnections : route.Connections).Rent();
        ((SocketConnectionIo)connection.Io).Attach(socket, reusable);
        connection.Attach();
        connection.Start();
        return connection;
    }

    /// <summary>
    /// A connect on the io_uring engine: a new descriptor connected on the ring, and the connection
    /// started there (its first receive submitted without a hop); the caller resumes on the thread pool,
    /// never on the ring thread.
    /// </summary>
    private async Task<WinsockConnection> ConnectOnRingAsync(OutboundRoute route, IoUringConnector ring, IPEndPoint endpoint, bool forStream, CancellationToken cancellationToken)
    {
        WinsockConnection connection;
        try
        {
            // Counted until the connection is attached (TryEnterConnect): the ring of a disposed factory
            // stops only once nothing is connecting or attached.
            try
            {
                var fd = await ring.ConnectAsync(endpoint, _options.NoDelay, cancellationToken).ConfigureAwait(false);
                // On the ring thread, where the connection is attached and started (as an accepted one).
                // Until its engine side holds the descriptor, a failure here closes it.
                try
                {
                    if (_disposed)
                    {
                        throw new ObjectDisposedException(GetType().FullName, "The factory was disposed while the connect was under way.");
                    }

                    connection = (forStream ? route.RingStreamConnections! : route.RingConnections!).Rent();
                }
                catch
                {
                    LinuxNative.Close(fd);
                    throw;
                }

                ((IoUringConnectionIo)connection.Io).Attach(fd, isFixed: false, AcceptOperation.LocalEndPoint(fd), new IPEndPoint(endpoint.Address, endpoint.Port));
                Counters.Connected();
                Counters.Connections.SocketCreated();
                connection.Attach();
                connection.Start();
            }
            finally
            {
                ring.ExitConnect();
            }
        }
        catch (Exception ex)
        {
            // A failure (refused, timed out, canceled, the factory disposed) reaches the caller off the ring
            // too: its handler, or the next address of a name, must not run there.
            if (EngineThread.IsCurrent)
            {
                await Task.Yield();
            }

            if (_disposed && ex is SocketException { SocketErrorCode: SocketError.OperationAborted })
            {
                // The ring stopped under the connect with the factory's dispose.
                throw new ObjectDisposedException(GetType().FullName, "The factory was disposed while the connect was under way.");
            }

            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(ex);
            throw;
        }

        // Off the ring: the caller's code (HttpClient's, and whatever reads the response) must never run on it.
        if (EngineThread.IsCurrent)
        {
            await Task.Yield();
        }

        return connection;
    }

    /// <summary>Why the io_uring engine cannot run in this process, or null when it can (its probe passed).</summary>
    private static string? IoUringUnavailable()
    {
        if (!OperatingSystem.IsLinux())
        {
            return "io_uring is Linux's";
        }

        var probe = IoUringProbe.Result;
        return probe.Passed ? null : $"the io_uring probe failed: {probe.Reason}";
    }

    /// <summary>Under _routesLock, once: the engine, and with io_uring its ring.</summary>
    private void DecideEngine()
    {
        if (_engineDecided)
        {
            return;
        }

        if (_options.Engine == WinsockEngine.Sockets)
        {
            _engine = "sockets: WinsockOutboundOptions.Engine is Sockets";
        }
        else if (_options.Engine == WinsockEngine.Auto && _options.ReuseSockets == true)
        {
            _engine = "sockets: WinsockOutboundOptions.ReuseSockets is true, and the sockets engine is the one that recycles sockets";
        }
        else if (IoUringUnavailable() is { } why)
        {
            _engine = $"sockets: {why}";
        }
        else
        {
            _ring = IoUringConnector.TryStart(_logger, out var reason);
            if (_ring is null && _options.Engine == WinsockEngine.IoUring)
            {
                // Not decided: every connect fails so, none goes silently to the sockets engine.
                throw new NotSupportedException($"{nameof(WinsockOutboundOptions)}.{nameof(WinsockOutboundOptions.Engine)} is IoUring, but {reason}. Use Auto to fall back to the sockets engine.");
            }

            _engine = _ring is null ? $"sockets: {reason}" : reason;
        }

        _engineDecided = true;
        _logger.OutboundEngineChosen(_ring is null ? "sockets" : "io_uring", _engine);
    }

    /// <summary>An IPv4 address written as IPv6 (::ffff:a.b.c.d) is connected to over IPv4, from an IPv4 socket.</summary>
    private static IPEndPoint Unmapped(IPEndPoint endpoint)
        => endpoint.Address.IsIPv4MappedToIPv6 ? new IPEndPoint(endpoint.Address.MapToIPv4(), endpoint.Port) : endpoint;

    /// <summary>
    /// A connect on a recycled socket that fails so says the socket, not the server, was at fault: not
    /// recycled properly (WSAEINVAL, WSAENOTSOCK, as for an accept into one), its kept local port still
    /// taken for this server (WSAEADDRINUSE), or .NET refusing a socket it sees as disconnected.
    /// </summary>
    private static bool IsNotRecycled(Exception ex) => ex switch
    {
        SocketException se => PostedAccepts.IsNotRecycled(se.SocketErrorCode) || se.SocketErrorCode == SocketError.AddressAlreadyInUse,
        InvalidOperationException => true,
        _ => false,
    };

    private OutboundRoute Route(int index, ReuseSelfTest.ListenerKind kind)
    {
        var route = Volatile.Read(ref _routes[index]);
        if (route is not null)
        {
            return route;
        }

        lock (_routesLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            DecideEngine();
            return _routes[index] ??= new OutboundRoute(kind, _options, _connectionOptions, _streamConnectionOptions, _memoryPool, Counters.Connections, _logger, _ring);
        }
    }

    /// <summary>
    /// For tests: connects that took a recycled socket whose last connection went to the same endpoint,
    /// so that (where the socket kept its local port) it went out on the 4-tuple the server held in TIME_WAIT.
    /// </summary>
    internal long RecycledOntoLastRemoteForTests => Interlocked.Read(ref _recycledOntoLastRemote);

    /// <summary>
    /// For tests: asked before each connect on a recycled socket; an exception it returns is that
    /// connect's failure, as the platform would report it (a refusal the server sends a recycled socket's
    /// SYN, say). Null in production.
    /// </summary>
    internal Func<Socket, Exception?>? RecycledConnectFaultForTests { get; set; }

    /// <summary>For tests: the io_uring ring the connections run on, once decided; null on the sockets engine.</summary>
    internal RingThread? RingForTests
    {
        get
        {
            lock (_routesLock)
            {
                return _ring?.Ring;
            }
        }
    }

    /// <summary>For tests: the pool of IPv4 sockets, where a fault only the platform could make is put.</summary>
    internal SocketPool IPv4PoolForTests => Route(0, IPv4).Pool;

    /// <summary>For /stats: whether the sockets of each address family used so far are recycled, and why.</summary>
    private string ReuseStatus()
    {
        var parts = new List<string>(2);
        for (var i = 0; i < _routes.Length; i++)
        {
            if (Volatile.Read(ref _routes[i]) is { } route)
            {
                parts.Add($"{route.Kind}: {route.Recycler.Status}");
            }
        }

        return parts.Count == 0 ? "no connect yet" : string.Join("; ", parts);
    }

    /// <summary>The engine the connections run on, and why (decided at the first connect).</summary>
    public string Engine
    {
        get
        {
            lock (_routesLock)
            {
                // A ring that ended on a fault (RingThreadFailed logged why) leaves the connects to the sockets engine.
                return _ring is { Ring: { IsStopping: true, Fault: { } fault } }
                    ? $"sockets: the outbound io_uring ring failed ({fault.Message}); connects go to .NET's sockets"
                    : _engine;
            }
        }
    }

    /// <summary>
    /// Stops new connects and closes every pooled socket and every socket still in a reuse disconnect.
    /// Connections still open keep running until they are disposed; their sockets are then closed, not pooled.
    /// </summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    /// <inheritdoc cref="Dispose"/>
    public ValueTask DisposeAsync()
    {
        OutboundRoute?[] routes;
        lock (_routesLock)
        {
            if (_disposed)
            {
                return ValueTask.CompletedTask;
            }

            _disposed = true;
            routes = [.. _routes];
        }

        foreach (var route in routes)
        {
            route?.Dispose();
        }

        _meter.Dispose();
        if (_ring is { } ring)
        {
            // Connections still open keep running, as on the sockets engine: the ring stops once none is left.
            _ = StopRingWhenIdleAsync(ring);
        }

        return ValueTask.CompletedTask;
    }

    private static async Task StopRingWhenIdleAsync(IoUringConnector ring)
    {
        while ((ring.Ring.Connections > 0 || ring.Connecting > 0) && !ring.Ring.IsStopping)
        {
            await Task.Delay(100).ConfigureAwait(false);
        }

        await ring.DisposeAsync().ConfigureAwait(false);
    }
}
