using System.Buffers;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Connections;

/// <summary>What every connection of one listener shares: memory pool, pipe settings, teardown and diagnostics.</summary>
internal sealed class WinsockConnectionFactory
{
    public WinsockConnectionFactory(
        MemoryPool<byte> memoryPool,
        WinsockTransportOptions options,
        SocketRecycler recycler,
        WinsockTransportCounters counters,
        ILogger logger)
    {
        MemoryPool = memoryPool;
        Recycler = recycler;
        Counters = counters;
        Logger = logger;
        DrainTimeout = options.DrainTimeout;
        HalfCloseTimeout = options.AllowHalfClose ? options.HalfCloseTimeout : null;
        DeferFinTimeout = options.DeferFinTimeout > TimeSpan.Zero ? options.DeferFinTimeout : null;

        // Kestrel's pipe shape: the transport's pipe ends run their continuations on the thread pool,
        // writers pause at the buffer limit and resume at half of it.
        var minimumSegmentSize = Math.Min(memoryPool.MaxBufferSize, 4096);
        var maxRead = options.MaxReadBufferSize ?? 0;
        var maxWrite = options.MaxWriteBufferSize ?? 0;
        InputOptions = new PipeOptions(memoryPool, PipeScheduler.ThreadPool, PipeScheduler.ThreadPool, maxRead, maxRead / 2, minimumSegmentSize, useSynchronizationContext: false);
        OutputOptions = new PipeOptions(memoryPool, PipeScheduler.ThreadPool, PipeScheduler.ThreadPool, maxWrite, maxWrite / 2, minimumSegmentSize, useSynchronizationContext: false);
        MinReceiveSize = Math.Max(minimumSegmentSize / 2, 1);
    }

    public MemoryPool<byte> MemoryPool { get; }

    public PipeOptions InputOptions { get; }

    public PipeOptions OutputOptions { get; }

    public int MinReceiveSize { get; }

    public TimeSpan DrainTimeout { get; }

    /// <summary>Set when a client's FIN is a half-close: how long sending may go on after it.</summary>
    public TimeSpan? HalfCloseTimeout { get; }

    /// <summary>Set when the FIN waits for the peer to close first: for how long at most.</summary>
    public TimeSpan? DeferFinTimeout { get; }

    public SocketRecycler Recycler { get; }

    public WinsockTransportCounters Counters { get; }

    public ILogger Logger { get; }

    public WinsockConnection Create(ReusableSocket socket)
        => new(socket, this);
}
