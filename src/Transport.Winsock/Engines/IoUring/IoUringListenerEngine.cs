using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Listener;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// The io_uring engine's listener side: <see cref="WinsockTransportOptions.PendingAccepts"/> accepts kept
/// posted on the listening descriptor, spread over the listener's ring threads; each accepted descriptor
/// becomes a connection on the ring that accepted it, whose pipes use that ring as their transport
/// scheduler. Out of descriptors, the listener pauses as the sockets engine's does (<see cref="AcceptPause"/>),
/// and so it does when a ring has as many connections as its completion queue can take
/// (<see cref="RingCapacity"/>). A slot whose accept was retired (a lost completion) goes on with a new one.
/// </summary>
internal sealed class IoUringListenerEngine : ListenerEngine
{
    private static readonly TimeSpan FaultBackoff = TimeSpan.FromMilliseconds(50);

    private readonly Socket _listenSocket;
    private readonly int _listenFd;
    private readonly EndPoint _endPoint;
    private readonly RingThread[] _rings;
    private readonly WinsockConnectionFactory[] _factories;
    private readonly AcceptOperation[] _accepts;
    private readonly AcceptPause _pause;
    private readonly DescriptorReserve? _reserve;
    private readonly WinsockTransportCounters _counters;
    private readonly ILogger _logger;
    private readonly Func<WinsockConnection, bool> _offer;
    private readonly Func<Exception, bool> _fail;
    private readonly IPEndPoint? _sharedLocal;
    private readonly int _acceptsPerRing;
    private Task[] _slots = [];
    private volatile bool _stopping;

    public IoUringListenerEngine(
        Socket listenSocket,
        MemoryPool<byte> memoryPool,
        WinsockTransportOptions options,
        RingThread[] rings,
        WinsockTransportCounters counters,
        ILogger logger,
        AcceptPause pause,
        Func<WinsockConnection, bool> offer,
        Func<Exception, bool> fail)
    {
        _fail = fail;
        _listenSocket = listenSocket;
        _listenFd = (int)listenSocket.Handle;
        _endPoint = listenSocket.LocalEndPoint!;
        _rings = rings;
        _pause = pause;
        _counters = counters;
        _logger = logger;
        _offer = offer;
        var acceptCount = AcceptSlots(options, rings.Length);
        _reserve = DescriptorReserve.Create(options.DescriptorReserve, acceptCount);
        try
        {
            _factories = new WinsockConnectionFactory[rings.Length];
            for (var i = 0; i < rings.Length; i++)
            {
                var ring = rings[i];
                _factories[i] = new WinsockConnectionFactory(_endPoint, memoryPool, options, () => new IoUringConnectionIo(ring), counters, logger, pause, transportScheduler: ring)
                {
                    CountsDescriptors = _reserve is not null,
                };
            }

            _sharedLocal = _factories[0].LocalEndPoint as IPEndPoint;
            _accepts = new AcceptOperation[acceptCount];
            _acceptsPerRing = (_accepts.Length + rings.Length - 1) / rings.Length;
            for (var i = 0; i < _accepts.Length; i++)
            {
                _accepts[i] = new AcceptOperation(rings[i % rings.Length], _listenFd, this);
            }
        }
        catch
        {
            // Nobody will dispose an engine that was never made: its share of the reserve (and the
            // process's count timer, if it was the last) ends here.
            _reserve?.Dispose();
            throw;
        }
    }

    /// <summary>The accepts a listener keeps posted: PendingAccepts, and at least one a ring.</summary>
    public static int AcceptSlots(WinsockTransportOptions options, int rings) => Math.Max(options.PendingAccepts, rings);

    /// <summary>Set when the listener stops (or its ring failed): no accept may be posted any more.</summary>
    public bool IsStopping => _stopping;

    public override void Start()
    {
        _slots = new Task[_accepts.Length];
        for (var i = 0; i < _accepts.Length; i++)
        {
            _slots[i] = RunSlotAsync(i, _factories[i % _rings.Length]);
        }
    }

    private Task RunSlotAsync(int slot, WinsockConnectionFactory factory)
        => _pause.RunSlotAsync(static state => state.Engine.AcceptOnceAsync(state.Slot, state.Factory), (Engine: this, Slot: slot, Factory: factory), () => _stopping);

    /// <summary>One accept and its outcome; continues on the ring thread that completed it.</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask AcceptOnceAsync(int slot, WinsockConnectionFactory factory)
    {
        var accept = _accepts[slot];
        if (accept.Retired)
        {
            // Its completion was lost: the slot goes on with a new operation (the old one is never freed).
            accept = _accepts[slot] = new AcceptOperation(accept.Thread, _listenFd, this);
        }

        var ring = accept.Thread;
        if (!ring.HasRoomForConnection(_acceptsPerRing))
        {
            // Its completion queue could overflow with one more (RingCapacity): the listener waits, as when
            // out of descriptors, until a connection ends. Only where the descriptor limit exceeds what the
            // largest queue covers.
            _pause.OnFault($"its io_uring ring \"{ring.Name}\" serves {ring.Connections} connections, as many as its completion queue of {ring.CqEntries} entries can take", reserve: false);
            return;
        }

        if (_reserve is { } reserve)
        {
            if (reserve.IsReached(_pause.IsPaused))
            {
                _pause.OnFault($"the process has {reserve.Reserve} or fewer of its {reserve.Limit} descriptors left (DescriptorReserve)", reserve: true);
                return;
            }

            _pause.OnReserveHasRoom();
        }

        int fd;
        try
        {
            // Into a slot of the ring's file table where it has one (a variant), but only for a listener on
            // one address: a direct descriptor has no getsockname, so a wildcard's local endpoint needs a plain one.
            fd = await accept.AcceptAsync(direct: _sharedLocal is not null && accept.Thread.HasFileTable);
        }
        catch (SocketException ex)
        {
            if (_stopping)
            {
                return;
            }

            if (accept.Thread.IsStopping)
            {
                // The ring thread is gone (it failed, and logged why): this listener cannot accept any more,
                // on any of its rings.
                _stopping = true;
                CancelAccepts();
                // Clients are refused from now on, rather than left waiting in a backlog nobody accepts from.
                // shutdown(2), not a close: other rings may still hold entries for the descriptor's number,
                // which must not meet another socket; StopAsync closes it once every slot has ended.
                LinuxNative.Shutdown(_listenFd, 2);
                _fail(new IOException($"The io_uring thread of the listener on {_endPoint} failed, so it stopped accepting.", accept.Thread.Fault));
                return;
            }

            var error = ex.SocketErrorCode;
            if (PostedAccepts.IsOutOfResources(error))
            {
                _pause.OnFault($"accepts fail with {error}", reserve: false);
                return;
            }

            _logger.AcceptFault(_endPoint, error);
            if (error is not (SocketError.ConnectionAborted or SocketError.ConnectionReset or SocketError.Interrupted or SocketError.WouldBlock))
            {
                await Task.Delay(FaultBackoff);
            }

            return;
        }

        if (_stopping)
        {
            // Accepted as the listener stopped: nobody will serve it. Nothing on the ring refers to it yet.
            if (accept.Direct)
            {
                accept.Thread.OnSlotAccepted();
                accept.Thread.CloseSlot(fd);
            }
            else
            {
                LinuxNative.Close(fd);
            }

            return;
        }

        if (accept.Direct)
        {
            accept.Thread.OnSlotAccepted();
        }

        _pause.OnAccepted();
        if (_reserve is not null)
        {
            DescriptorReserve.OnAccepted();
        }

        _counters.SocketCreated();
        _counters.ConnectionAccepted();
        var connection = factory.Rent();
        var io = (IoUringConnectionIo)connection.Io;
        io.Attach(fd, accept.Direct, _sharedLocal ?? AcceptOperation.LocalEndPoint(fd), accept.RemoteEndPoint());
        connection.Attach();
        // Started here, on the ring: its first receive is submitted without a hop, and what arrives waits in
        // its input pipe until the server reads it, as it would once the server had started it.
        connection.Start();
        if (!_offer(connection))
        {
            // Unbound meanwhile: nobody will take it. It ends with an RST, and the object goes back to its pool.
            connection.Abort(new Microsoft.AspNetCore.Connections.ConnectionAbortedException("The listener was unbound before the connection was accepted by the server."));
            await connection.DisposeAsync();
        }
    }

    public override async Task StopAsync()
    {
        _stopping = true;
        _pause.Stop();
        CancelAccepts();
        await Task.WhenAll(_slots).ConfigureAwait(false);
        _listenSocket.Dispose();
    }

    /// <summary>Closing the listening descriptor does not end accepts a ring holds: cancels each on its ring.</summary>
    private void CancelAccepts()
    {
        foreach (var ring in _rings)
        {
            ring.Post(static state =>
            {
                var (engine, target) = ((IoUringListenerEngine, RingThread))state!;
                foreach (var accept in engine._accepts)
                {
                    if (accept.Thread == target && accept.InFlight)
                    {
                        target.Cancel(accept.CurrentUserData);
                    }
                }
            }, (this, ring));
        }
    }

    public override async ValueTask DisposeAsync()
    {
        // Every ring at once: each gives what it still has in flight a bounded grace.
        await Task.WhenAll(_rings.Select(ring => ring.StopAsync())).ConfigureAwait(false);
        foreach (var factory in _factories)
        {
            factory.DisposeIdle();
        }

        foreach (var accept in _accepts)
        {
            accept.Dispose();
        }

        _reserve?.Dispose();
    }
}
