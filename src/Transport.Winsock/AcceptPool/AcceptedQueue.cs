using System.Threading.Channels;
using Transport.Winsock.Connections;

namespace Transport.Winsock.AcceptPool;

/// <summary>
/// The accepted connections the server has not taken yet, between the posted accepts and its accept
/// loop. Kestrel's Sockets transport accepts only when the server asks; posted accepts run ahead of it,
/// and an io_uring connection is started (its receive posted) before it is queued. So the queue is
/// bounded: once it holds <see cref="Bound"/> connections the slots post no more accepts until the server
/// takes one, and clients wait in the listen backlog, as they would with Kestrel's transport. Without it,
/// a server starved of thread pool threads would keep accepting and every queued connection could buffer
/// up to MaxReadBufferSize of what its client sends. The accepts already posted when it fills may still
/// complete, so at most <see cref="Bound"/> plus the accepts posted (PendingAccepts, at least one a ring) wait here.
/// </summary>
internal sealed class AcceptedQueue
{
    private readonly Channel<WinsockConnection> _channel;
    private readonly Lock _lock = new();
    private int _queued;
    // Non-null while a slot waits for room: completes (on the thread pool) when there is some, or at a stop.
    private TaskCompletionSource? _room;
    private bool _stopped;

    /// <param name="bound">How many may wait for the server before the slots stop accepting.</param>
    /// <param name="synchronousContinuations">Whether the server's accept loop may resume on the thread that queued a connection.</param>
    public AcceptedQueue(int bound, bool synchronousContinuations)
    {
        Bound = Math.Max(1, bound);
        _channel = Channel.CreateUnbounded<WinsockConnection>(
            new UnboundedChannelOptions { SingleReader = true, SingleWriter = false, AllowSynchronousContinuations = synchronousContinuations });
    }

    public int Bound { get; }

    /// <summary>Accepted connections not yet taken by the server.</summary>
    public int Count => Volatile.Read(ref _queued);

    public ChannelReader<WinsockConnection> Reader => _channel.Reader;

    /// <summary>Queues an accepted connection; false once the queue is completed (the listener unbound).</summary>
    public bool TryOffer(WinsockConnection connection)
    {
        Interlocked.Increment(ref _queued);
        if (_channel.Writer.TryWrite(connection))
        {
            return true;
        }

        OnTaken();
        return false;
    }

    public bool TryTake(out WinsockConnection connection)
    {
        if (_channel.Reader.TryRead(out connection!))
        {
            OnTaken();
            return true;
        }

        return false;
    }

    /// <summary>No more connections will be queued (the listener unbound, or its engine failed).</summary>
    public bool TryComplete(Exception? error = null) => _channel.Writer.TryComplete(error);

    /// <summary>Completes at once while there is room; otherwise when the server takes a connection, or at <see cref="Stop"/>.</summary>
    public ValueTask WaitForRoomAsync() => Volatile.Read(ref _queued) < Bound || _stopped ? default : WaitSlowAsync();

    /// <summary>The listener stops: no slot waits for room any more.</summary>
    public void Stop()
    {
        lock (_lock)
        {
            _stopped = true;
        }

        Release();
    }

    private async ValueTask WaitSlowAsync()
    {
        while (true)
        {
            Task room;
            lock (_lock)
            {
                if (_stopped)
                {
                    return;
                }

                _room ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                room = _room.Task;
            }

            // The waiter is published before the count is read again, and a take lowers the count before
            // it looks for a waiter: one of the two sees the other, so no take goes unnoticed.
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _queued) < Bound)
            {
                Release();
                return;
            }

            await room.ConfigureAwait(false);
        }
    }

    private void OnTaken()
    {
        if (Interlocked.Decrement(ref _queued) < Bound && Volatile.Read(ref _room) is not null)
        {
            Release();
        }
    }

    private void Release()
    {
        TaskCompletionSource? room;
        lock (_lock)
        {
            room = _room;
            _room = null;
        }

        room?.TrySetResult();
    }
}
