using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Engines.Sockets;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Listener;

/// <summary>
/// A bound endpoint: posted accepts feed a queue that Kestrel's accept loop reads, so accepting never
/// waits on Kestrel. Unbind stops accepting (what is already accepted is still handed out); dispose
/// also closes every socket the listener still owns.
/// </summary>
internal sealed class WinsockConnectionListener : IConnectionListener
{
    private readonly Channel<WinsockConnection> _accepted = CreateAcceptQueue<WinsockConnection>();

    private readonly MemoryPool<byte> _memoryPool;
    private readonly SocketPool _pool;
    private readonly SocketRecycler _recycler;
    private readonly WinsockConnectionFactory _connections;
    private readonly PostedAccepts _accepts;
    private readonly DescriptorReserve? _reserve;
    private readonly int _pendingAccepts;
    private readonly ILogger _logger;
    private readonly ReuseDecision _reuse;
    private readonly WinsockTransportCounters _counters;
    private Task? _unbindTask;
    private int _disposed;

    public WinsockConnectionListener(
        Socket listenSocket,
        MemoryPool<byte> memoryPool,
        WinsockTransportOptions options,
        ReuseDecision reuse,
        WinsockTransportCounters counters,
        ILogger logger)
    {
        EndPoint = listenSocket.LocalEndPoint!;
        _memoryPool = memoryPool;
        _logger = logger;
        _reuse = reuse;
        _counters = counters;
        _pendingAccepts = options.PendingAccepts;
        _pool = new SocketPool(options.MaxPooledSockets, counters);
        _recycler = new SocketRecycler(_pool, options, reuse, EndPoint, counters, logger);
        var pause = new AcceptPause(EndPoint, counters, logger);
        var inline = options.UnsafePreferInlineScheduling;
        _connections = new WinsockConnectionFactory(EndPoint, memoryPool, options, () => new SocketConnectionIo(_recycler, inline), counters, logger, pause);
        _reserve = DescriptorReserve.Create(options.DescriptorReserve, options.PendingAccepts);
        _accepts = new PostedAccepts(listenSocket, _pool, _recycler, OnAccepted, options.NoDelay, counters, logger, pause, _reserve);
    }

    public EndPoint EndPoint { get; }

    /// <summary>
    /// The queue between the posted accepts and the server's accept loop (internal for the benchmarks). A
    /// waiting accept loop resumes on the posting slot's thread pool thread, not after another hop: it
    /// only takes the connection, dispatches it and waits again before the slot reposts.
    /// </summary>
    internal static Channel<T> CreateAcceptQueue<T>() => Channel.CreateUnbounded<T>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = false, AllowSynchronousContinuations = true });

    public void Start()
    {
        _counters.SetReuse(_reuse.Active, _reuse.Reason);
        if (_reuse.Emulated)
        {
            _logger.ReuseNotNative(EndPoint, _reuse.Reason);
        }
        else if (!_reuse.Active && _reuse.Automatic)
        {
            _logger.ReuseOff(EndPoint, _reuse.Reason);
        }

        _accepts.Start(_pendingAccepts);
        _logger.ListenerStarted(EndPoint, _pendingAccepts, _reuse.Reason);
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        while (await _accepted.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            if (_accepted.Reader.TryRead(out var connection))
            {
                connection.Start();
                return connection;
            }
        }

        // Unbound and every accepted connection handed out.
        return null;
    }

    public ValueTask UnbindAsync(CancellationToken cancellationToken = default)
    {
        lock (_accepted)
        {
            _unbindTask ??= UnbindCoreAsync();
        }

        // Completes whatever the token says, as Kestrel's Sockets transport does: Kestrel disposes the
        // listeners of a failed bind, and a host disposed without a stop, with a token already canceled,
        // and an exception here would replace the real error. Unbinding only closes the listening socket
        // and waits for the posted accepts to end, which they do at once.
        return new ValueTask(_unbindTask);
    }

    private async Task UnbindCoreAsync()
    {
        await _accepts.StopAsync().ConfigureAwait(false);
        _accepted.Writer.TryComplete();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await UnbindAsync().ConfigureAwait(false);

        // Accepted but never taken by the server: nobody will serve these, so close them.
        while (_accepted.Reader.TryRead(out var connection))
        {
            connection.Abort(new ConnectionAbortedException("The listener was disposed before the connection was accepted by the server."));
            connection.Start();
            await connection.DisposeAsync().ConfigureAwait(false);
        }

        _recycler.Dispose();
        _pool.Dispose();
        _reserve?.Dispose();
        if (!ReferenceEquals(_memoryPool, MemoryPool<byte>.Shared))
        {
            _memoryPool.Dispose();
        }
    }

    private void OnAccepted(Socket socket, ReusableSocket? reusable)
    {
        // Every accepted connection goes to the server, even one the peer has reset already (Kestrel's
        // Sockets transport drops one whose socket it can no longer set up).
        var connection = _connections.Rent();
        ((SocketConnectionIo)connection.Io).Attach(socket, reusable);
        connection.Attach();
        if (!_accepted.Writer.TryWrite(connection))
        {
            // Unbound meanwhile: nobody will take it.
            Close(socket, reusable);
        }
    }

    private static void Close(Socket socket, ReusableSocket? reusable)
    {
        if (reusable is null)
        {
            socket.Dispose();
        }
        else
        {
            reusable.Dispose();
        }
    }
}
