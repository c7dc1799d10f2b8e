using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Engines;
using Transport.Winsock.Engines.IoUring;
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
    private readonly AcceptedQueue _accepted;

    private readonly MemoryPool<byte> _memoryPool;
    private readonly ListenerEngine _engine;
    private readonly int _pendingAccepts;
    private readonly ILogger _logger;
    private readonly ReuseDecision _reuse;
    private readonly EngineChoice _engineChoice;
    private readonly WinsockTransportCounters _counters;
    private Task? _unbindTask;
    private int _disposed;

    public WinsockConnectionListener(
        Socket listenSocket,
        MemoryPool<byte> memoryPool,
        WinsockTransportOptions options,
        ReuseDecision reuse,
        EngineChoice engine,
        WinsockTransportCounters counters,
        ILogger logger)
    {
        EndPoint = listenSocket.LocalEndPoint!;
        _memoryPool = memoryPool;
        _logger = logger;
        _reuse = reuse;
        _engineChoice = engine;
        _counters = counters;
        _pendingAccepts = options.PendingAccepts;
        var onRings = engine.Engine == WinsockEngine.IoUring;
        // An accept on io_uring completes on a ring thread, where Kestrel's accept loop must not run (its
        // connection setup, logging, metrics and EventSource listeners), unless the application asked for
        // everything inline.
        // Bounded at twice the pending accepts: the slots stop accepting while that many wait for the server.
        _accepted = new AcceptedQueue(QueueBound(options), synchronousContinuations: !onRings || options.UnsafePreferInlineScheduling);
        var engineLogger = onRings ? new EngineThreadLogger(logger) : logger;
        var pause = new AcceptPause(EndPoint, counters, engineLogger, _accepted);
        Func<WinsockConnection, bool> offer = _accepted.TryOffer;
        _engine = onRings
            ? new IoUringListenerEngine(listenSocket, memoryPool, options, engine.Rings!, counters, engineLogger, pause, offer, _accepted.TryComplete)
            : new SocketsListenerEngine(listenSocket, memoryPool, options, reuse, counters, logger, pause, offer);
    }

    public EndPoint EndPoint { get; }

    /// <summary>How many accepted connections may wait for the server before the accept slots stop posting.</summary>
    internal static int QueueBound(WinsockTransportOptions options) => 2 * options.PendingAccepts;

    /// <summary>
    /// The queue between the posted accepts and the server's accept loop (internal for the benchmarks).
    /// With <paramref name="synchronousContinuations"/> (the sockets engine, whose accepts complete on
    /// thread pool threads) a waiting accept loop resumes on the posting slot's thread, not after another
    /// hop: it only takes the connection, dispatches it and waits again before the slot reposts. Without
    /// it (a ring thread posts), the accept loop resumes on the thread pool.
    /// </summary>
    internal static Channel<T> CreateAcceptQueue<T>(bool synchronousContinuations = true) => Channel.CreateUnbounded<T>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = false, AllowSynchronousContinuations = synchronousContinuations });

    public void Start()
    {
        if (_engine is SocketsListenerEngine sockets)
        {
            // The recycler holds the status from now on: a fallback or a retest changes it there.
            _counters.TrackReuse(sockets.Recycler);
        }
        else
        {
            _counters.SetReuse(_reuse.Active, _reuse.Reason);
        }
        if (_reuse.Emulated)
        {
            _logger.ReuseNotNative(EndPoint, _reuse.Reason);
        }
        else if (!_reuse.Active && _reuse.Automatic)
        {
            _logger.ReuseOff(EndPoint, _reuse.Reason);
        }

        _counters.SetEngine(_engineChoice.Engine, _engineChoice.Reason);
        _engine.Start();
        _logger.ListenerStarted(EndPoint, _pendingAccepts, _reuse.Reason);
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        while (await _accepted.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            if (_accepted.TryTake(out var connection))
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
        await _engine.StopAsync().ConfigureAwait(false);
        _accepted.TryComplete();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await UnbindAsync().ConfigureAwait(false);

        // Accepted but never taken by the server: nobody will serve these, so close them.
        while (_accepted.TryTake(out var connection))
        {
            connection.Abort(new ConnectionAbortedException("The listener was disposed before the connection was accepted by the server."));
            connection.Start();
            await connection.DisposeAsync().ConfigureAwait(false);
        }

        await _engine.DisposeAsync().ConfigureAwait(false);
        if (!ReferenceEquals(_memoryPool, MemoryPool<byte>.Shared))
        {
            _memoryPool.Dispose();
        }
    }
}
