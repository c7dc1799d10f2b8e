using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Engines.Sockets;
using Transport.Winsock.Teardown;

namespace Transport.Winsock;

/// <summary>
/// An <see cref="IConnectionFactory"/> whose connections run on the transport's own pipes and teardown:
/// the connection object, its two loops and its state machine (FIN, drain, deferred FIN, abort) are the
/// ones an accepted connection has, so a client ends its connections the way the listener does, and with
/// the client-side deferred FIN (<see cref="WinsockOutboundOptions.DeferFinTimeout"/>) lets the server close
/// first, which keeps TIME_WAIT, and the ephemeral port it holds, off the client. Sockets are .NET's
/// (the sockets engine: ConnectEx on Windows, epoll elsewhere). Thread-safe; dispose it once its
/// connections are done.
/// </summary>
public sealed class WinsockOutboundConnectionFactory : IConnectionFactory, IAsyncDisposable, IDisposable
{
    private static readonly EndPoint AnyEndPoint = new IPEndPoint(IPAddress.IPv6Any, 0);

    private readonly WinsockOutboundOptions _options;
    private readonly WinsockConnectionFactory _connections;
    private readonly SocketPool _pool;
    private readonly SocketRecycler _recycler;
    private readonly Outbound.WinsockOutboundMeter _meter;
    private volatile bool _disposed;

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

        logger ??= NullLogger.Instance;
        Counters = new WinsockOutboundCounters(new WinsockTransportCounters());
        _meter = new Outbound.WinsockOutboundMeter(Counters, meterFactory);
        // The connection machinery's own options, from the outbound ones. No socket is recycled yet: the
        // pool stays empty, and every connection's socket is closed at its end. Nor is a connection object:
        // a caller may still hold one it disposed (Kestrel never does), so none is handed out twice. An
        // abort is always an RST (Kestrel's FinOnError switch is the server's).
        var connectionOptions = new WinsockTransportOptions
        {
            MaxPooledSockets = 0,
            FinOnError = false,
            ReuseSockets = false,
            DrainTimeout = _options.DrainTimeout,
            DeferFinTimeout = _options.DeferFinTimeout,
            NoDelay = _options.NoDelay,
            MaxReadBufferSize = _options.MaxReadBufferSize,
            MaxWriteBufferSize = _options.MaxWriteBufferSize,
            IOQueueCount = 0,
        };
        _pool = new SocketPool(0, Counters.Connections);
        _recycler = new SocketRecycler(_pool, connectionOptions, new ReuseDecision(false, false, "off: outbound sockets are not recycled yet"), AnyEndPoint, Counters.Connections, logger);
        _connections = new WinsockConnectionFactory(AnyEndPoint, memoryPool ?? MemoryPool<byte>.Shared, connectionOptions, () => new SocketConnectionIo(_recycler, inlineContinuations: false), Counters.Connections, logger)
        {
            // No server's timeouts abort a client's connection: a disposed one whose output a stalled server
            // never reads is aborted after the drain's time.
            EndTimeout = _options.DrainTimeout,
        };
    }

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
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (endpoint is not (IPEndPoint or DnsEndPoint))
        {
            throw new NotSupportedException($"{nameof(WinsockOutboundConnectionFactory)} connects over TCP to an IPEndPoint or a DnsEndPoint; {endpoint.GetType().Name} ({endpoint}) is not one.");
        }

        // A DnsEndPoint's addresses may be of either family: a dual-mode socket takes both, as in SocketsHttpHandler.
        var socket = endpoint is IPEndPoint ip
            ? new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
            : new Socket(SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.NoDelay = _options.NoDelay;
            using var timeout = _options.ConnectTimeout == Timeout.InfiniteTimeSpan ? null : CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout?.CancelAfter(_options.ConnectTimeout);
            try
            {
                await socket.ConnectAsync(endpoint, timeout?.Token ?? cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (timeout is not null && !cancellationToken.IsCancellationRequested)
            {
                throw new SocketException((int)SocketError.TimedOut, $"Connecting to {endpoint} took longer than {nameof(WinsockOutboundOptions)}.{nameof(WinsockOutboundOptions.ConnectTimeout)} ({_options.ConnectTimeout}).");
            }
        }
        catch
        {
            socket.Dispose();
            Counters.ConnectFailed();
            throw;
        }

        if (_disposed)
        {
            socket.Dispose();
            Counters.ConnectFailed();
            throw new ObjectDisposedException(GetType().FullName, "The factory was disposed while the connect was under way.");
        }

        Counters.Connected();
        Counters.Connections.SocketCreated();
        var connection = _connections.Rent();
        ((SocketConnectionIo)connection.Io).Attach(socket, reusable: null);
        connection.Attach();
        connection.Start();
        return connection;
    }

    /// <summary>
    /// Stops new connects. Connections still open keep running until they are disposed; every socket is
    /// closed at its connection's end (none is pooled).
    /// </summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    /// <inheritdoc cref="Dispose"/>
    public ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return ValueTask.CompletedTask;
        }

        _disposed = true;
        _recycler.Dispose();
        _pool.Dispose();
        _connections.DisposeIdle();
        _meter.Dispose();
        return ValueTask.CompletedTask;
    }
}
