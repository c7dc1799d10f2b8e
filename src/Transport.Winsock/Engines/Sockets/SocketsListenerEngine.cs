using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Listener;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Engines.Sockets;

/// <summary>
/// The Sockets engine's listener side: accepts posted with <see cref="SocketAsyncEventArgs"/> (AcceptEx on
/// Windows) into pooled sockets while they are recycled, the recycler, and the descriptor reserve.
/// </summary>
internal sealed class SocketsListenerEngine : ListenerEngine
{
    private readonly SocketPool _pool;
    private readonly SocketRecycler _recycler;
    private readonly WinsockConnectionFactory _connections;
    private readonly PostedAccepts _accepts;
    private readonly DescriptorReserve? _reserve;
    private readonly Func<WinsockConnection, bool> _offer;
    private readonly int _pendingAccepts;

    public SocketsListenerEngine(
        Socket listenSocket,
        MemoryPool<byte> memoryPool,
        WinsockTransportOptions options,
        ReuseDecision reuse,
        WinsockTransportCounters counters,
        ILogger logger,
        AcceptPause pause,
        Func<WinsockConnection, bool> offer)
    {
        var endPoint = listenSocket.LocalEndPoint!;
        _offer = offer;
        _pendingAccepts = options.PendingAccepts;
        _pool = new SocketPool(options.MaxPooledSockets, counters);
        // Automatic reuse that is off, or goes off, is tried again later with a fresh self-test.
        var kind = ReuseSelfTest.ListenerKind.Of(listenSocket);
        _recycler = new SocketRecycler(_pool, options, reuse, endPoint, counters, logger, reuse.Automatic ? () => ReuseDecision.RetestAsync(kind) : null);
        var inline = options.UnsafePreferInlineScheduling;
        _reserve = DescriptorReserve.Create(options.DescriptorReserve, options.PendingAccepts);
        try
        {
            _connections = new WinsockConnectionFactory(endPoint, memoryPool, options, () => new SocketConnectionIo(_recycler, inline), counters, logger, pause)
            {
                CountsDescriptors = _reserve is not null,
            };
            _accepts = new PostedAccepts(listenSocket, _pool, _recycler, OnAccepted, options.NoDelay, counters, logger, pause, _reserve);
        }
        catch
        {
            // Nobody will dispose an engine that was never made: its share of the reserve (and the
            // process's count timer, if it was the last) ends here.
            _reserve?.Dispose();
            _recycler.Dispose();
            _pool.Dispose();
            throw;
        }
    }

    /// <summary>The listener's recycler, where its reuse status lives.</summary>
    public SocketRecycler Recycler => _recycler;

    public override void Start() => _accepts.Start(_pendingAccepts);

    public override Task StopAsync() => _accepts.StopAsync();

    public override ValueTask DisposeAsync()
    {
        _recycler.Dispose();
        _pool.Dispose();
        _reserve?.Dispose();
        _connections.DisposeIdle();
        return ValueTask.CompletedTask;
    }

    private void OnAccepted(Socket socket, ReusableSocket? reusable)
    {
        var connection = _connections.Rent();
        ((SocketConnectionIo)connection.Io).Attach(socket, reusable);
        connection.Attach();
        if (!_offer(connection))
        {
            // Unbound meanwhile: nobody will take it.
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
}
