using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;

namespace Transport.Winsock.Connections;

/// <summary>
/// What every connection of one listener shares: memory pool, pipe settings, teardown and diagnostics;
/// and the listener's idle connection objects, reused for new sockets (at most as many as
/// <see cref="WinsockTransportOptions.MaxPooledSockets"/>). Each object is made with its engine's side
/// (<see cref="ConnectionIo"/>), which stays with it for every connection it carries.
/// </summary>
internal sealed class WinsockConnectionFactory
{
    private readonly Stack<WinsockConnection> _idle = new();
    private readonly Lock _idleLock = new();
    private readonly int _maxIdle;
    private readonly PipeOptions[] _inputOptions;
    private readonly PipeOptions[] _outputOptions;
    private readonly AcceptPause? _pause;
    private readonly Func<ConnectionIo> _newIo;
    private bool _disposed;
    private int _nextScheduler;

    public WinsockConnectionFactory(
        EndPoint listenEndPoint,
        MemoryPool<byte> memoryPool,
        WinsockTransportOptions options,
        Func<ConnectionIo> newIo,
        WinsockTransportCounters counters,
        ILogger logger,
        AcceptPause? pause = null,
        PipeScheduler? transportScheduler = null)
    {
        _pause = pause;
        MemoryPool = memoryPool;
        _maxIdle = options.MaxPooledSockets;

        // Bound to one address, every accepted socket has the listener's own local endpoint: share it
        // rather than ask each socket. Bound to a wildcard, each socket is asked.
        if (listenEndPoint is IPEndPoint ip && !ip.Address.Equals(IPAddress.Any) && !ip.Address.Equals(IPAddress.IPv6Any))
        {
            LocalEndPoint = ip;
        }

        _newIo = newIo;
        Counters = counters;
        Logger = logger;
        DrainTimeout = options.DrainTimeout;
        HalfCloseTimeout = options.AllowHalfClose ? options.HalfCloseTimeout : null;
        DeferFinTimeout = options.DeferFinTimeout > TimeSpan.Zero ? options.DeferFinTimeout : null;
        FinOnError = options.FinOnError;

        // Kestrel's pipe shape: writers pause at the buffer limit and resume at half of it; the
        // application's continuations run on the thread pool, the transport's own (the send loop woken
        // by a flush, the receive loop released from backpressure) on IOQueueCount batching schedulers,
        // Kestrel's I/O queues (0: the thread pool); with UnsafePreferInlineScheduling, all inline.
        var minimumSegmentSize = Math.Min(memoryPool.MaxBufferSize, 4096);
        var maxRead = options.MaxReadBufferSize ?? 0;
        var maxWrite = options.MaxWriteBufferSize ?? 0;
        var inline = options.UnsafePreferInlineScheduling;
        var applicationScheduler = inline ? PipeScheduler.Inline : PipeScheduler.ThreadPool;
        var queues = Math.Max(options.IOQueueCount, 1);
        _inputOptions = new PipeOptions[queues];
        _outputOptions = new PipeOptions[queues];
        for (var i = 0; i < queues; i++)
        {
            // An engine with threads of its own (io_uring) runs the transport's side there.
            var scheduler = inline ? PipeScheduler.Inline
                : transportScheduler ?? (options.IOQueueCount == 0 ? PipeScheduler.ThreadPool : new BatchingScheduler());
            _inputOptions[i] = new PipeOptions(memoryPool, applicationScheduler, scheduler, maxRead, maxRead / 2, minimumSegmentSize, useSynchronizationContext: false);
            _outputOptions[i] = new PipeOptions(memoryPool, scheduler, applicationScheduler, maxWrite, maxWrite / 2, minimumSegmentSize, useSynchronizationContext: false);
        }

        WaitForData = options.WaitForDataBeforeAllocatingBuffer;
        InlineScheduling = inline;

        MinReceiveSize = Math.Max(minimumSegmentSize / 2, 1);
    }

    public MemoryPool<byte> MemoryPool { get; }

    /// <summary>The local endpoint every connection shares, or null when the listener is bound to a wildcard address.</summary>
    public EndPoint? LocalEndPoint { get; }

    /// <summary>Pipe options for a new connection object: its input and output pipes share one of the batching schedulers, taken in turn.</summary>
    public (PipeOptions Input, PipeOptions Output) NextPipeOptions()
    {
        var i = (int)((uint)Interlocked.Increment(ref _nextScheduler) % (uint)_inputOptions.Length);
        return (_inputOptions[i], _outputOptions[i]);
    }

    public int MinReceiveSize { get; }

    public TimeSpan DrainTimeout { get; }

    /// <summary>Set when a client's FIN is a half-close: how long sending may go on after it.</summary>
    public TimeSpan? HalfCloseTimeout { get; }

    /// <summary>Set when the FIN waits for the peer to close first: for how long at most.</summary>
    public TimeSpan? DeferFinTimeout { get; }

    /// <summary>UnsafePreferInlineScheduling: the application runs wherever the transport's continuations do, engine threads included.</summary>
    public bool InlineScheduling { get; }

    /// <summary>Whether a receive waits for data before it takes a buffer (WaitForDataBeforeAllocatingBuffer).</summary>
    public bool WaitForData { get; }

    /// <summary>
    /// Set for connections no server times out (the outbound side's): how long a connection may take, from
    /// its dispose, to get its output sent and its FIN (or deferred FIN) under way; past it, it is aborted.
    /// Without it, a peer that stops reading would hold a disposed connection's send, and its socket, forever.
    /// </summary>
    public TimeSpan? EndTimeout { get; init; }

    /// <summary>Kestrel's FinOnError switch: an abort ends with a FIN, not an RST.</summary>
    public bool FinOnError { get; }

    public WinsockTransportCounters Counters { get; }

    public ILogger Logger { get; }

    /// <summary>
    /// Set for a listener that keeps a <see cref="DescriptorReserve"/>: a connection that closes its
    /// descriptor is taken off the reserve's estimate (as each accept is added to it).
    /// </summary>
    public bool CountsDescriptors { get; init; }

    /// <summary>
    /// A connection's socket is closed (<paramref name="closed"/>) or recycled: a paused listener may
    /// accept again.
    /// </summary>
    public void OnConnectionEnded(bool closed)
    {
        if (closed && CountsDescriptors)
        {
            DescriptorReserve.OnClosed();
        }

        _pause?.Wake();
    }

    /// <summary>
    /// A connection object for a newly accepted socket: an idle one when there is one, else a new one. The
    /// engine gives its <see cref="WinsockConnection.Io"/> the socket, then calls <see cref="WinsockConnection.Attach"/>.
    /// </summary>
    public WinsockConnection Rent()
    {
        WinsockConnection? connection;
        lock (_idleLock)
        {
            _idle.TryPop(out connection);
        }

        return connection ?? new WinsockConnection(this, _newIo());
    }

    /// <summary>The listener is gone: retires every idle connection object (its engine's state goes with it).</summary>
    public void DisposeIdle()
    {
        lock (_idleLock)
        {
            _disposed = true;
            while (_idle.TryPop(out var connection))
            {
                connection.Retire();
            }
        }
    }

    /// <summary>Takes back a connection the server has disposed; retired when enough are idle already.</summary>
    public void Return(WinsockConnection connection)
    {
        lock (_idleLock)
        {
            // After the listener's dispose, a connection Kestrel was still ending retires on its return.
            if (!_disposed && _idle.Count < _maxIdle)
            {
                _idle.Push(connection);
                return;
            }
        }

        connection.Retire();
    }
}
